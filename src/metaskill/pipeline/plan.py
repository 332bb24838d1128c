"""A time plan for the main job: measure the machine, then size every stage to the budget.

A fixed plan breaks on a slower machine: on a 2-core AMD EPYC with AVX2 only (llama.cpp
2.5x slower than where the defaults were tuned) the 14-minute budget cut the LoRA training
at step 16 of 60. So with a time budget the job first measures this machine -- a few
seconds of prompt processing and decoding, and one LoRA step -- then estimates each
stage's cost and shrinks the work until the estimate fits, in an order that keeps what
brings the largest gain (the LoRA step is timed by the trainer itself, on the task's own
training examples):

1. test examples down to 60, dev examples down to 24;
2. the learning curve down to two points on 10 dev examples;
3. test examples down to 40;
4. the inference-time chains down to the first one.

The archive search (``--evolve``) is sized by its own budget of LM calls, which the plan
counts (each call as one demo-length prompt) but never cuts; it stops early, keeping the
plan's reserve for the tests after it (``reserve_after_evolve_s``).

Training is guaranteed its share: the plan never cuts its steps. When even the smallest
sizes do not fit, training runs until its deadline (the budget less what the remaining
test evaluations need) and reports the steps it made; the constant learning rate makes an
early stop the same as a shorter plan.

The plan is printed at the start and written to the report; the budget stays a hard limit
(:class:`~metaskill.pipeline.main_job.Clock`), and what does not fit is reported as
unfinished.

Example:
    >>> speeds = Speeds(prompt_tps=300.0, gen_tps=120.0, lora_step_s=3.8)
    >>> tasks = [TaskCost(name="trec", prompt_tokens=80, answer_tokens=4, chains=2,
    ...                   trains=False),
    ...          TaskCost(name="word_reversal", prompt_tokens=60, answer_tokens=12, chains=0,
    ...                   trains=True)]
    >>> sizes = size_job(Sizes(n_dev=40, n_test=100, chains=2, train_steps=60,
    ...                        train_eval_every=20, train_curve_n=20), tasks, speeds, 840.0)
    >>> sizes.train_steps, sizes.n_test
    (60, 100)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

#: Seconds per task of work that does not scale with the sizes (loading the task,
#: embedding its train pool, skills, profile, report) on the reference machine.
FIXED_S_PER_TASK = 12.0
#: Seconds of one-off work (MiniLM load, the first HF copy of the model) on the reference.
FIXED_S_JOB = 30.0
#: The reference machine's speeds (DESIGN.md: SmolLM2-135M on 2 cores), for scaling the
#: fixed costs to this machine.
REFERENCE = {"prompt_tps": 285.0, "gen_tps": 84.0}
#: Dev passes a chain's fit makes besides its own dev score (the main job passes k, which
#: turns the k search off; knn_demos still scores 2 prompt formats, raml 3 variants; the
#: keep-best check and the candidate's dev score are then LM-cache hits).
FIT_DEV_PASSES = 2.5
#: Prompt tokens of a demo prompt relative to zero-shot (k=4 short demos; trec measured 2.2x).
DEMO_FACTOR = 1.5
#: A fresh run's steps 3-4 took 1.4-1.6x the 60-step average on the reference machine
#: (5.84 vs 3.71 s at 2 threads, 10.09 vs 7.34 s at 1: benchmarks/results/main_job.md), so
#: the measured step is scaled by this before planning.
STEP_WARMUP = 0.7
#: Fraction of the budget the estimate may fill (the rest absorbs estimation error).
FILL = 0.92


class Speeds(BaseModel):
    """What the machine measured at the start.

    Attributes:
        prompt_tps: prompt tokens read per second.
        gen_tps: tokens generated per second.
        lora_step_s: seconds per LoRA optimiser step (None: no task trains).
        measure_s: seconds the measurement took.
    """

    prompt_tps: float
    gen_tps: float
    lora_step_s: float | None = None
    measure_s: float = 0.0

    @property
    def slowness(self) -> float:
        """How much slower than the reference machine this one is (>= 0.5)."""
        ratio = (REFERENCE["prompt_tps"] / self.prompt_tps + REFERENCE["gen_tps"] / self.gen_tps)
        return max(0.5, ratio / 2)


class Sizes(BaseModel):
    """The sizes the plan gives the stages (``reserve_after_train_s``: per trained task,
    the seconds its training leaves for what follows it, see :func:`reserves`;
    ``reserve_after_evolve_s`` likewise per task with an archive search)."""

    n_dev: int = Field(ge=2)
    n_test: int = Field(ge=2)
    chains: int = Field(ge=0)
    train_steps: int = Field(ge=1)
    train_eval_every: int = Field(ge=1)
    train_curve_n: int = Field(ge=1)
    reserve_after_train_s: dict[str, float] = Field(default_factory=dict)
    reserve_after_evolve_s: dict[str, float] = Field(default_factory=dict)


class TaskCost(BaseModel):
    """What a task costs per example: zero-shot prompt and answer tokens; ``evolve_calls``:
    the LM calls its archive search may spend (0: none)."""

    name: str
    prompt_tokens: float
    answer_tokens: float
    chains: int
    trains: bool
    evolve_calls: int = 0


class Plan(BaseModel):
    """The plan: the budget, what was measured, the sizes and the estimates."""

    budget_s: float
    speeds: Speeds
    sizes: Sizes
    asked: Sizes
    estimate_s: float
    stages_s: dict[str, float]
    changes: list[str]

    def lines(self) -> list[str]:
        """The plan as printed at the start of the job."""
        s, a = self.sizes, self.asked
        out = [f"time plan: {self.budget_s / 60:.1f} min budget; this machine reads "
               f"{self.speeds.prompt_tps:.0f} prompt and writes {self.speeds.gen_tps:.0f} "
               "tokens/s" + (f", {self.speeds.lora_step_s:.2f} s per LoRA step"
                             if self.speeds.lora_step_s else "")]
        out.append(f"  sizes: dev {s.n_dev}, test {s.n_test}, chains {s.chains}, training "
                   f"{s.train_steps} steps (curve every {s.train_eval_every} on "
                   f"{s.train_curve_n}); estimated {self.estimate_s / 60:.1f} min")
        out += [f"  changed: {c}" for c in self.changes]
        if s == a:
            out.append("  (as asked: the estimate fits the budget)")
        return out


def eval_s(n: float, prompt: float, answer: float, speeds: Speeds) -> float:
    """Estimated seconds to answer ``n`` examples of ``prompt``/``answer`` tokens."""
    return n * (prompt / speeds.prompt_tps + answer / speeds.gen_tps + 0.01)


def task_estimate(t: TaskCost, sizes: Sizes, speeds: Speeds) -> dict[str, float]:
    """Estimated seconds of one task's stages for ``sizes`` (``after_train``: what follows
    its training: the trained Solver's dev score and check, every candidate's test)."""
    p, a = t.prompt_tokens, t.answer_tokens
    chains = min(t.chains, sizes.chains)
    test = (eval_s(sizes.n_test, p, a, speeds)
            + chains * eval_s(sizes.n_test, DEMO_FACTOR * p, a, speeds))
    st = {"fixed": FIXED_S_PER_TASK * speeds.slowness,
          "baseline": eval_s(sizes.n_dev, p, a, speeds),
          "adapt": chains * eval_s(sizes.n_dev * (1 + FIT_DEV_PASSES), DEMO_FACTOR * p, a,
                                   speeds),
          "train": 0.0, "evolve": eval_s(t.evolve_calls, DEMO_FACTOR * p, a, speeds),
          "test": test, "after_train": 0.0, "after_evolve": test}
    if t.trains and speeds.lora_step_s:
        points = 1 + -(-sizes.train_steps // sizes.train_eval_every)
        after = 2 * eval_s(sizes.n_dev, p, a, speeds)  # dev score + keep-best check
        st["train"] = (sizes.train_steps * speeds.lora_step_s
                       + points * (eval_s(sizes.train_curve_n, p, a, speeds) + 2.0) + after)
        st["test"] += eval_s(sizes.n_test, p, a, speeds)
        st["after_train"] = after + st["evolve"] + st["test"]
        st["after_evolve"] = st["test"]
    return st


def estimate(sizes: Sizes, tasks: list[TaskCost], speeds: Speeds) -> dict[str, float]:
    """Estimated seconds per stage of the whole job for ``sizes``."""
    st = {"fixed": FIXED_S_JOB * speeds.slowness, "baseline": 0.0, "adapt": 0.0,
          "train": 0.0, "evolve": 0.0, "test": 0.0}
    for t in tasks:
        for k, v in task_estimate(t, sizes, speeds).items():
            if k in st:
                st[k] += v
    return st


def reserves(sizes: Sizes, tasks: list[TaskCost], speeds: Speeds) -> dict[str, float]:
    """Per trained task: seconds to keep free when its training starts (what follows it in
    the task, every later task, and the report), so that training stops in time."""
    return _reserves(sizes, tasks, speeds, "train")


def _reserves(sizes: Sizes, tasks: list[TaskCost], speeds: Speeds,
              stage: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for i, t in enumerate(tasks):
        if (t.trains if stage == "train" else t.evolve_calls > 0):
            later = sum(sum(v for k, v in task_estimate(u, sizes, speeds).items()
                            if not k.startswith("after_")) for u in tasks[i + 1:])
            out[t.name] = round(task_estimate(t, sizes, speeds)[f"after_{stage}"] + later, 1)
    return out


def size_job(asked: Sizes, tasks: list[TaskCost], speeds: Speeds,
             budget_s: float) -> Sizes:
    """The largest sizes (in the order of the module docstring) whose estimate fits."""
    return _shrink(asked, tasks, speeds, budget_s)[0]


def _shrink(asked: Sizes, tasks: list[TaskCost], speeds: Speeds,
            budget_s: float) -> tuple[Sizes, list[str]]:
    s = asked.model_copy()
    changes: list[str] = []
    target = FILL * budget_s

    def fits() -> bool:
        return sum(estimate(s, tasks, speeds).values()) <= target

    steps = [
        ("n_test", lambda: max(min(asked.n_test, 60), s.n_test - 10)),
        ("n_dev", lambda: max(min(asked.n_dev, 24), s.n_dev - 4)),
        ("train_eval_every", lambda: max(s.train_eval_every, -(-s.train_steps // 2))),
        ("train_curve_n", lambda: min(s.train_curve_n, 10)),
        ("n_test", lambda: max(min(asked.n_test, 40), s.n_test - 10)),
        ("chains", lambda: min(s.chains, 1)),
    ]
    trains = any(t.trains for t in tasks)
    for name, smaller in steps:
        if name.startswith("train_") and not trains:
            continue
        while not fits():
            new = smaller()
            if new == getattr(s, name):
                break
            setattr(s, name, new)
        if getattr(s, name) != getattr(asked, name):
            changes = [c for c in changes if c.split()[0] != name]
            changes.append(f"{name} {getattr(asked, name)} -> {getattr(s, name)}")
    s.reserve_after_train_s = reserves(s, tasks, speeds)
    s.reserve_after_evolve_s = _reserves(s, tasks, speeds, "evolve")
    if not fits():
        changes.append("the estimate still exceeds the budget: later work may be cut short")
    return s, changes


# ---- measuring the machine ------------------------------------------------------------------
def measure_lm(lm: Any) -> tuple[float, float]:
    """Prompt and generation tokens per second of ``lm`` (a few seconds, no cache).

    Prompt speed: a ~250-token prompt answered with one token. Generation speed: two short
    prompts answered with up to 64 tokens each, less the time their prompts took.
    """
    from metaskill.core.types import Request

    text = " ".join(f"item{i}" for i in range(80))
    lm.complete([Request(prompt="Hello", max_tokens=2)], cache=False)  # loads the model
    t0 = time.perf_counter()
    c1 = lm.complete([Request(prompt=f"List: {text}\nFirst item:", max_tokens=1)],
                     cache=False)[0]
    t1 = time.perf_counter()
    gen = [lm.complete([Request(prompt=p, max_tokens=64)], cache=False)[0]
           for p in ("Count from 1 to 100, separated by spaces: 1 2 3",
                     "Write a long story about a cat and a dog.")]
    t2 = time.perf_counter()
    pp = max(1, c1.usage.prompt_tokens) / max(1e-3, t1 - t0)
    prompt_s = sum(c.usage.prompt_tokens for c in gen) / pp
    gen_time = max(0.2 * (t2 - t1), (t2 - t1) - prompt_s)
    tg = max(1, sum(c.usage.completion_tokens for c in gen)) / max(1e-3, gen_time)
    return pp, tg


def measure_lora_step(lm: Any, task: Any, config: Any,
                      log: Callable[[str], None] | None = None) -> float:
    """Seconds of one LoRA optimiser step, measured by the trainer itself: four steps of
    :func:`~metaskill.methods.sft.train_lora` with ``config`` (rank, batch, threads) on the
    task's own training examples; the first two (warm-up, seen 2x slower) are not counted.

    Loads the training copy of the model (converting the GGUF on first use, which
    training would do anyway; ``log`` hears about it).
    """
    import tempfile

    from metaskill.lm.adapters import base_model_path
    from metaskill.lm.hf import load_hf_model
    from metaskill.methods.sft import pairs_from_examples, train_lora

    model, tok, _info = load_hf_model(base_model_path(lm), log=log)
    pairs = pairs_from_examples(task, task.examples("train")[: 4 * config.batch_size])
    elapsed: list[float] = []

    def on_step(st: Any) -> bool:
        elapsed.append(st.elapsed_s)
        return False

    with tempfile.TemporaryDirectory(prefix="metaskill-plan-") as tmp:
        train_lora(model, tok, pairs, config.model_copy(update={"steps": 4}),
                   Path(tmp) / "adapter", on_step=on_step, progress=False)
    del model
    return (elapsed[-1] - elapsed[1]) / max(1, len(elapsed) - 2)


def task_cost(lm: Any, task: Any, chains: int, trains: bool, sample: int = 12,
              evolve_calls: int = 0) -> TaskCost:
    """A task's zero-shot prompt and answer tokens, counted on a few examples."""
    from metaskill.eval.solvers import ZeroShot

    solver = ZeroShot.for_task(lm, task)
    pool = (task.splits.get("dev") or task.examples("train"))[:sample]
    prompts = [lm.count_tokens(lm.prompt_of(solver.request(task, e))) for e in pool]
    answers = [lm.count_tokens(str(e.answer)) + 2 for e in task.examples("train")[:sample]
               if e.answer is not None] or [8]
    return TaskCost(name=task.name, prompt_tokens=sum(prompts) / max(1, len(prompts)),
                    answer_tokens=sum(answers) / len(answers), chains=chains, trains=trains,
                    evolve_calls=evolve_calls)


