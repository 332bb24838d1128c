"""GRPO: reinforcement learning from the Task's Verifier, on a LoRA adapter (TRL's GRPOTrainer).

Algorithm (Shao et al. 2024, "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in
Open Language Models", section 4.1, Group Relative Policy Optimization):

1. For each prompt q, sample a group of G answers o_1..o_G from the current policy.
2. Score each answer with the reward: the Task's Verifier (score in [0, 1]) and, optionally,
   an LM judge (:class:`~metaskill.tasks.verifiers.JudgeVerifier`), summed with weights.
3. The advantage of o_i is its reward relative to its group:
   ``A_i = (r_i - mean(r)) / (std(r) + eps)`` (:func:`group_advantages`); a group whose answers
   all score the same carries no signal (all advantages 0).
4. Maximise the clipped policy-gradient objective with these advantages minus
   ``beta * KL(policy || reference)``; the reference is the base model (the adapter
   switched off), so no second copy of the weights is held.

The loop is TRL's ``GRPOTrainer`` (``rl`` extra) with PEFT LoRA on CPU, the model loaded by
the hf backend from the same weights the Solver runs (the embedded GGUF is dequantized once).
Checkpoints go to ``WORK/grpo_checkpoints`` every ``save_every`` steps, and a rerun with the
same inputs resumes from the last one. Each step's loss, mean reward, reward spread, KL,
share of zero-signal groups and wall time are kept (``report.notes["grpo_log"]``), with a
learning curve on dev like SFT's. The adapter is saved and exported to GGUF by the same path
as SFT (:func:`~metaskill.methods.sft.train_solver`), so the trained Solver's JSON carries it.

MASA options ("Meta-Awareness Enhances Reasoning Models: Self-Alignment Reinforcement
Learning", 2025), each switchable so the ablation is one flag:

* ``masa_meta``: before a prompt's group is sampled, the policy is asked (by prompt; no
  extra head) to predict its own pass rate over the group and the answer's length in words
  (:func:`meta_prompt`, :func:`parse_meta`); after the group is scored the prediction gets
  its reward against the group's actual pass rate and lengths (:func:`meta_reward`), logged
  per step (``meta_reward``) and summed up in ``report.notes["masa"]``.
* ``masa_gate_prompts``: a prompt predicted all-pass or all-fail (its group would have zero
  advantage) is not drawn at all (:func:`gate_prompt`, in TRL's sampler); an epoch that
  would keep none keeps them all.
* ``masa_gate_rollouts``: rollouts are cut at ``masa_length_margin`` times the predicted
  length (MASA's early cut: rollouts running far past the expected length mostly fail); a
  cut rollout is judged on what it wrote (:func:`cut_length`).

Both gates act from step ``masa_gate_after`` on; the shares of prompts and token budget they
saved are in ``report.notes["masa"]``.

What we changed: GRPO's math is TRL's (``loss_type="grpo"``, group-scaled advantages, KL to
the base model); we train LoRA instead of all weights and use the Verifier as the reward.
In MASA the meta-predictions are themselves trained by a second GRPO stream; here they are
produced by the same policy from a prompt and rewarded (the reward is logged), but not
trained. The rollout cut is one limit per generation batch (TRL samples a batch with one
``max_new_tokens``): the longest prediction among its prompts, at ``TOKENS_PER_WORD`` tokens a
word, rather than one limit per rollout. On resume, the sampler's replay of the batches
already seen asks their meta-predictions again.

Example:
    >>> GRPOConfig(group_size=4, steps=10).group_size
    4
    >>> group_advantages([1.0, 1.0, 0.5, 0.5], group_size=2)
    [0.0, 0.0, 0.0, 0.0]
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from metaskill.core.errors import MethodError
from metaskill.core.types import Example
from metaskill.eval.solver import Solver, answer_max_tokens
from metaskill.methods.base import Method, MethodConfig
from metaskill.methods.sft import (
    DEFAULT_TARGETS,
    ChatPair,
    StepInfo,
    TrainingError,
    TrainResult,
    check_trainable,
    peak_rss_mb,
    save_adapter_atomically,
    train_solver,
)
from metaskill.tasks.base import Task

#: The ``rl`` extra's library; named in the error when it is missing.
TRL_HINT = "GRPO needs TRL: pip install 'metaskill[rl]'"


class GRPOConfig(MethodConfig):
    """GRPO settings.

    Attributes:
        group_size: answers sampled per prompt (G >= 2: the advantage compares them).
        prompts_per_step: prompts (groups) per optimizer update.
        steps: optimizer updates.
        beta: KL coefficient against the base model (0: no KL term, no reference pass).
        learning_rate: AdamW learning rate of the LoRA weights.
        temperature: sampling temperature of the rollouts (> 0).
        top_p: nucleus sampling of the rollouts.
        max_new_tokens: rollout length limit; None: the task's answer budget.
        scale_rewards: ``group`` divides by the group's std (GRPO); ``none`` does not
            (Dr. GRPO).
        verifier_weight: weight of the Task's Verifier score in the reward (0: off).
        judge_weight: weight of an LM judge's score (0: off); the judge is
            ``resources.extra["judge"]`` when given (any Verifier, e.g. the evolving judge
            of :mod:`metaskill.evolve.judge`; its ``on_step(step)``, if it has one, is
            called after each step), else a JudgeVerifier on ``resources.teacher``, else on
            the Solver's own LM.
        judge_rubric: what the judge rewards.
        rank: LoRA rank.
        alpha: LoRA alpha.
        dropout: LoRA dropout.
        target_modules: linear layers that get adapters.
        seed: seeds sampling, data order and LoRA initialisation.
        threads: torch CPU threads (None: the settings' value, else torch's default).
        n_examples: train on the first this many answered training examples (None: all).
        save_every: write a resumable checkpoint every this many steps.
        eval_every: score ``curve_n`` dev examples every this many steps and after the
            last (the learning curve); None: no curve.
        curve_n: dev examples scored at each point of the curve.
        masa_meta: MASA meta-prediction (pass rate, length) by prompt before each group,
            scored against the group (its reward is logged).
        masa_gate_prompts: skip prompts predicted all-pass or all-fail (needs masa_meta).
        masa_gate_rollouts: cut rollouts at ``masa_length_margin`` x the predicted length
            (needs masa_meta).
        masa_length_margin: the rollout cut's margin over the predicted length (>= 1).
        masa_gate_after: the gates act only from this step on (predictions start poor).
    """

    group_size: int = 4
    prompts_per_step: int = Field(2, ge=1)
    steps: int = Field(20, ge=1)
    beta: float = Field(0.04, ge=0)
    learning_rate: float = Field(2e-4, gt=0, le=1.0)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1.0)
    max_new_tokens: int | None = Field(None, ge=1)
    scale_rewards: Literal["group", "none"] = "group"
    verifier_weight: float = Field(1.0, ge=0)
    judge_weight: float = Field(0.0, ge=0)
    judge_rubric: str = "The response answers the question correctly and completely."
    rank: int = Field(8, ge=1, le=1024)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGETS))
    seed: int = 0
    threads: int | None = Field(None, ge=1)
    n_examples: int | None = Field(None, ge=1)
    save_every: int = Field(10, ge=1)
    eval_every: int | None = Field(None, ge=1)
    curve_n: int = Field(20, ge=1)
    masa_meta: bool = False
    masa_gate_prompts: bool = False
    masa_gate_rollouts: bool = False
    masa_length_margin: float = Field(1.5, ge=1.0)
    masa_gate_after: int = Field(0, ge=0)

    @field_validator("group_size")
    @classmethod
    def _two_or_more(cls, v: int) -> int:
        if v < 2:
            raise ValueError(f"group_size is {v}; GRPO needs at least 2 answers per prompt, "
                             "since each answer is scored against its group")
        return v

    @model_validator(mode="after")
    def _check(self) -> GRPOConfig:
        if self.verifier_weight == 0 and self.judge_weight == 0:
            raise ValueError("no reward: set verifier_weight > 0 (the Task's Verifier) or "
                             "judge_weight > 0 (an LM judge)")
        if (self.masa_gate_prompts or self.masa_gate_rollouts) and not self.masa_meta:
            raise ValueError("the MASA gates act on meta-predictions: set masa_meta=true too")
        if not self.target_modules:
            raise ValueError("target_modules must name at least one linear layer")
        return self


# ---- rewards and advantages ---------------------------------------------------------------
def group_advantages(rewards: Sequence[float], group_size: int, *,
                     scale: bool = True, eps: float = 1e-4) -> list[float]:
    """GRPO's advantages: each reward minus its group's mean, over the group's std + eps.

    ``rewards`` holds consecutive groups of ``group_size`` (as TRL lays them out); the std
    is the sample std (n - 1), as in TRL. A group with equal rewards gets all zeros.

    Example:
        >>> [round(a, 3) for a in group_advantages([1, 0, 0, 0], group_size=4)]
        [1.5, -0.5, -0.5, -0.5]
        >>> group_advantages([2.0, 0.0], group_size=2, scale=False)
        [1.0, -1.0]
    """
    if group_size < 2 or len(rewards) % group_size:
        raise ValueError(f"{len(rewards)} rewards do not split into groups of {group_size} "
                         "(group_size >= 2)")
    out: list[float] = []
    for i in range(0, len(rewards), group_size):
        g = [float(r) for r in rewards[i:i + group_size]]
        mean = sum(g) / len(g)
        std = math.sqrt(sum((r - mean) ** 2 for r in g) / (len(g) - 1))
        out += [(r - mean) / (std + eps) if scale else r - mean for r in g]
    return out


def zero_signal_share(rewards: Sequence[float], group_size: int) -> float:
    """The share of groups whose rewards are all equal (no gradient from them).

    Example:
        >>> zero_signal_share([1, 1, 0, 1, 0, 0], group_size=2)
        0.6666666666666666
    """
    groups = [rewards[i:i + group_size] for i in range(0, len(rewards), group_size)]
    return sum(1 for g in groups if max(g) == min(g)) / max(1, len(groups))


def completion_text(completion: Any) -> str:
    """The text of one TRL completion (a string, or chat messages).

    Example:
        >>> completion_text([{"role": "assistant", "content": "42"}])
        '42'
    """
    if isinstance(completion, str):
        return completion
    return "".join(str(m.get("content", "")) for m in completion)


@dataclass
class RewardSource:
    """One reward function for TRL: ``fn(completions, example_id) -> scores``, a weight."""

    name: str
    fn: Callable[[list[str], list[str]], list[float]]
    weight: float = 1.0

    def __call__(self, prompts: list[Any], completions: list[Any],
                 example_id: list[str], **_: Any) -> list[float]:
        """TRL's reward-function signature (dataset columns arrive as keyword lists)."""
        return self.fn([completion_text(c) for c in completions], list(example_id))


