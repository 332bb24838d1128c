"""LoRA supervised fine-tuning on chat-formatted examples (loss on the answer tokens only).

Algorithm (after Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"):

1. Render every training pair as the model's chat prompt (user turn, assistant opening)
   followed by the answer and the end-of-turn token. Labels are -100 on the prompt, so
   the loss is on the answer tokens (and the end-of-turn token) only.
2. Check the data before touching anything: an empty set, or a sequence longer than
   ``max_seq_len`` / the model's context window, stops with a one-line error.
3. Wrap the model with PEFT LoRA (rank ``r``, ``alpha``, target modules) -- or continue
   training an existing adapter (SELF accumulates rounds this way).
4. AdamW over shuffled batches (``random.Random(seed)``; ``torch.manual_seed(seed)``), for
   ``steps`` updates or ``epochs`` passes; a rich progress bar shows the loss. A non-finite
   loss stops training with an error.
5. Save the adapter (PEFT format plus ``metaskill_train.json``) to a temp folder beside the
   destination and move it into place only on success, so a failed run leaves the previous
   adapter untouched.

What we changed: nothing in the math; we add the data checks and the atomic save.

Example:
    >>> cfg = SFTConfig(rank=8, steps=30, learning_rate=2e-3)
    >>> cfg.lora_scale
    2.0
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
import shutil
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, Field, model_validator

from metaskill.core.errors import MethodError
from metaskill.core.types import Example, Message
from metaskill.eval.solver import Solver
from metaskill.methods.base import Method, MethodConfig, MethodResources
from metaskill.tasks.base import Task

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class TrainingError(MethodError):
    """Training stopped because of its data or its numbers; the previous adapter is kept."""


class SFTConfig(MethodConfig):
    """LoRA fine-tuning settings.

    Attributes:
        rank: LoRA rank r (>= 1).
        alpha: LoRA alpha; the update is scaled by alpha / rank.
        dropout: LoRA dropout (0 keeps training deterministic and is right for tiny data).
        target_modules: names of the linear layers that get adapters.
        learning_rate: AdamW learning rate (> 0).
        steps: number of optimizer updates (exactly one of ``steps`` and ``epochs``).
        epochs: number of passes over the data (may be fractional).
        batch_size: examples per update (>= 1).
        seed: seeds the data order and the LoRA initialisation.
        max_seq_len: longest allowed example in tokens; a longer one is an error, never
            silently truncated.
        weight_decay: AdamW weight decay.
        warmup_steps: linear learning-rate warm-up steps.
        grad_clip: gradient-norm clip (0 disables).
        threads: torch CPU threads (None keeps torch's default).
        n_examples: train on a seeded uniform sample of this many answered training
            examples (None: all of them); the uniform-SFT baseline of STAT.
        eval_every: as a Method, score ``curve_n`` dev examples every this many steps and
            after the last (the learning curve in the fit report); None: no curve.
        curve_n: dev examples scored at each point of the learning curve.
    """

    rank: int = Field(8, ge=1, le=1024)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGETS))
    learning_rate: float = Field(1e-3, gt=0, le=1.0)
    steps: int | None = Field(None, ge=1)
    epochs: float | None = Field(None, gt=0)
    batch_size: int = Field(4, ge=1)
    seed: int = 0
    max_seq_len: int = Field(256, ge=8)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float = Field(1.0, ge=0)
    threads: int | None = Field(None, ge=1)
    n_examples: int | None = Field(None, ge=1)
    eval_every: int | None = Field(None, ge=1)
    curve_n: int = Field(20, ge=1)

    @model_validator(mode="after")
    def _one_budget(self) -> SFTConfig:
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give either steps or epochs, not both")
        if self.steps is None and self.epochs is None:
            self.steps = 100
        if not self.target_modules:
            raise ValueError("target_modules must name at least one linear layer, "
                             "e.g. ['q_proj', 'v_proj']")
        return self

    @property
    def lora_scale(self) -> float:
        """alpha / rank: the factor applied to the low-rank update."""
        return self.alpha / self.rank


class ChatPair(BaseModel):
    """One training pair: the prompt messages and the assistant's answer."""

    id: str
    messages: list[Message]
    answer: str


def pairs_from_examples(task: Any, examples: Sequence[Example]) -> list[ChatPair]:
    """Turn a task's Examples into chat pairs: the user turn is the task's instructions
    and the rendered input, the assistant turn the reference answer.

    Examples without an answer are skipped (they cannot be trained on).
    """
    out = []
    for ex in examples:
        if ex.answer is None:
            continue
        out.append(ChatPair(id=ex.id, messages=[Message(role="user", content=user_text(task, ex))],
                            answer=str(ex.answer)))
    return out


def user_text(task: Any, example: Example) -> str:
    """The user message for an example: instructions (if any), a blank line, the input."""
    body = task.render(example) if task is not None else example.text
    instr = getattr(task, "instructions", "") if task is not None else ""
    return f"{instr}\n\n{body}" if instr else body


# ---- tokenisation -------------------------------------------------------------------------
@dataclass
class Encoded:
    """Token ids and labels of one pair (labels -100 on the prompt)."""

    id: str
    input_ids: list[int]
    labels: list[int]


def encode_pair(tokenizer: Any, pair: ChatPair) -> Encoded:
    """Tokenise a pair exactly as inference will see it: the prompt alone (as the chat
    template renders it with the assistant opening), then the answer and end-of-turn."""
    msgs = [{"role": m.role, "content": m.content} for m in pair.messages]
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(
            [*msgs, {"role": "assistant", "content": pair.answer}], tokenize=False
        )
        if not full.startswith(prompt):  # unusual template: fall back to prompt + answer
            full = prompt + pair.answer + (tokenizer.eos_token or "")
        rest = full[len(prompt):].rstrip("\n")
    else:
        prompt = "\n".join(m.content for m in pair.messages)
        rest = " " + pair.answer + (tokenizer.eos_token or "")
    p_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    a_ids = list(tokenizer(rest, add_special_tokens=False)["input_ids"])
    return Encoded(id=pair.id, input_ids=p_ids + a_ids, labels=[-100] * len(p_ids) + a_ids)


def check_data(encoded: list[Encoded], max_len: int, context_window: int | None) -> None:
    """Raise :class:`TrainingError` for an empty set or a too-long sequence."""
    if not encoded:
        raise TrainingError("no training examples (the curated set is empty); nothing was "
                            "trained and the previous adapter is unchanged.")
    limit = min(max_len, context_window) if context_window else max_len
    for e in encoded:
        if len(e.input_ids) > limit:
            raise TrainingError(
                f"example '{e.id}' is {len(e.input_ids)} tokens, longer than the limit of "
                f"{limit} (max_seq_len={max_len}, context window={context_window}); raise "
                "max_seq_len or shorten/drop the example. Nothing was trained."
            )
        if not any(t != -100 for t in e.labels):
            raise TrainingError(f"example '{e.id}' has an empty answer; drop it.")


# ---- training -----------------------------------------------------------------------------
@dataclass
class StepInfo:
    """Progress of one optimizer step, given to the ``on_step`` callback."""

    step: int
    total_steps: int
    loss: float
    elapsed_s: float  # training seconds so far, excluding time spent in callbacks
    model: Any = None
    cpu_s: float = 0.0  # process CPU seconds of training so far (robust on a shared machine)


@dataclass
class TrainResult:
    """What training produced."""

    adapter_dir: Path
    steps: int
    losses: list[float]
    seconds: float
    seconds_per_step: float
    peak_rss_mb: float
    cpu_seconds: float
    n_examples: int
    model: Any = field(default=None, repr=False)


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux ru_maxrss is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _batches(n: int, batch_size: int, total_steps: int, rng: random.Random) -> list[list[int]]:
    order: list[int] = []
    out = []
    for _ in range(total_steps):
        batch = []
        while len(batch) < min(batch_size, n):
            if not order:
                order = list(range(n))
                rng.shuffle(order)
            batch.append(order.pop())
        out.append(batch)
    return out


def _collate(items: list[Encoded], pad_id: int) -> dict[str, Any]:
    import torch

    width = max(len(e.input_ids) for e in items)
    ids = [e.input_ids + [pad_id] * (width - len(e.input_ids)) for e in items]
    labels = [e.labels + [-100] * (width - len(e.labels)) for e in items]
    mask = [[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in items]
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
            "attention_mask": torch.tensor(mask)}


def train_lora(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[ChatPair],
    config: SFTConfig,
    out_dir: str | Path,
    *,
    init_adapter: str | Path | None = None,
    on_step: Callable[[StepInfo], bool | None] | None = None,
    progress: bool = True,
    meta: dict[str, Any] | None = None,
) -> TrainResult:
    """Fine-tune a LoRA adapter on chat pairs and save it atomically to ``out_dir``.

    The model is wrapped with PEFT in place (call ``result.model.unload()`` to get the bare
    base model back).

    Args:
        model: an HF causal LM (e.g. ``HFLM(...).model``).
        tokenizer: its tokenizer.
        pairs: training pairs.
        config: the :class:`SFTConfig`.
        out_dir: where the PEFT adapter goes; an existing adapter there is replaced only
            when training succeeds.
        init_adapter: continue training this PEFT adapter instead of starting fresh.
        on_step: called after every step with a :class:`StepInfo` (e.g. to evaluate a
            learning curve); its time is not counted as training time, and returning True
            stops training after that step (the adapter is saved as usual).
        progress: show a rich progress bar with the loss.
        meta: extra JSON written into ``metaskill_train.json`` (base model hash ...).

    Returns:
        A :class:`TrainResult`.

    Raises:
        TrainingError: empty data, a too-long sequence, or a non-finite loss.

    Example:
        >>> res = train_lora(lm.model, lm.tokenizer, pairs, SFTConfig(steps=20),
        ...                  "adapter")  # doctest: +SKIP
    """
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    out = Path(out_dir)
    context_window = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    encoded = [encode_pair(tokenizer, p) for p in pairs]
    check_data(encoded, config.max_seq_len, context_window)
    if config.threads:
        torch.set_num_threads(config.threads)

    total = config.steps or max(
        1, math.ceil((config.epochs or 1.0) * len(encoded) / config.batch_size)
    )
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    with warnings.catch_warnings():
        # PEFT reads transformers' deprecated `is_gradient_checkpointing`; not ours to fix
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*",
                                category=FutureWarning)
        if init_adapter is not None:
            peft_model = PeftModel.from_pretrained(model, str(init_adapter),
                                                   is_trainable=True)
        else:
            lcfg = LoraConfig(
                r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                target_modules=list(config.target_modules), bias="none",
                task_type="CAUSAL_LM",
            )
            peft_model = get_peft_model(model, lcfg)
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)

    def lr_at(step: int) -> float:
        if config.warmup_steps and step < config.warmup_steps:
            return config.learning_rate * (step + 1) / config.warmup_steps
        return config.learning_rate

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(peft_model.parameters()).device
    plan = _batches(len(encoded), config.batch_size, total, rng)
    losses: list[float] = []
    t0 = time.perf_counter()
    paused = 0.0  # time spent in on_step (evaluation), not counted as training time
    c0, cpu_paused = time.process_time(), 0.0
    bar = loss_progress(progress)
    try:
        with bar:
            task_id = bar.add_task("LoRA training", total=total, loss=float("nan"))
            for step, idx in enumerate(plan):
                for g in opt.param_groups:
                    g["lr"] = lr_at(step)
                batch = {k: v.to(device) for k, v in
                         _collate([encoded[i] for i in idx], pad_id).items()}
                loss = peft_model(**batch).loss
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise TrainingError(
                        f"loss became {value} at step {step + 1}; lower the learning rate "
                        f"(now {config.learning_rate}) or check the data. Nothing was saved "
                        "and the previous adapter is unchanged."
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                opt.step()
                losses.append(value)
                bar.update(task_id, advance=1, loss=value)
                if on_step is not None:
                    t_cb, c_cb = time.perf_counter(), time.process_time()
                    peft_model.eval()
                    stop = on_step(StepInfo(step + 1, total, value, t_cb - t0 - paused,
                                            peft_model, c_cb - c0 - cpu_paused))
                    peft_model.train()
                    paused += time.perf_counter() - t_cb
                    cpu_paused += time.process_time() - c_cb
                    if stop:
                        total = step + 1
                        break
    finally:
        peft_model.eval()
    seconds = time.perf_counter() - t0 - paused
    cpu_seconds = time.process_time() - c0 - cpu_paused
    info = {
        "config": config.model_dump(mode="json"),
        "steps": total,
        "losses": losses,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "n_examples": len(encoded),
        "init_adapter": str(init_adapter) if init_adapter else None,
        **(meta or {}),
    }
    save_adapter_atomically(peft_model, out, info)
    return TrainResult(adapter_dir=out, steps=total, losses=losses, seconds=seconds,
                       seconds_per_step=seconds / max(1, total), peak_rss_mb=peak_rss_mb(),
                       cpu_seconds=cpu_seconds,
                       n_examples=len(encoded), model=peft_model)


def save_adapter_atomically(peft_model: Any, out: Path, info: dict[str, Any]) -> None:
    """Save a PEFT adapter plus ``metaskill_train.json`` into ``out``, replacing it only
    once the new one is completely written."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        # only LoRA weights are trained, so no embedding layers to save (this also skips
        # PEFT's vocabulary check, which warns for a model loaded from a GGUF file)
        peft_model.save_pretrained(str(tmp), save_embedding_layers=False)
        (tmp / "metaskill_train.json").write_text(json.dumps(info, indent=1))
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def loss_progress(enabled: bool) -> Any:
    """A rich progress bar with a ``loss`` field, shared by every training loop.

    Example:
        >>> bar = loss_progress(False)
        >>> bar.add_task("train", total=2, loss=0.0) == 0
        True
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TimeRemainingColumn(),
        disable=not enabled, transient=False,
    )


