"""GRPO (methods/grpo.py): advantages, rewards, config errors, resume (tiny random model),
and a 3-step run with the real embedded model (slow)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from metaskill.core.errors import MethodError
from metaskill.core.types import Example, Message
from metaskill.eval.solvers import ZeroShot
from metaskill.lm.fake import ScriptedLM
from metaskill.methods import METHODS
from metaskill.methods.base import MethodResources
from metaskill.methods.compose import build_method
from metaskill.methods.grpo import (
    GRPO,
    GRPOConfig,
    RewardSource,
    group_advantages,
    reward_sources,
    step_log,
    zero_signal_share,
)
from metaskill.methods.sft import ChatPair
from metaskill.tasks.base import Task
from metaskill.tasks.verifiers import ExactVerifier


def words_task(n_train: int = 4) -> Task:
    """'Repeat the word' with an exact-match Verifier."""
    words = ["cat", "dog", "sun", "map", "cup", "pen", "box", "hat"]

    def split(name: str, ws: list[str]) -> list[Example]:
        return [Example(id=f"{name}-{w}", input=w, answer=w) for w in ws]

    return Task(name="repeat", splits={"train": split("train", words[:n_train]),
                                       "dev": split("dev", words[4:6]),
                                       "test": split("test", words[6:])},
                template="Word: {input}", kind="generative", verifier=ExactVerifier(),
                instructions="Repeat the word exactly.", metadata={"max_tokens": 8})


# ---- advantages ---------------------------------------------------------------------------
def test_group_advantages_hand_checked() -> None:
    # one group of 4: mean 0.25, sample std sqrt(0.75 / 3) = 0.5
    adv = group_advantages([1, 0, 0, 0], group_size=4)
    assert adv == pytest.approx([0.75 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001])
    # two groups of 2: (1, 0) -> +-0.5 / sqrt(0.5); (0.5, 0.5) -> all equal -> 0
    adv = group_advantages([1.0, 0.0, 0.5, 0.5], group_size=2)
    s = 0.5 ** 0.5 + 1e-4
    assert adv == pytest.approx([0.5 / s, -0.5 / s, 0.0, 0.0])
    assert group_advantages([3.0, 1.0, 2.0, 2.0], 2, scale=False) == [1.0, -1.0, 0.0, 0.0]


def test_all_equal_groups_have_zero_advantage() -> None:
    assert group_advantages([1, 1, 1, 0, 0, 0], group_size=3) == [0.0] * 6
    assert zero_signal_share([1, 1, 1, 0, 0, 0], 3) == 1.0
    assert zero_signal_share([1, 0, 1, 1], 2) == 0.5


def test_group_advantages_refuse_ragged_groups() -> None:
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages([1, 0, 1, 0], group_size=3)


# ---- rewards ------------------------------------------------------------------------------
def test_reward_is_the_tasks_verifier() -> None:
    task = words_task()
    data = task.examples("train")
    (src,) = reward_sources(task, data, GRPOConfig())
    assert src.name == "verifier" and src.weight == 1.0
    # TRL's call: chat completions, dataset columns as keyword lists
    got = src(prompts=[[], [], []],
              completions=[[{"role": "assistant", "content": "cat"}],
                           [{"role": "assistant", "content": "dog"}], "cat"],
              example_id=["train-cat", "train-cat", "train-cat"], trainer_state=None)
    assert got == [1.0, 0.0, 1.0]


def test_judge_reward_beside_the_verifier() -> None:
    task = words_task()
    judge = ScriptedLM(lambda prompt, req: "Fine.\nScore: 8")
    srcs = reward_sources(task, task.examples("train"),
                          GRPOConfig(verifier_weight=0.5, judge_weight=2.0), judge_lm=judge)
    assert [(s.name, s.weight) for s in srcs] == [("verifier", 0.5), ("judge", 2.0)]
    assert srcs[1](prompts=[[]], completions=["anything"], example_id=["train-dog"]) == [0.8]
    assert judge.calls and "anything" in judge.calls[0]


# ---- config errors ------------------------------------------------------------------------
@pytest.mark.parametrize(("options", "needle"), [
    ({"group_size": 1}, "group_size is 1"),
    ({"verifier_weight": 0}, "no reward"),
    ({"masa_gate_prompts": True}, "masa_meta"),
])
def test_bad_configs_get_one_line_errors(options: dict, needle: str) -> None:
    with pytest.raises(MethodError) as e:
        build_method("grpo", options)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg and msg.startswith("grpo: bad option")


def test_registered() -> None:
    assert METHODS.get("grpo") is GRPO and GRPO.stage == "parametric"


def test_step_log_keeps_training_rows() -> None:
    hist = [{"step": 1, "loss": 0.0, "reward": 0.5, "rewards/verifier/mean": 0.5,
             "frac_reward_zero_std": 0.5, "wall_s": 2.0}, {"step": 1, "train_runtime": 3.0}]
    assert step_log(hist) == [{"step": 1, "loss": 0.0, "reward": 0.5, "zero_signal": 0.5,
                               "wall_s": 2.0, "verifier": 0.5}]


# ---- the Method with a fake trainer -------------------------------------------------------
def test_fit_with_a_fake_trainer_reports_the_log(tmp_path: Path) -> None:
    seen: dict = {}

    def trainer(lm, pairs, cfg, out, **kw):
        from metaskill.methods.grpo import GRPOResult

        seen.update(pairs=pairs, cfg=cfg)
        out.mkdir(parents=True)
        (out / "adapter_config.json").write_text("{}")
        return GRPOResult(adapter_dir=out, steps=2, losses=[0.1, 0.2], seconds=1.0,
                          seconds_per_step=0.5, peak_rss_mb=0.0, cpu_seconds=1.0,
                          n_examples=len(pairs), log=[{"step": 1, "reward": 0.25},
                                                      {"step": 2, "reward": 0.75}])

    task = words_task()
    res = MethodResources(trainer=trainer, work_dir=tmp_path)
    method = GRPO(GRPOConfig(steps=2, n_examples=3), resources=res)
    solver = method.fit(ZeroShot(ScriptedLM(default="cat")), task, task.examples("train"),
                        task.examples("dev"))
    assert [p.id for p in seen["pairs"]] == ["train-cat", "train-dog", "train-sun"]
    assert "Repeat the word exactly." in seen["pairs"][0].messages[0].content
    notes = method.report.notes
    assert notes["rewards_per_step"] == [0.25, 0.75] and notes["rewards"] == {"verifier": 1.0}
    assert notes["losses"] == [0.1, 0.2] and notes["max_new_tokens"] == 8
    assert solver.lm is not None
    pytest.importorskip("matplotlib")
    from metaskill.methods.grpo import reward_svg

    assert "mean reward" in reward_svg(notes)
    with pytest.raises(MethodError, match="no per-step log"):
        reward_svg({"curve": []})


# ---- TRL on a tiny random model -----------------------------------------------------------
@pytest.fixture(scope="module")
def tok():
    pytest.importorskip("trl", reason="GRPO needs TRL (the 'rl' extra)")
    pytest.importorskip("peft")
    sys.path.insert(0, str(Path(__file__).parent))
    from test_sft import _tokenizer

    return _tokenizer(None)


def test_trains_checkpoints_and_resumes(tok, tmp_path: Path) -> None:
    from metaskill.methods.grpo import train_grpo
    from test_sft import tiny_model

    pairs = [ChatPair(id=f"p{i}", messages=[Message(role="user", content=f"Say {w}")],
                      answer=w) for i, w in enumerate(["cat", "dog"])]
    # a reward that varies within groups: odd-length completions score 1
    rw = RewardSource("parity", lambda texts, ids: [float(len(t) % 2) for t in texts])
    cfg = GRPOConfig(steps=2, group_size=2, prompts_per_step=2, rank=2, alpha=4,
                     save_every=1, learning_rate=1e-2)
    steps_seen: list[int] = []
    out = tmp_path / "adapter"
    first = train_grpo(tiny_model(tok), tok, pairs, [rw], cfg, out, max_new_tokens=6,
                       progress=False, on_step=lambda st: steps_seen.append(st.step))
    assert first.steps == 2 and steps_seen == [1, 2] and first.resumed_from is None
    assert [r["step"] for r in first.log] == [1, 2]
    assert all("reward" in r and "wall_s" in r and "parity" in r for r in first.log)
    assert (out / "adapter_config.json").exists()
    info = json.loads((out / "metaskill_train.json").read_text())
    assert info["method"] == "grpo" and info["steps"] == 2
    # a longer run over the same checkpoints continues from step 2
    more = train_grpo(tiny_model(tok), tok, pairs, [rw], cfg.model_copy(update={"steps": 3}),
                      out, max_new_tokens=6, progress=False,
                      on_step=lambda st: steps_seen.append(st.step))
    assert more.resumed_from and more.resumed_from.endswith("checkpoint-2")
    assert steps_seen == [1, 2, 3] and [r["step"] for r in more.log] == [1, 2, 3]
    assert more.log[2]["wall_s"] >= more.log[1]["wall_s"] == first.log[1]["wall_s"]


# ---- the real embedded model --------------------------------------------------------------
@pytest.mark.slow
def test_three_steps_with_the_embedded_model_write_an_adapter(tmp_path: Path) -> None:
    pytest.importorskip("trl", reason="GRPO needs TRL (the 'rl' extra)")
    pytest.importorskip("llama_cpp")
    from metaskill.core.settings import Settings
    from metaskill.eval.harness import evaluate
    from metaskill.lm.spec import load_lm

    task = words_task(n_train=2)
    lm = load_lm("local")
    res = MethodResources(work_dir=tmp_path / "work", settings=Settings(home=tmp_path / "home"))
    method = GRPO(GRPOConfig(steps=3, group_size=2, prompts_per_step=2, max_new_tokens=8,
                             save_every=3, threads=2), resources=res)
    solver = method.fit(ZeroShot(lm), task, task.examples("train"), task.examples("dev"))
    notes = method.report.notes
    assert notes["steps"] == 3 and len(notes["grpo_log"]) == 3
    assert all(0.0 <= r <= 1.0 for r in notes["rewards_per_step"])
    adapter = Path(notes["adapter"])
    assert (adapter / "adapter_config.json").exists() and (adapter / "adapter.gguf").exists()
    assert "+adapter:" in solver.lm.spec
    run = evaluate(solver, task, "dev", progress=False)
    assert len(run.records) == 2


# ---- MASA ---------------------------------------------------------------------------------
def test_meta_prediction_parse_and_reward() -> None:
    from metaskill.methods.grpo import MetaPrediction, meta_prompt, meta_reward, parse_meta

    assert "PASS 2/4 LENGTH" in meta_prompt("Word: cat", 4) and "Word: cat" in meta_prompt(
        "Word: cat", 4)
    assert parse_meta("Sure! PASS: 1 / 4, LENGTH: 7 words") == MetaPrediction(0.25, 7)
    assert parse_meta("PASS 9/4 LENGTH 1") == MetaPrediction(1.0, 1)
    assert parse_meta("PASS 1/0 LENGTH 1") is None and parse_meta("no idea") is None
    # predicted 1/4 pass and 8 words; actual 3/4 pass and 4 words: 0.5*(1-0.5) + 0.5*(4/8)
    assert meta_reward(MetaPrediction(0.25, 8), 0.75, 4.0) == pytest.approx(0.5)
    assert meta_reward(MetaPrediction(0.75, 4), 0.75, 4.0) == 1.0
    assert meta_reward(MetaPrediction(0.5, 0), 0.5, 0.0) == 1.0


def test_gates_on_fixed_predictions() -> None:
    from metaskill.methods.grpo import MetaPrediction as P
    from metaskill.methods.grpo import cut_length, gate_prompt

    preds = [P(1.0, 3), P(0.0, 3), P(0.5, 3), None]
    assert [gate_prompt(p) for p in preds] == ["all_pass", "all_fail", None, None]
    # actual groups behind them: all pass, all fail, mixed -> the gates skip exactly the
    # groups whose advantages are all zero
    actual = [[1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 0, 1]]
    for p, rewards in zip(preds, actual, strict=False):
        zero = all(a == 0 for a in group_advantages(rewards, 4))
        assert (gate_prompt(p) is not None) == zero
    # the rollout cut: 1.5 x the longest predicted length, 2 tokens a word, capped
    assert cut_length([P(0.5, 3), P(0.5, 5)], 64, 1.5) == 15
    assert cut_length([P(0.5, 100)], 64, 1.5) == 64
    assert cut_length([P(0.5, 0)], 64, 1.0) == 2
    assert cut_length([P(0.5, 3), None], 64, 1.5) == 64 and cut_length([], 64, 1.5) == 64


def test_gated_sampler_skips_and_never_stalls() -> None:
    from types import SimpleNamespace

    from metaskill.methods.grpo import _GatedSampler

    base = SimpleNamespace(num_samples=4, batch_size=2, repeat_count=1, mini_repeat_count=2,
                           shuffle=False, generator=None)
    assert list(_GatedSampler(base, lambda i: i != 1)) == [0, 0, 2, 2]
    # every prompt gated: the epoch trains on them anyway
    assert list(_GatedSampler(base, lambda i: False)) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_masa_gates_in_a_tiny_run(tok, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fixed meta-predictions: 'cat' predicted all-pass is never sampled; the others are
    cut at 1.5 x 2 tokens x 1 word = 3 tokens."""
    import metaskill.methods.grpo as grpo
    from metaskill.methods.grpo import MetaPrediction, train_grpo
    from test_sft import tiny_model

    def fixed(model, tk, prompt, g):
        return MetaPrediction(1.0 if "cat" in prompt[-1]["content"] else 0.5, 1)

    monkeypatch.setattr(grpo, "_predict_meta", fixed)
    words = ["cat", "dog", "sun", "map"]
    pairs = [ChatPair(id=w, messages=[Message(role="user", content=f"Say {w}")], answer=w)
             for w in words]
    scored: list[str] = []

    def reward(texts, ids):
        scored.extend(ids)
        return [float(len(t) % 2) for t in texts]

    cfg = GRPOConfig(steps=2, group_size=2, prompts_per_step=1, rank=2, alpha=4,
                     masa_meta=True, masa_gate_prompts=True, masa_gate_rollouts=True)
    res = train_grpo(tiny_model(tok), tok, pairs, [RewardSource("v", reward)], cfg,
                     tmp_path / "adapter", max_new_tokens=8, progress=False)
    assert "cat" not in scored and len(scored) == 4
    assert all(r["mean_length"] <= 3 for r in res.log)
    m = res.masa
    assert m["skipped"]["all_pass"] >= 1 and m["cut_batches"] == 2
    assert m["token_budget_saved"] == 2 * 2 * (8 - 3) and m["meta_reward_mean"] is not None
    assert all("meta_reward" in r for r in res.log)