def verifier_scores(verifier: Any, examples: dict[str, Example]) -> Callable[..., list[float]]:
    """``(texts, example_ids) -> scores``: the Verifier's score of each text (errors: 0).

    Example:
        >>> from metaskill.tasks.verifiers import ExactVerifier
        >>> f = verifier_scores(ExactVerifier(), {"a": Example(id="a", input="1+1", answer="2")})
        >>> f(["2", "3"], ["a", "a"])
        [1.0, 0.0]
    """
    from metaskill.tasks.verifiers import safe_verify_batch

    def score(texts: list[str], ids: list[str]) -> list[float]:
        verdicts = safe_verify_batch(verifier, texts, [examples[i] for i in ids])
        return [float(v.score) for v in verdicts]

    return score


def reward_sources(task: Task, examples: Sequence[Example], config: GRPOConfig,
                   judge_lm: Any = None, judge: Any = None) -> list[RewardSource]:
    """The weighted rewards of ``config``: the Task's Verifier and/or an LM judge
    (``judge``, a ready Verifier, when given; else a JudgeVerifier on ``judge_lm``).

    Raises:
        MethodError: a judge reward without a judge LM.
    """
    from metaskill.tasks.verifiers import JudgeVerifier

    by_id = {e.id: e for e in examples}
    out = []
    if config.verifier_weight > 0:
        out.append(RewardSource("verifier", verifier_scores(task.verifier, by_id),
                                config.verifier_weight))
    if config.judge_weight > 0:
        if judge is None and judge_lm is None:
            raise MethodError("grpo: judge_weight > 0 needs a judge LM (resources.teacher or "
                              "the Solver's LM).")
        if judge is None:
            judge = JudgeVerifier(lm=judge_lm, rubric=config.judge_rubric, max_tokens=64)
        out.append(RewardSource("judge", verifier_scores(judge, by_id), config.judge_weight))
    return out


