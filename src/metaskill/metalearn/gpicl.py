"""GPICL: a transformer meta-trained from scratch to learn in context.

Kirsch, Harrison, Sohl-Dickstein, Metz 2022, "General-Purpose In-Context Learning by
Meta-Learning Transformers" (arXiv 2212.04458). The paper's algorithm box, as we run it:

1. A *task* is a base dataset seen through a random linear projection of its inputs,
   ``x' = A x`` with ``A_ij ~ N(0, 1/raw_dim)``, and a random permutation of its labels,
   ``y' = perm[y]``. "Number of tasks" N is a finite set of such (A, perm) pairs drawn once
   at the start (task ids 0..N-1 of a seeded stream); each training sequence picks one of
   them uniformly at random, so small N can be memorised and large N cannot.
2. A sequence holds ``seq_len`` examples of one task. Token t is ``[x'_t, onehot(y'_{t-1})]``
   (a "no label yet" slot at t=0), so the label of each input arrives one step later.
3. A causal transformer reads the sequence and predicts ``y'_t`` at every position; the
   meta-training loss is the cross-entropy summed over all positions (no inner loop, no
   gradient at test time: learning happens in the activations).
4. Evaluation is in context: accuracy by position in the sequence on (a) the training
   tasks (memorisation shows as high accuracy from the first positions), (b) unseen
   projections of the same dataset (fresh task seeds), (c) unseen datasets. The paper's
   finding is a transition, as N grows, from memorising (train high, unseen at chance) to
   general in-context learning (unseen accuracy rises along the sequence).

What we changed for a 2-core CPU (the paper trains on accelerators):

* Base dataset: scikit-learn's ``digits`` (8x8 images, 64 features, 10 classes, ships
  offline) instead of MNIST (784 features); inputs are z-normalised per feature and
  projected to ``dim`` (default 64). The paper normalises per dataset across pixels; per
  feature is needed for the tabular unseen sets below.
* Unseen datasets: scikit-learn's ``wine`` (13 features, 3 classes) and
  ``breast_cancer`` (30 features, 2 classes) instead of FashionMNIST/KMNIST/CIFAR10; they
  are projected to the same ``dim`` and their labels are permuted into the 10 label slots
  (chance is 1/3 and 1/2, not 1/10). Digits' own samples are split 80/20 once (seeded):
  training sequences use the first part, every evaluation the held-out part.
* Model and budget: a pre-LayerNorm causal transformer of d_model 64, 4 layers, 4 heads
  (the paper uses d_model 256-512 and 4-8 layers), batch 32 sequences of 100 (the paper:
  128+ sequences of 100), a few thousand Adam steps per sweep point (the paper: hundreds of
  thousands). The paper notes that the plateau before generalisation lengthens with N and
  shortens with batch size, so a transition may need more steps than a CPU sweep affords;
  the sweep records what happened, not what should have.
* Sweep: N from 2^4 upwards at fixed model and steps; every point starts from the same
  initial weights (``seed``) and its results go to a JSON file as soon as it finishes.

Example:
    >>> cfg = GPICLConfig(steps=10)
    >>> t = sample_task(cfg, task_id=3, raw_dim=64, n_classes=10)
    >>> t.proj.shape, sorted(t.perm.tolist()) == list(range(10))
    ((64, 64), True)
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, model_validator

from metaskill.core.errors import MetaskillError
from metaskill.methods.sft import loss_progress

SCHEMA_VERSION = 1
N_CLASSES = 10  # label slots: digits has 10 classes; smaller unseen sets use a subset
UNSEEN_DATASETS = ("wine", "breast_cancer", "iris")
_STREAM = {"train": 0, "unseen": 1, "eval": 2, "batch": 3, "split": 4}


class GPICLError(MetaskillError):
    """A GPICL run that cannot go on as asked (bad sweep folder, missing library)."""


class GPICLConfig(BaseModel):
    """Meta-training settings (one sweep shares them; only the number of tasks varies).

    Attributes:
        dim: projected input size (every dataset is projected to it).
        seq_len: examples per sequence (the paper: 100).
        d_model: transformer width.
        n_layers: transformer blocks.
        n_heads: attention heads (must divide d_model).
        d_ff: feed-forward hidden size.
        batch_size: sequences per Adam step.
        steps: Adam steps per sweep point.
        learning_rate: Adam learning rate (after a linear warm-up).
        warmup_steps: linear warm-up steps.
        grad_clip: gradient-norm clip (0 disables).
        seed: seeds tasks, data order, the digits split and the initial weights.
        eval_sequences: sequences per evaluation set.
        unseen_datasets: scikit-learn datasets never trained on (wine, breast_cancer, iris).
        checkpoint_every: save a resumable checkpoint every this many steps.
        threads: torch CPU threads (None: torch's default).
    """

    dim: int = Field(64, ge=2)
    seq_len: int = Field(100, ge=2)
    d_model: int = Field(64, ge=8)
    n_layers: int = Field(4, ge=1)
    n_heads: int = Field(4, ge=1)
    d_ff: int = Field(256, ge=8)
    batch_size: int = Field(32, ge=1)
    steps: int = Field(3000, ge=1)
    learning_rate: float = Field(1e-3, gt=0, le=1.0)
    warmup_steps: int = Field(200, ge=0)
    grad_clip: float = Field(1.0, ge=0)
    seed: int = 0
    eval_sequences: int = Field(128, ge=1)
    unseen_datasets: list[str] = Field(default_factory=lambda: ["wine", "breast_cancer"])
    checkpoint_every: int = Field(500, ge=1)
    threads: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _check(self) -> GPICLConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must divide d_model ({self.d_model})")
        bad = [d for d in self.unseen_datasets if d not in UNSEEN_DATASETS]
        if bad:
            raise ValueError(f"unknown unseen dataset(s) {bad}; choose from "
                             f"{list(UNSEEN_DATASETS)}")
        return self

    def sweep_key(self) -> dict[str, Any]:
        """The settings a sweep's points must share (all but threads and checkpointing)."""
        return self.model_dump(mode="json", exclude={"threads", "checkpoint_every"})


# ---- 1. tasks: a projection and a label permutation, from a seeded stream ---------------
@dataclass(frozen=True)
class LinearTask:
    """One task: ``x' = proj @ x`` and ``y' = perm[y]``."""

    proj: np.ndarray  # (dim, raw_dim)
    perm: np.ndarray  # (N_CLASSES,): a permutation of the label slots


def sample_task(cfg: GPICLConfig, task_id: int, raw_dim: int, n_classes: int = N_CLASSES,
                stream: str = "train") -> LinearTask:
    """Task ``task_id`` of a stream: the same (seed, stream, id) always gives the same task,
    whatever else was sampled, so the N=16 tasks are the first 16 of the N=256 tasks.

    ``stream`` "train" holds the meta-training tasks, "unseen" the fresh evaluation tasks.

    Example:
        >>> cfg = GPICLConfig()
        >>> a, b = sample_task(cfg, 0, 64), sample_task(cfg, 0, 64)
        >>> bool((a.proj == b.proj).all() and (a.perm == b.perm).all())
        True
    """
    rng = np.random.default_rng([cfg.seed, _STREAM[stream], task_id])
    proj = rng.normal(0.0, 1.0 / math.sqrt(raw_dim), size=(cfg.dim, raw_dim))
    perm = rng.permutation(max(n_classes, N_CLASSES))
    return LinearTask(proj=proj.astype(np.float32), perm=perm.astype(np.int64))


# ---- the data: digits (split once) and the unseen datasets ------------------------------
@dataclass(frozen=True)
class Dataset:
    """Inputs (z-normalised per feature) and integer labels."""

    name: str
    x: np.ndarray
    y: np.ndarray

    @property
    def n_classes(self) -> int:
        return int(self.y.max()) + 1


@functools.cache
def _sklearn_dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn import datasets
    except ImportError:
        raise GPICLError("GPICL needs scikit-learn (pip install 'metaskill[embed]').") from None
    loader = {"digits": datasets.load_digits, "wine": datasets.load_wine,
              "breast_cancer": datasets.load_breast_cancer, "iris": datasets.load_iris}[name]
    d = loader()
    x = np.asarray(d.data, dtype=np.float64)
    x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
    return x.astype(np.float32), np.asarray(d.target, dtype=np.int64)


def load_dataset(name: str, cfg: GPICLConfig, part: str = "all") -> Dataset:
    """A dataset by name; for digits ``part`` is "train" (80%) or "test" (20%, seeded).

    Example:
        >>> load_dataset("digits", GPICLConfig(), "test").x.shape  # doctest: +SKIP
        (360, 64)
    """
    x, y = _sklearn_dataset(name)
    if part != "all":
        order = np.random.default_rng([cfg.seed, _STREAM["split"]]).permutation(len(y))
        cut = int(0.8 * len(y))
        idx = order[:cut] if part == "train" else order[cut:]
        x, y = x[idx], y[idx]
    return Dataset(name=f"{name}:{part}" if part != "all" else name, x=x, y=y)


# ---- 2. sequences: [x'_t, onehot(y'_{t-1})] -> y'_t --------------------------------------
def make_sequences(data: Dataset, tasks: Sequence[LinearTask], seq_len: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One sequence per task: inputs ``(B, T, dim + N_CLASSES + 1)`` and targets ``(B, T)``.

    Examples are drawn without replacement from ``data`` (with replacement only when the
    dataset is shorter than the sequence). The last ``N_CLASSES + 1`` input features are the
    previous label, one-hot; slot ``N_CLASSES`` means "no previous label" (position 0).

    Example:
        >>> cfg = GPICLConfig(dim=8, seq_len=5)
        >>> d = Dataset("toy", np.ones((6, 3), np.float32), np.arange(6) % 2)
        >>> x, y = make_sequences(d, [sample_task(cfg, 0, 3)], 5, np.random.default_rng(0))
        >>> x.shape, y.shape, float(x[0, 0, -1])
        ((1, 5, 19), (1, 5), 1.0)
    """
    n, b = len(data.y), len(tasks)
    replace = n < seq_len
    idx = np.stack([rng.choice(n, size=seq_len, replace=replace) for _ in range(b)])
    proj = np.stack([t.proj for t in tasks])  # (B, dim, raw)
    xs = np.einsum("bdr,btr->btd", proj, data.x[idx]).astype(np.float32)
    ys = np.stack([t.perm[data.y[row]] for t, row in zip(tasks, idx, strict=True)])
    prev = np.full((b, seq_len), N_CLASSES, dtype=np.int64)
    prev[:, 1:] = ys[:, :-1]
    onehot = np.eye(N_CLASSES + 1, dtype=np.float32)[prev]
    return np.concatenate([xs, onehot], axis=-1), ys


def training_batch(cfg: GPICLConfig, data: Dataset, n_tasks: int, step: int,
                   cache: dict[int, LinearTask]) -> tuple[np.ndarray, np.ndarray]:
    """The batch of step ``step`` (a pure function of seed, N and step, so a resumed run
    sees the same data): ``batch_size`` task ids uniform in ``[0, n_tasks)``."""
    rng = np.random.default_rng([cfg.seed, _STREAM["batch"], n_tasks, step])
    ids = rng.integers(0, n_tasks, size=cfg.batch_size)
    raw = data.x.shape[1]
    tasks = [cache.setdefault(int(i), sample_task(cfg, int(i), raw)) for i in ids]
    return make_sequences(data, tasks, cfg.seq_len, rng)


# ---- 3. the model: a small causal transformer --------------------------------------------
@functools.cache
def _model_class() -> type:
    import torch
    from torch import nn

    class ICLTransformer(nn.Module):
        """Linear input embedding + learned positions, pre-LN causal blocks, label head."""

        def __init__(self, in_dim: int, cfg: GPICLConfig) -> None:
            super().__init__()
            self.embed = nn.Linear(in_dim, cfg.d_model)
            self.pos = nn.Parameter(torch.randn(1, cfg.seq_len, cfg.d_model) * 0.02)
            layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, cfg.d_ff,
                                               dropout=0.0, activation="gelu",
                                               batch_first=True, norm_first=True)
            self.blocks = nn.TransformerEncoder(layer, cfg.n_layers,
                                                enable_nested_tensor=False)
            self.norm = nn.LayerNorm(cfg.d_model)
            self.head = nn.Linear(cfg.d_model, N_CLASSES)

        def forward(self, x: Any) -> Any:
            t = x.shape[1]
            mask = nn.Transformer.generate_square_subsequent_mask(t, device=x.device)
            h = self.embed(x) + self.pos[:, :t]
            h = self.blocks(h, mask=mask, is_causal=True)
            return self.head(self.norm(h))

    return ICLTransformer


def build_model(cfg: GPICLConfig) -> Any:
    """A freshly initialised model (the weights depend only on ``cfg.seed``).

    Example:
        >>> m = build_model(GPICLConfig(d_model=16, n_heads=2, n_layers=1))  # doctest: +SKIP
    """
    import torch

    torch.manual_seed(cfg.seed)
    return _model_class()(cfg.dim + N_CLASSES + 1, cfg)


# ---- evaluation: accuracy by position ---------------------------------------------------
def evaluate_in_context(model: Any, cfg: GPICLConfig, data: Dataset, task_ids: Sequence[int],
                        stream: str) -> dict[str, Any]:
    """In-context accuracy of ``model`` on one sequence per task id.

    Returns ``accuracy`` (all positions), ``late_accuracy`` (second half of the sequence,
    after ``seq_len // 2`` labelled examples), ``by_position`` (mean accuracy at each
    position), ``loss``, ``chance`` (1 / classes) and ``n_sequences``.
    """
    import torch

    rng = np.random.default_rng([cfg.seed, _STREAM["eval"], len(task_ids), data.y.size])
    tasks = [sample_task(cfg, int(i), data.x.shape[1], data.n_classes, stream)
             for i in task_ids]
    correct, losses = [], []
    model.eval()
    with torch.no_grad():
        for lo in range(0, len(tasks), 64):
            x, y = make_sequences(data, tasks[lo:lo + 64], cfg.seq_len, rng)
            logits = model(torch.from_numpy(x))
            target = torch.from_numpy(y)
            losses.append(float(torch.nn.functional.cross_entropy(
                logits.reshape(-1, N_CLASSES), target.reshape(-1))) * len(y))
            correct.append((logits.argmax(-1) == target).float().numpy())
    acc = np.concatenate(correct)  # (B, T)
    half = cfg.seq_len // 2
    return {"accuracy": float(acc.mean()), "late_accuracy": float(acc[:, half:].mean()),
            "first_accuracy": float(acc[:, 0].mean()),
            "by_position": [round(float(v), 4) for v in acc.mean(0)],
            "loss": sum(losses) / len(tasks), "chance": 1.0 / data.n_classes,
            "n_sequences": len(tasks)}


def evaluate_point(model: Any, cfg: GPICLConfig, n_tasks: int) -> dict[str, Any]:
    """Seen tasks, unseen projections of digits, and each unseen dataset (held-out
    digits inputs throughout; the unseen datasets were never trained on)."""
    test = load_dataset("digits", cfg, "test")
    rng = np.random.default_rng([cfg.seed, _STREAM["eval"], n_tasks])
    seen = rng.integers(0, n_tasks, size=cfg.eval_sequences)
    fresh = np.arange(cfg.eval_sequences)
    out = {"train_tasks": evaluate_in_context(model, cfg, test, seen, "train"),
           "unseen_tasks": evaluate_in_context(model, cfg, test, fresh, "unseen")}
    for name in cfg.unseen_datasets:
        out[f"unseen_dataset:{name}"] = evaluate_in_context(
            model, cfg, load_dataset(name, cfg), fresh, "unseen")
    return out


# ---- training one sweep point (resumable) ------------------------------------------------
def _save_atomically(obj: Any, path: Path) -> None:
    import torch

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def meta_train(cfg: GPICLConfig, n_tasks: int, *, checkpoint: Path | None = None,
               progress: bool = True,
               on_step: Callable[[int, float], None] | None = None) -> tuple[Any, dict[str, Any]]:
    """Meta-train a fresh model on ``n_tasks`` training tasks for ``cfg.steps`` steps.

    With ``checkpoint``, the model, optimiser and loss history are saved there every
    ``cfg.checkpoint_every`` steps and at the end, and a run finds and continues it.

    Returns:
        ``(model, info)`` with info ``losses`` (mean per 50 steps), ``seconds``, ``steps``.

    Example:
        >>> model, info = meta_train(GPICLConfig(steps=5), n_tasks=16)  # doctest: +SKIP
    """
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = load_dataset("digits", cfg, "train")
    model = build_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    start, losses, seconds = 0, [], 0.0
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        if state["config"] != cfg.sweep_key() or state["n_tasks"] != n_tasks:
            raise GPICLError(f"checkpoint '{checkpoint}' belongs to another run; delete it "
                             "or use another --out.")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start, losses, seconds = state["step"], state["losses"], state["seconds"]
    cache: dict[int, LinearTask] = {}
    window: list[float] = []
    t0 = time.perf_counter() - seconds
    bar = loss_progress(progress)

    def save(step: int) -> None:
        if checkpoint is not None:
            _save_atomically({"config": cfg.sweep_key(), "n_tasks": n_tasks, "step": step,
                              "model": model.state_dict(), "opt": opt.state_dict(),
                              "losses": losses, "seconds": time.perf_counter() - t0},
                             checkpoint)

    with bar:
        tid = bar.add_task(f"GPICL N={n_tasks}", total=cfg.steps, completed=start,
                           loss=float("nan"))
        model.train()
        for step in range(start, cfg.steps):
            for g in opt.param_groups:
                g["lr"] = cfg.learning_rate * min(1.0, (step + 1) / max(1, cfg.warmup_steps))
            x, y = training_batch(cfg, data, n_tasks, step, cache)
            logits = model(torch.from_numpy(x))
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, N_CLASSES),
                                                     torch.from_numpy(y).reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            value = float(loss.detach())
            window.append(value)
            if len(window) == 50 or step + 1 == cfg.steps:
                losses.append(round(sum(window) / len(window), 4))
                window = []
            bar.update(tid, advance=1, loss=value)
            if on_step is not None:
                on_step(step + 1, value)
            if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
                save(step + 1)
    save(cfg.steps)
    model.eval()
    return model, {"losses": losses, "seconds": round(time.perf_counter() - t0, 1),
                   "steps": cfg.steps}


# ---- the sweep over the number of tasks ----------------------------------------------------
def read_sweep(out_dir: str | Path) -> dict[str, Any] | None:
    """The sweep file ``OUT/sweep.json`` (None if absent)."""
    path = Path(out_dir) / "sweep.json"
    if not path.exists():
        return None
    from metaskill.core.readers import read_json

    data = read_json(path, "GPICL sweep", expect=dict)
    if data.get("schema_version") != SCHEMA_VERSION:
        raise GPICLError(f"'{path}' has schema version {data.get('schema_version')}, "
                         f"this code writes {SCHEMA_VERSION}; use another --out.")
    return data


def _write_sweep(out_dir: Path, data: dict[str, Any]) -> None:
    path = out_dir / "sweep.json"
    tmp = path.with_name(f".sweep.json.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def run_sweep(task_counts: Sequence[int], cfg: GPICLConfig, out_dir: str | Path, *,
              progress: bool = True, log: Callable[[str], None] | None = None,
              plot: bool = True) -> dict[str, Any]:
    """Meta-train and evaluate one model per number of tasks; resumable.

    Finished points are kept in ``OUT/sweep.json`` (schema-versioned JSON) and skipped on
    a rerun; an unfinished point continues from ``OUT/ckpt_N<n>.pt``. A sweep folder
    refuses points with different settings. With ``plot``, ``OUT/sweep.svg`` is redrawn
    after every point.

    Example:
        >>> run_sweep([16, 256], GPICLConfig(steps=200), "runs/gpicl")  # doctest: +SKIP
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = log or (lambda _line: None)
    data = read_sweep(out) or {"schema_version": SCHEMA_VERSION, "method": "gpicl",
                               "config": cfg.sweep_key(), "points": []}
    if data["config"] != cfg.sweep_key():
        diff = sorted(k for k in cfg.sweep_key() if data["config"].get(k) != cfg.sweep_key()[k])
        raise GPICLError(f"'{out}' holds a sweep with different {', '.join(diff)}; use "
                         "another --out or the same settings.")
    done = {p["n_tasks"] for p in data["points"]}
    for n in sorted(set(task_counts)):
        if n < 1:
            raise GPICLError(f"the number of tasks must be >= 1, got {n}.")
        if n in done:
            say(f"N={n}: done before, kept")
            continue
        ckpt = out / f"ckpt_N{n}.pt"
        model, info = meta_train(cfg, n, checkpoint=ckpt, progress=progress)
        point = {"n_tasks": n, **info, "eval": evaluate_point(model, cfg, n)}
        data["points"] = sorted([*data["points"], point], key=lambda p: p["n_tasks"])
        _write_sweep(out, data)
        ev = point["eval"]
        say(f"N={n}: train tasks {ev['train_tasks']['late_accuracy']:.1%}, unseen tasks "
            f"{ev['unseen_tasks']['late_accuracy']:.1%} (late positions), "
            f"{info['seconds']:.0f} s")
        if plot:
            plot_sweep(data, out / "sweep.svg")
    return data


def plot_sweep(data: dict[str, Any], path: str | Path) -> Path:
    """Accuracy on the training tasks and on unseen tasks/datasets against the number of
    training tasks (log2 axis; late-position accuracy, chance as dotted lines), as SVG.

    Example:
        >>> plot_sweep(read_sweep("runs/gpicl"), "runs/gpicl/sweep.svg")  # doctest: +SKIP
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = data["points"]
    ns = [p["n_tasks"] for p in points]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    keys = [k for k in (points[0]["eval"] if points else {})]
    for key in keys:
        ys = [p["eval"][key]["late_accuracy"] for p in points]
        ax.plot(ns, ys, marker="o", label=key.replace("_", " "))
        chance = points[0]["eval"][key]["chance"]
        ax.axhline(chance, ls=":", lw=0.8, color=ax.lines[-1].get_color())
    ax.set_xscale("log", base=2)
    ax.set_xlabel("number of meta-training tasks N")
    ax.set_ylabel(f"accuracy, positions {data['config']['seq_len'] // 2}+ of the sequence")
    ax.set_ylim(0, 1.02)
    ax.set_title("GPICL on digits: memorisation -> in-context learning?")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, format="svg")
    plt.close(fig)
    return out