def evolve_calls(config: Any) -> int:
    """The LM calls the plan counts for one task's archive search: its call budget, else
    two dev passes per child and the root (a guess; 0 without ``--evolve``).

    Example:
        >>> from types import SimpleNamespace as NS
        >>> evolve_calls(NS(evolve=True, evolve_calls=None, evolve_children=4, n_dev=10))
        100
    """
    if not getattr(config, "evolve", False):
        return 0
    guess = 2 * config.n_dev * (config.evolve_children + 1)
    return min(config.evolve_calls, guess) if config.evolve_calls else guess


def make_plan(job: Any, tasks: list[Any]) -> Plan:
    """Measure the machine and size the job's stages to what is left of its budget.

    Args:
        job: the main job's context (config, lm, clock, console).
        tasks: the loaded tasks, in the job's order.
    """
    from metaskill.core.errors import MetaskillError

    cfg, t0 = job.config, time.perf_counter()
    costs = [task_cost(job.lm, t, len(cfg.method_chains(t.name)), cfg.trains(t.name),
                       evolve_calls=evolve_calls(cfg)) for t in tasks]
    pp, tg = measure_lm(job.lm)
    step = None
    trained = [t for t in tasks if cfg.trains(t.name)]
    if trained:
        from metaskill.methods.sft import SFTConfig

        sft = SFTConfig(rank=cfg.train_rank, alpha=2.0 * cfg.train_rank,
                        batch_size=cfg.train_batch, threads=job.threads)
        try:
            step = STEP_WARMUP * max(measure_lora_step(job.lm, t, sft, log=job.resources.say)
                                     for t in trained)
        except (ImportError, MetaskillError) as e:
            job.console.print(f"time plan: no LoRA step measured ({e})", highlight=False)
    speeds = Speeds(prompt_tps=pp, gen_tps=tg, lora_step_s=step,
                    measure_s=time.perf_counter() - t0)
    asked = Sizes(n_dev=cfg.n_dev, n_test=cfg.n_test,
                  chains=max([c.chains for c in costs] or [0]), train_steps=cfg.train_steps,
                  train_eval_every=cfg.train_eval_every, train_curve_n=cfg.train_curve_n)
    budget = job.clock.left()
    sizes, changes = _shrink(asked, costs, speeds, budget)
    stages = {k: round(v, 1) for k, v in estimate(sizes, costs, speeds).items()}
    plan = Plan(budget_s=budget, speeds=speeds, sizes=sizes, asked=asked,
                estimate_s=round(sum(stages.values()), 1), stages_s=stages, changes=changes)
    for line in plan.lines():
        job.console.print(line, highlight=False)
    return plan