# ---- MASA: meta-prediction by prompt, its reward, the two gates ---------------------------
#: Tokens per predicted word when a length in words becomes a token limit (the rollout cut).
TOKENS_PER_WORD = 2.0

META_PROMPT = ("Before answering, estimate: if you answered the request below {g} times, how "
               "many of your answers would be correct, and how many words would a correct answer "
               "have? Reply with one line exactly like: PASS 2/{g} LENGTH 5\n\n{question}")
_META = re.compile(r"PASS\s*:?\s*(\d+)\s*/\s*(\d+).*?LENGTH\s*:?\s*(\d+)", re.I | re.S)


@dataclass(frozen=True)
class MetaPrediction:
    """The policy's guess about its own group: pass rate in [0, 1] and answer length (words)."""

    pass_rate: float
    length: int


def meta_prompt(question: str, group_size: int) -> str:
    """The meta question asked before a prompt's group is sampled (MASA's meta-path).

    Example:
        >>> meta_prompt("Word: cat", 4).splitlines()[0][:26]
        'Before answering, estimate'
    """
    return META_PROMPT.format(g=group_size, question=question)


def parse_meta(text: str) -> MetaPrediction | None:
    """The prediction in a reply like ``PASS 3/4 LENGTH 12`` (None if there is none).

    Example:
        >>> parse_meta("PASS 3/4 LENGTH 12")
        MetaPrediction(pass_rate=0.75, length=12)
        >>> parse_meta("I think it is easy") is None
        True
    """
    m = _META.search(text)
    if not m or int(m.group(2)) <= 0:
        return None
    k, n = int(m.group(1)), int(m.group(2))
    return MetaPrediction(pass_rate=min(1.0, k / n), length=int(m.group(3)))