# ---- training for an LM's own weights ----------------------------------------------------
#: ``(lm, pairs, config, out_dir, *, init_adapter, progress, on_step, log) -> TrainResult``.
Trainer = Callable[..., TrainResult]


def train_for_lm(lm: Any, pairs: list[ChatPair], config: SFTConfig, out_dir: str | Path, *,
                 settings: Any = None, init_adapter: str | Path | None = None,
                 progress: bool = True, on_step: Any = None,
                 log: Callable[[str], None] | None = None) -> TrainResult:
    """Train a LoRA adapter for the model behind ``lm`` (its local weights, loaded with
    transformers) and export it to GGUF when the base is a GGUF file.

    Example:
        >>> train_for_lm(load_lm("local"), pairs, SFTConfig(steps=30), "out")  # doctest: +SKIP
    """
    from metaskill.lm.adapters import base_model_path, export_gguf
    from metaskill.lm.hf import load_hf_model

    base = base_model_path(lm)
    model, tok, info = load_hf_model(base, settings=settings, log=log)
    meta: dict[str, Any] = {"base": {"source": info["source"], "hash": info["hash"],
                                     "kind": info["kind"],
                                     "model_type": getattr(model.config, "model_type", None)}}
    res = train_lora(model, tok, pairs, config, out_dir, init_adapter=init_adapter,
                     meta=meta, progress=progress, on_step=on_step)
    if info["kind"] == "gguf":
        export_gguf(res.adapter_dir, base_gguf=info["source"])
    return res


