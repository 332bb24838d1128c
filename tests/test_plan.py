"""The main job's time plan: sizes shrink in the stated order, training last."""

from __future__ import annotations

from metaskill.pipeline.plan import (
    FILL,
    Sizes,
    Speeds,
    TaskCost,
    _shrink,
    estimate,
    size_job,
)

TASKS = [TaskCost(name="trec", prompt_tokens=85, answer_tokens=4, chains=2, trains=False),
         TaskCost(name="word_reversal", prompt_tokens=110, answer_tokens=14, chains=0,
                  trains=True)]
ASKED = Sizes(n_dev=40, n_test=100, chains=2, train_steps=60, train_eval_every=20,
              train_curve_n=20)


def speeds(factor: float) -> Speeds:
    """This machine (factor 1) or one ``factor`` times slower."""
    return Speeds(prompt_tps=285 / factor, gen_tps=84 / factor, lora_step_s=3.2 * factor)


def test_a_budget_that_fits_changes_nothing() -> None:
    sizes, changes = _shrink(ASKED, TASKS, speeds(1.0), budget_s=3600)
    assert sizes.model_dump(exclude={"reserve_after_train_s"}) == ASKED.model_dump(
        exclude={"reserve_after_train_s"}) and changes == []


def test_a_slower_machine_gives_up_evaluation_before_training() -> None:
    fast = size_job(ASKED, TASKS, speeds(1.0), 1200)
    slow = size_job(ASKED, TASKS, speeds(2.0), 1200)
    assert fast.train_steps == slow.train_steps == 60  # training keeps its share
    assert (slow.n_test, slow.n_dev) <= (fast.n_test, fast.n_dev)
    assert slow.n_test >= 40 and slow.n_dev >= 24
    assert sum(estimate(slow, TASKS, speeds(2.0)).values()) <= FILL * 1200


def test_training_steps_are_never_cut_by_the_plan() -> None:
    sizes, changes = _shrink(ASKED, TASKS, speeds(6.0), budget_s=600)
    assert sizes.chains == 1 and sizes.n_test == 40 and sizes.n_dev == 24
    assert sizes.train_steps == 60  # the deadline stops training, not the plan
    assert changes[-1].startswith("the estimate still exceeds the budget")
    assert [c.split()[0] for c in changes[:-1]] == [
        "n_dev", "train_eval_every", "train_curve_n", "n_test", "chains"]
    # word_reversal is the last task: its training leaves time for its own evaluations
    (name, reserve), = sizes.reserve_after_train_s.items()
    total = sum(estimate(sizes, TASKS, speeds(6.0)).values())
    assert name == "word_reversal" and 0 < reserve < 0.5 * total


def test_no_training_task_keeps_the_training_sizes() -> None:
    sizes = size_job(ASKED, TASKS[:1], speeds(6.0), 120)
    assert sizes.train_steps == 60 and sizes.train_eval_every == 20