def meta_reward(pred: MetaPrediction | None, pass_rate: float, length: float) -> float:
    """How well a prediction matched its group: half for the pass rate (1 - |error|), half
    for the length (shorter over longer); 0 for no prediction.

    Example:
        >>> meta_reward(MetaPrediction(0.5, 10), pass_rate=0.5, length=5.0)
        0.75
        >>> meta_reward(None, 1.0, 3.0)
        0.0
    """
    if pred is None:
        return 0.0
    lo, hi = sorted((float(pred.length), float(length)))
    return 0.5 * (1 - abs(pred.pass_rate - pass_rate)) + 0.5 * (lo / hi if hi > 0 else 1.0)


def gate_prompt(pred: MetaPrediction | None) -> str | None:
    """MASA's prompt gate: ``"all_pass"`` or ``"all_fail"`` when the whole group is
    predicted to score the same (zero advantage: sampling it teaches nothing), else None.

    Example:
        >>> gate_prompt(MetaPrediction(1.0, 3)), gate_prompt(MetaPrediction(0.0, 3))
        ('all_pass', 'all_fail')
        >>> gate_prompt(MetaPrediction(0.5, 3)) is None and gate_prompt(None) is None
        True
    """
    if pred is None:
        return None
    if pred.pass_rate >= 1.0:
        return "all_pass"
    if pred.pass_rate <= 0.0:
        return "all_fail"
    return None


def cut_length(preds: Sequence[MetaPrediction | None], max_new: int, margin: float) -> int:
    """MASA's rollout cut: the token limit of a generation batch, ``margin`` times the
    longest predicted length (in tokens, ``TOKENS_PER_WORD`` a word), at most ``max_new``;
    ``max_new`` when a prompt of the batch has no prediction.

    Example:
        >>> cut_length([MetaPrediction(0.5, 4), MetaPrediction(0.5, 2)], 64, 1.5)
        12
        >>> cut_length([MetaPrediction(0.5, 4), None], 64, 1.5)
        64
    """
    if not preds or any(p is None for p in preds):
        return max_new
    words = max(p.length for p in preds if p is not None)
    return max(1, min(max_new, math.ceil(margin * TOKENS_PER_WORD * max(1, words))))


@dataclass
class MasaStats:
    """What the MASA options did over a run (counts and the meta-rewards)."""

    predicted: int = 0
    unparsed: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: {"all_pass": 0, "all_fail": 0})
    drawn: int = 0
    cut_batches: int = 0
    tokens_saved: int = 0
    meta_rewards: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON for the fit report."""
        n = max(1, self.drawn)
        return {"predicted": self.predicted, "unparsed": self.unparsed,
                "skipped": dict(self.skipped), "prompts_drawn": self.drawn,
                "prompt_share_saved": round(sum(self.skipped.values()) / n, 3),
                "cut_batches": self.cut_batches, "token_budget_saved": self.tokens_saved,
                "meta_reward_mean": (round(sum(self.meta_rewards) / len(self.meta_rewards), 3)
                                     if self.meta_rewards else None)}


# ---- training ------------------------------------------------------------------------------
@dataclass
class GRPOResult(TrainResult):
    """:class:`~metaskill.methods.sft.TrainResult` plus GRPO's per-step log."""

    log: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: str | None = None
    masa: dict[str, Any] | None = None


def _trl_args(config: GRPOConfig, out: Path, max_new: int, progress: bool,
              weights: list[float]) -> Any:
    try:
        from trl import GRPOConfig as TRLConfig
    except ImportError as e:
        raise MethodError(f"{TRL_HINT} ({e}).") from None
    return TRLConfig(
        output_dir=str(out), max_steps=config.steps, learning_rate=config.learning_rate,
        per_device_train_batch_size=config.group_size, num_generations=config.group_size,
        gradient_accumulation_steps=config.prompts_per_step,
        max_completion_length=max_new, temperature=config.temperature, top_p=config.top_p,
        beta=config.beta, loss_type="grpo", scale_rewards=config.scale_rewards,
        reward_weights=weights, seed=config.seed, data_seed=config.seed, use_cpu=True,
        bf16=False, fp16=False, gradient_checkpointing=False, logging_steps=1,
        save_strategy="steps", save_steps=config.save_every, save_total_limit=2,
        report_to="none", disable_tqdm=not progress, remove_unused_columns=False,
        dataloader_num_workers=0, log_completions=False, warmup_steps=0,
        lr_scheduler_type="constant",
    )