def train_solver(method: Method, solver: Solver, task: Task, data: list[Example],
                 dev: list[Example] | None, config: SFTConfig, resources: Any) -> Solver:
    """Train an adapter for ``solver``'s LM on ``data``; the Solver on base + adapter.

    The shared second half of every parametric method (SFT, STAT): the training pairs go to
    ``WORK/data.jsonl`` and the adapter to ``WORK/adapter`` (``WORK`` is
    ``resources.work_dir_for(method, inputs)``), a learning curve on
    ``config.curve_n`` dev examples every ``config.eval_every`` steps, a stop at
    ``resources.deadline`` (the adapter is saved either way), and the fit report
    (adapter, steps, losses, curve, cost). The returned Solver's LM spec carries the
    adapter, so its JSON reloads base + adapter.
    """
    from metaskill.eval.harness import evaluate

    work = resources.work_dir_for(method.name, {"task": task.name, "lm": solver.lm.spec,
                                                "data": [e.id for e in data],
                                                "cfg": config.model_dump(mode="json")})
    out_dir = work / "adapter"
    pairs = pairs_from_examples(task, data)
    work.mkdir(parents=True, exist_ok=True)
    (work / "data.jsonl").write_text("".join(p.model_dump_json() + "\n" for p in pairs))
    trainer: Trainer = resources.trainer or functools.partial(train_for_lm,
                                                              settings=resources.settings)
    threads = getattr(resources.settings, "threads", None)
    if config.threads is None and threads is not None:
        config = config.model_copy(update={"threads": threads})
    curve_dev = list(dev or [])[: config.curve_n]
    say = resources.say

    def point(s: Solver) -> float:
        return evaluate(s, task, examples=curve_dev, progress=False).accuracy

    curve: list[dict[str, Any]] = []
    if config.eval_every and curve_dev:
        curve.append({"step": 0, "accuracy": point(solver), "train_s": 0.0})
        say(f"{method.name}: LoRA training, dev curve on {len(curve_dev)} examples: "
            f"step 0 {curve[0]['accuracy']:.0%}")

    def on_step(st: StepInfo) -> bool:
        stop = resources.past_deadline()
        last = st.step >= st.total_steps or stop
        if not (config.eval_every and curve_dev) or (st.step % config.eval_every and not last):
            return stop
        ck_lm = solver.lm.with_trained(st.model, work / "checkpoint")
        try:
            acc = point(solver.with_lm(ck_lm))
        finally:
            ck_lm.close()
        curve.append({"step": st.step, "accuracy": acc, "loss": round(st.loss, 4),
                      "train_s": round(st.elapsed_s, 1)})
        say(f"  step {st.step}: loss {st.loss:.3f}, dev {acc:.0%}")
        return stop

    res = trainer(solver.lm, pairs, config, out_dir,
                  progress=resources.progress, on_step=on_step, log=resources.log)
    method.report.notes.update({
        "adapter": str(res.adapter_dir), "steps": res.steps, "planned_steps": config.steps,
        "stopped_early": bool(config.steps and res.steps < config.steps),
        "losses": [round(x, 4) for x in res.losses],
        "final_loss": res.losses[-1] if res.losses else None,
        "seconds": round(res.seconds, 1), "seconds_per_step": round(res.seconds_per_step, 2),
        "peak_rss_mb": round(res.peak_rss_mb), "n_examples": len(data), "curve": curve,
        "curve_n": len(curve_dev),
        "data_skills": dict(Counter(sk for e in data for sk in e.skills)),
    })
    return solver.with_lm(solver.lm.with_adapter(res.adapter_dir))