def _step_hook(on_step: Callable[[StepInfo], bool | None] | None, total: int,
               clock: dict[str, float]) -> Any:
    """A TrainerCallback that stamps wall time into each step's log and calls ``on_step``."""
    from transformers import TrainerCallback

    class StepHook(TrainerCallback):  # type: ignore[misc]
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None,
                   model: Any = None, **kw: Any) -> Any:
            if not logs or "loss" not in logs or not state.log_history:
                return control
            now, cpu = time.perf_counter(), time.process_time()
            wall = clock["offset"] + now - clock["t0"] - clock["paused"]
            state.log_history[-1]["wall_s"] = round(wall, 2)
            if on_step is not None:
                model.eval()
                stop = on_step(StepInfo(state.global_step, total, float(logs["loss"]), wall,
                                        model, cpu - clock["c0"] - clock["cpu_paused"]))
                model.train()
                clock["paused"] += time.perf_counter() - now
                clock["cpu_paused"] += time.process_time() - cpu
                if stop:  # the deadline: keep a checkpoint to resume from
                    control.should_training_stop = True
                    control.should_save = True
            return control

    return StepHook()


STEP_KEYS = {"loss": "loss", "reward": "reward", "reward_std": "reward_std", "kl": "kl",
             "frac_reward_zero_std": "zero_signal", "completions/mean_length": "mean_length",
             "masa_meta_reward": "meta_reward", "wall_s": "wall_s"}


def step_log(history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per training step from TRL's ``log_history`` (names shortened).

    Example:
        >>> step_log([{"step": 1, "loss": 0.1, "reward": 0.5, "wall_s": 3.0},
        ...           {"train_runtime": 9.0}])
        [{'step': 1, 'loss': 0.1, 'reward': 0.5, 'wall_s': 3.0}]
    """
    out = []
    for h in history:
        if "loss" not in h or "step" not in h:
            continue
        row: dict[str, Any] = {"step": h["step"]}
        row.update({short: h[k] for k, short in STEP_KEYS.items() if k in h})
        row.update({k.split("/")[1]: h[k] for k in h
                    if k.startswith("rewards/") and k.endswith("/mean")})
        out.append(row)
    return out


def _predict_meta(model: Any, tok: Any, prompt: list[dict[str, str]],
                  group_size: int) -> MetaPrediction | None:
    """Ask the policy (greedy, 16 tokens) the meta question about ``prompt``'s last turn."""
    import torch

    q = meta_prompt(str(prompt[-1]["content"]), group_size)
    text = (tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                    add_generation_prompt=True)
            if getattr(tok, "chat_template", None) else q)
    enc = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        seq = model.generate(**enc, max_new_tokens=16, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    return parse_meta(tok.decode(seq[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))


class _GatedSampler:
    """TRL's RepeatSampler with MASA's prompt gate: a prompt whose ``keep(index)`` is False
    is not drawn (decided lazily, with the policy of the moment); an epoch that would keep
    none keeps them all."""

    def __init__(self, base: Any, keep: Callable[[int], bool]) -> None:
        self.base, self.keep = base, keep

    def __len__(self) -> int:
        return len(self.base)

    def __iter__(self) -> Any:
        import torch

        b = self.base
        order = (torch.randperm(b.num_samples, generator=b.generator).tolist() if b.shuffle
                 else list(range(b.num_samples)))
        kept, skipped, n_yielded = [], [], 0
        for idx in order:
            (kept if self.keep(idx) else skipped).append(idx)
            if len(kept) == b.batch_size:
                yield from self._layout(kept)
                n_yielded, kept = n_yielded + 1, []
        if not n_yielded:  # everything gated: train on them anyway rather than stall
            rest = kept + skipped
            for i in range(0, len(rest) - b.batch_size + 1, b.batch_size):
                yield from self._layout(rest[i:i + b.batch_size])

    def _layout(self, chunk: list[int]) -> Any:
        for _ in range(self.base.repeat_count):
            for index in chunk:
                yield from [index] * self.base.mini_repeat_count


def _masa_trainer(base_cls: Any, config: GRPOConfig, stats: MasaStats,
                  actual: dict[str, list[tuple[float, int]]]) -> Any:
    """A GRPOTrainer subclass with MASA's meta-prediction and gates (see the module doc)."""

    drawn_preds: dict[str, MetaPrediction | None] = {}  # the gate's, reused for the group

    class MasaGRPOTrainer(base_cls):  # type: ignore[misc, valid-type]
        def _predict(self, prompt: list[dict[str, str]]) -> MetaPrediction | None:
            model = self.accelerator.unwrap_model(self.model)
            pred = _predict_meta(model, self.processing_class, prompt, config.group_size)
            stats.predicted += 1
            stats.unparsed += pred is None
            return pred

        def _gates_on(self) -> bool:
            return int(self.state.global_step) >= config.masa_gate_after

        def _get_train_sampler(self, dataset: Any = None) -> Any:
            base = super()._get_train_sampler(dataset)
            if not config.masa_gate_prompts:
                return base
            rows = dataset if dataset is not None else self.train_dataset

            def keep(idx: int) -> bool:
                row = rows[idx]
                stats.drawn += 1
                pred = self._predict(row["prompt"])
                drawn_preds[row["example_id"]] = pred
                why = gate_prompt(pred) if self._gates_on() else None
                if why:
                    stats.skipped[why] += 1
                return why is None

            return _GatedSampler(base, keep)

        def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> Any:
            firsts = {x["example_id"]: x for x in inputs}
            preds = {i: (drawn_preds.pop(i) if i in drawn_preds else self._predict(x["prompt"]))
                     for i, x in firsts.items()}
            if not config.masa_gate_prompts:
                stats.drawn += len(firsts)
            full = self.max_completion_length
            cut = (cut_length(list(preds.values()), full, config.masa_length_margin)
                   if config.masa_gate_rollouts and self._gates_on() else full)
            if cut < full:
                stats.cut_batches += 1
                stats.tokens_saved += (full - cut) * len(inputs)
            self.max_completion_length = self.generation_config.max_new_tokens = cut
            try:
                out = super()._generate_and_score_completions(inputs)
            finally:
                self.max_completion_length = self.generation_config.max_new_tokens = full
            for i, pred in preds.items():
                got = actual.pop(i, [])
                if got:
                    rate = sum(sc >= 0.5 for sc, _ in got) / len(got)
                    words = sum(n for _, n in got) / len(got)
                    stats.meta_rewards.append(meta_reward(pred, rate, words))
                    # logged with the step's metrics (TRL flushed its pending ones already)
                    self._metrics["train"]["masa_meta_reward"].append(stats.meta_rewards[-1])
            return out

    return MasaGRPOTrainer


def _recording(source: RewardSource, actual: dict[str, list[tuple[float, int]]]
               ) -> RewardSource:
    """``source`` that also keeps each scored completion's (score, words) by example id."""

    def fn(texts: list[str], ids: list[str]) -> list[float]:
        scores = source.fn(texts, ids)
        for t, i, sc in zip(texts, ids, scores, strict=True):
            actual.setdefault(i, []).append((float(sc), len(t.split())))
        return scores

    return RewardSource(source.name, fn, source.weight)


def train_grpo(model: Any, tokenizer: Any, pairs: Sequence[ChatPair],
               rewards: Sequence[RewardSource], config: GRPOConfig, out_dir: str | Path, *,
               max_new_tokens: int = 64, checkpoint_dir: str | Path | None = None,
               on_step: Callable[[StepInfo], bool | None] | None = None,
               progress: bool = True, meta: dict[str, Any] | None = None) -> GRPOResult:
    """Train a LoRA adapter by GRPO on ``pairs``' prompts and save it atomically to ``out_dir``.

    Resumes from the last checkpoint in ``checkpoint_dir`` (default: ``grpo_checkpoints``
    beside ``out_dir``) when there is one.

    Args:
        model: an HF causal LM (wrapped with PEFT LoRA by TRL).
        tokenizer: its tokenizer (padding is set to the left, as TRL needs).
        pairs: the prompts (their ``id`` keys the reward's Example).
        rewards: the reward functions and weights.
        config: the :class:`GRPOConfig`.
        out_dir: where the PEFT adapter goes.
        max_new_tokens: rollout length limit.
        checkpoint_dir: TRL's output folder (checkpoints).
        on_step: called after each step with a :class:`~metaskill.methods.sft.StepInfo`;
            its time is not counted, and returning True stops after that step.
        progress: TRL's progress bar.
        meta: extra JSON for ``metaskill_train.json``.

    Raises:
        TrainingError: no prompts, no reward, or a non-finite loss.

    Example:
        >>> train_grpo(lm.model, lm.tokenizer, pairs, rewards, GRPOConfig(steps=3),
        ...            "adapter")  # doctest: +SKIP
    """
    import torch
    from peft import LoraConfig

    try:
        from datasets import Dataset
        from transformers import PrinterCallback
        from transformers.trainer_utils import get_last_checkpoint
        from trl import GRPOTrainer
    except ImportError as e:
        raise MethodError(f"{TRL_HINT} ({e}).") from None
    if not pairs:
        raise TrainingError("grpo: no prompts to train on; nothing was trained.")
    if not rewards:
        raise TrainingError("grpo: no reward function; nothing was trained.")
    out = Path(out_dir)
    ck = Path(checkpoint_dir) if checkpoint_dir else out.parent / "grpo_checkpoints"
    ck.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    data = Dataset.from_list([{"prompt": [{"role": m.role, "content": m.content}
                                          for m in p.messages], "example_id": p.id}
                              for p in pairs])
    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                      target_modules=list(config.target_modules), bias="none",
                      task_type="CAUSAL_LM")
    stats, actual = MasaStats(), {}
    trainer_cls = GRPOTrainer
    if config.masa_meta:
        rewards = [_recording(rewards[0], actual), *rewards[1:]]
        trainer_cls = _masa_trainer(GRPOTrainer, config, stats, actual)
    funcs = [_named(r) for r in rewards]
    last = get_last_checkpoint(str(ck)) if any(ck.iterdir()) else None
    clock = {"t0": time.perf_counter(), "c0": time.process_time(), "paused": 0.0,
             "cpu_paused": 0.0, "offset": _last_wall(last)}
    with warnings.catch_warnings():
        # transformers 5 renamed gradient checkpointing; TRL and PEFT still use the old name
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*",
                                category=FutureWarning)
        # TRL's checkpoints save the adapter with PEFT's vocabulary check, which cannot find
        # the config of a model dequantized from a GGUF file (the vocabulary is unchanged)
        warnings.filterwarnings("ignore", message="Could not find a config file",
                                category=UserWarning)
        args = _trl_args(config, ck, max_new_tokens, progress, [r.weight for r in rewards])
        trainer = trainer_cls(model=model, reward_funcs=funcs, args=args, train_dataset=data,
                              processing_class=tokenizer, peft_config=lora,
                              callbacks=[_step_hook(on_step, config.steps, clock)])
        if not progress:  # the Trainer prints every log dict when its bar is off
            trainer.remove_callback(PrinterCallback)
        trainer.train(resume_from_checkpoint=last)
    peft_model = trainer.model
    peft_model.eval()
    log = step_log(trainer.state.log_history)
    losses = [float(r["loss"]) for r in log]
    if any(not math.isfinite(x) for x in losses):
        raise TrainingError(f"grpo: the loss became non-finite ({losses}); lower the learning "
                            "rate. Nothing was saved and the previous adapter is unchanged.")
    seconds = clock["offset"] + time.perf_counter() - clock["t0"] - clock["paused"]
    cpu_seconds = time.process_time() - clock["c0"] - clock["cpu_paused"]
    steps = int(trainer.state.global_step)
    info = {"method": "grpo", "config": config.model_dump(mode="json"), "steps": steps,
            "losses": losses, "log": log, "seconds": seconds, "cpu_seconds": cpu_seconds,
            "n_examples": len(pairs), "resumed_from": last,
            "masa": stats.summary() if config.masa_meta else None, **(meta or {})}
    save_adapter_atomically(peft_model, out, info)
    return GRPOResult(adapter_dir=out, steps=steps, losses=losses, seconds=seconds,
                      seconds_per_step=seconds / max(1, steps), peak_rss_mb=peak_rss_mb(),
                      cpu_seconds=cpu_seconds, n_examples=len(pairs), model=peft_model,
                      log=log, resumed_from=last,
                      masa=stats.summary() if config.masa_meta else None)