def uniform_sample(train: list[Example], n: int, seed: int = 0) -> list[Example]:
    """The uniform-SFT baseline: ``n`` answered training examples drawn without skill
    targeting (with replacement only if ``n`` exceeds the pool)."""
    pool = [e for e in train if e.answer is not None]
    if not pool:
        raise MethodError("uniform SFT: no answered training examples.")
    rng = random.Random(seed)
    if n <= len(pool):
        return rng.sample(pool, n)
    return [rng.choice(pool) for _ in range(n)]


def check_trainable(lm: Any, resources: MethodResources) -> None:
    """Fail before any work when ``lm`` has no local weights to train (no custom trainer).

    Raises:
        MethodError: naming the spec forms that can be trained.
    """
    if resources.trainer is None:
        from metaskill.lm.adapters import base_model_path

        base_model_path(lm)


# ---- the Method -----------------------------------------------------------------------------
class SFT(Method):
    """Uniform LoRA SFT on a task's training answers: ``fit(solver, task, train, dev)``.

    The returned Solver has the same state as the input Solver but its LM serves
    base + the new adapter (``lm.with_adapter``: the GGUF export on llama.cpp, the PEFT
    folder on the HF backend); its JSON's model spec carries the adapter.

    Example:
        >>> SFT(SFTConfig(steps=10)).stage
        'parametric'
    """

    name: ClassVar[str] = "sft"
    stage: ClassVar[str] = "parametric"
    Config: ClassVar[type[MethodConfig]] = SFTConfig

    config: SFTConfig

    def fit(self, solver: Solver, task: Task, train: list[Example],
            dev: list[Example] | None = None) -> Solver:
        """Train an adapter on ``train`` (or a uniform sample of it) and return a new Solver
        that uses it."""
        check_trainable(solver.lm, self.resources)
        cfg = self.config
        data = [e for e in train if e.answer is not None]
        if not data:
            raise TrainingError("sft: no training examples with answers to train on.")
        if cfg.n_examples is not None:
            data = uniform_sample(data, cfg.n_examples, seed=cfg.seed)
        self.report.notes.update({"data": f"uniform SFT on {len(data)} training examples",
                                  "method": "sft"})
        return train_solver(self, solver, task, data, dev, cfg, self.resources)