def _named(source: RewardSource) -> Callable[..., list[float]]:
    """TRL names a reward function by its ``__name__``; a plain function carrying it."""

    def reward(prompts: list[Any], completions: list[Any], **kw: Any) -> list[float]:
        return source(prompts, completions, **kw)

    reward.__name__ = source.name
    return reward


def _last_wall(checkpoint: str | None) -> float:
    """The wall time already spent when ``checkpoint`` was written (0 for a fresh run)."""
    import json

    if not checkpoint:
        return 0.0
    p = Path(checkpoint) / "trainer_state.json"
    if not p.exists():
        return 0.0
    hist = json.loads(p.read_text()).get("log_history", [])
    walls = [h["wall_s"] for h in hist if "wall_s" in h]
    return float(walls[-1]) if walls else 0.0


def train_grpo_for_lm(lm: Any, pairs: list[ChatPair], config: GRPOConfig, out_dir: str | Path,
                      *, rewards: Sequence[RewardSource], max_new_tokens: int = 64,
                      settings: Any = None, init_adapter: str | Path | None = None,
                      progress: bool = True, on_step: Any = None,
                      log: Callable[[str], None] | None = None) -> GRPOResult:
    """GRPO for the model behind ``lm`` (its local weights, loaded with transformers); the
    adapter is exported to GGUF when the base is a GGUF file (as SFT's
    :func:`~metaskill.methods.sft.train_for_lm`). Its signature is a
    :data:`~metaskill.methods.sft.Trainer`'s, with the rewards bound first.

    Example:
        >>> train_grpo_for_lm(load_lm("local"), pairs, GRPOConfig(steps=3), "out",
        ...                   rewards=rewards)  # doctest: +SKIP
    """
    from metaskill.lm.adapters import base_model_path, export_gguf
    from metaskill.lm.hf import load_hf_model

    if init_adapter is not None:
        raise MethodError("grpo: continuing an existing adapter is not supported; it starts "
                          "a fresh LoRA (resume comes from its own checkpoints).")
    model, tok, info = load_hf_model(base_model_path(lm), settings=settings, log=log)
    meta = {"base": {"source": info["source"], "hash": info["hash"], "kind": info["kind"],
                     "model_type": getattr(model.config, "model_type", None)}}
    res = train_grpo(model, tok, pairs, rewards, config, out_dir, max_new_tokens=max_new_tokens,
                     on_step=on_step, progress=progress, meta=meta)
    if info["kind"] == "gguf":
        export_gguf(res.adapter_dir, base_gguf=info["source"])
    return res


# ---- the Method -----------------------------------------------------------------------------
class GRPO(Method):
    """GRPO on a LoRA adapter with the Task's Verifier as reward (MASA gates optional).

    The returned Solver is the input Solver on base + the trained adapter, as SFT's.

    Example:
        >>> GRPO(GRPOConfig(steps=3)).stage
        'parametric'
    """

    name: ClassVar[str] = "grpo"
    stage: ClassVar[str] = "parametric"
    Config: ClassVar[type[MethodConfig]] = GRPOConfig

    config: GRPOConfig

    def fit(self, solver: Solver, task: Task, train: list[Example],
            dev: list[Example] | None = None) -> Solver:
        """Train an adapter by GRPO on ``train``'s prompts; a new Solver that uses it."""
        check_trainable(solver.lm, self.resources)
        cfg = self.config
        need_answer = cfg.verifier_weight > 0
        data = [e for e in train if e.answer is not None or not need_answer]
        if not data:
            raise TrainingError("grpo: no training examples with answers for the Verifier.")
        if cfg.n_examples is not None:
            data = data[: cfg.n_examples]
        judge = (self.resources.teacher or solver.lm) if cfg.judge_weight > 0 else None
        ready_judge = self.resources.extra.get("judge") if cfg.judge_weight > 0 else None
        rewards = reward_sources(task, data, cfg, judge, ready_judge)
        max_new = answer_max_tokens(task, cfg.max_new_tokens)
        base_trainer = self.resources.trainer or functools.partial(
            train_grpo_for_lm, rewards=rewards, max_new_tokens=max_new,
            settings=self.resources.settings)
        results: list[Any] = []

        def trainer(*args: Any, **kw: Any) -> Any:  # keeps the result for the step log
            hook, inner = getattr(ready_judge, "on_step", None), kw.get("on_step")
            if callable(hook):  # an evolving judge's meta-reward step, after each step

                def on_step(st: StepInfo) -> bool | None:
                    hook(st.step)
                    return inner(st) if inner is not None else None

                kw["on_step"] = on_step
            results.append(base_trainer(*args, **kw))
            return results[-1]

        self.report.notes.update({
            "method": "grpo", "rewards": {r.name: r.weight for r in rewards},
            "data": f"GRPO on {len(data)} training prompts, groups of {cfg.group_size}",
            "max_new_tokens": max_new,
        })
        out = train_solver(self, solver, task, data, dev, cfg,
                           dataclasses.replace(self.resources, trainer=trainer))
        log = getattr(results[0], "log", []) if results else []
        self.report.notes["grpo_log"] = log
        self.report.notes["rewards_per_step"] = [r.get("reward") for r in log]
        self.report.notes["resumed_from"] = getattr(results[0], "resumed_from", None)
        self.report.notes["masa"] = getattr(results[0], "masa", None)
        return out


def reward_svg(notes: dict[str, Any], title: str = "grpo") -> str:
    """A GRPO fit's per-step mean reward and dev accuracy against training wall time, as an
    inline ``<svg>`` (matplotlib, the ``report`` extra).

    Args:
        notes: a grpo fit report's ``notes`` (``grpo_log``; ``curve`` when dev was scored).
        title: the plot's title.

    Raises:
        MethodError: the notes hold no step log.

    Example:
        >>> notes = {"grpo_log": [{"step": 1, "reward": 0.2, "wall_s": 3.0},
        ...                       {"step": 2, "reward": 0.5, "wall_s": 6.0}],
        ...          "curve": [{"step": 0, "accuracy": 0.3, "train_s": 0.0},
        ...                    {"step": 2, "accuracy": 0.4, "train_s": 6.0}]}
        >>> reward_svg(notes).startswith("<svg")
        True
    """
    from metaskill.eval.report import figure_svg

    log = [r for r in notes.get("grpo_log") or [] if r.get("reward") is not None]
    if not log:
        raise MethodError("grpo: this fit report has no per-step log (notes['grpo_log']); "
                          "was it written by grpo?")
    curve = notes.get("curve") or []

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        ax.plot([r.get("wall_s", r["step"]) for r in log], [r["reward"] for r in log], "o-",
                label="mean reward (train groups)")
        if curve:
            ax.plot([c["train_s"] for c in curve], [c["accuracy"] for c in curve], "s--",
                    label="dev accuracy")
        ax.set_xlabel("training wall time (s)")
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(title)
        ax.legend(loc="best")

    return figure_svg(draw, (6.0, 3.2), salt="grpo")
