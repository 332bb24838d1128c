"""Skill localization by grafting: which few fine-tuned parameters carry the new skill.

Panigrahi, Saunshi, Zhao, Arora 2023, "Task-Specific Skill Localization in Fine-tuned
Language Models" (ICML 2023, arXiv 2302.06600). The algorithm box, as we run it:

1. ``delta = theta_ft - theta_pre`` for every parameter tensor of the model (a merged LoRA
   changes only the adapted linear layers; a full fine-tune may change every tensor).
2. For a sparsity ``s``, the graft has exactly ``k = round(s * n_params)`` entries
   (``n_params``: all the model's parameters, tied tensors counted once).
3. Initial region ``gamma_base``: the ``k`` entries of largest ``|delta|`` ("highest
   movement").
4. Relaxed mask ``gamma = gamma_base + (1 - 2 gamma_base) * sigmoid(S - b)`` with ``S``
   drawn uniform in [0, 1) and a sigmoid bias ``b``, so gamma starts close to gamma_base.
5. For ``steps`` steps: set the model to ``theta_pre + gamma * delta``, take the task loss on
   a batch of training examples (answer tokens only, as SFT trains), and move ``S`` down
   the gradient ``dL/dS = dL/dtheta * delta * (1 - 2 gamma_base) * sigmoid'(S - b)``.
6. Binary mask: the paper rounds gamma; we keep exactly the ``k`` entries of largest gamma
   (ties broken by ``|delta|``) so the sparsity is exact.
7. Graft ``theta_pre + mask * delta``; on dev, the share of the fine-tuning gain it
   recovers is ``(acc_graft - acc_base) / (acc_ft - acc_base)``. Dev accuracy is greedy
   exact match by default (``metric``): greedy decoding would write exactly the reference
   answer and stop, checked teacher-forced in one forward pass (the harness's generation
   and Verifier, ``metric="generate"``, gives the task's own score, ~50x slower on CPU).
8. Two tasks' masks at the same sparsity overlap by their Jaccard index (the paper: the
   regions of different tasks are nearly disjoint; random masks overlap by about
   ``k / (2 n - k)``).

What we changed: the exact top-k of step 6; the step of step 5 is divided by an estimate of
the k-th largest ``|dL/dS|`` (the paper uses a raw learning rate of order 1e7 tuned per
model), so ``learning_rate`` is in units of S and the same value works across models and
sparsities; no L1 term (the top-k fixes the size); the greedy-match metric of step 7 (the
paper scores classification heads, where one forward pass is the whole prediction).
Everything runs on CPU in fp32 with the embedded SmolLM2-135M (its HF copy of the Q4_1
GGUF). A grafted model saves as an HF folder and, for a GGUF base, as a GGUF model (the
base's F32-dequantized file with the grafted tensors written in, so llama.cpp and
transformers hold the same weights), plus a zero-shot Solver JSON for
``metaskill serve --solver`` and ``eval``.

Example:
    >>> LocalizeConfig(sparsities=[1e-4]).sparsities
    [0.0001]
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, field_validator

from metaskill.core.errors import MetaskillError
from metaskill.methods.sft import loss_progress

SCHEMA_VERSION = 1


class LocalizeError(MetaskillError):
    """Localization cannot go on as asked (mismatched models, bad mask, no gain)."""


class LocalizeConfig(BaseModel):
    """Grafting settings.

    Attributes:
        sparsities: fractions of all parameters in the graft (each in (0, 1]).
        steps: mask-optimisation steps per sparsity (0: the top-|delta| mask only).
        batch_size: training examples per step.
        n_train: training examples the mask loss draws from.
        learning_rate: step on S, in units of S per step for a k-th-largest gradient.
        sigmoid_bias: b in sigmoid(S - b); larger keeps gamma closer to gamma_base.
        seed: seeds S, the batches and the example sample.
        max_seq_len: longest training example in tokens (longer ones are dropped).
        baseline_topk: also score the top-|delta| mask (before optimisation) per sparsity.
        metric: how dev accuracy is measured. "greedy_match": an example is right when
            greedy decoding would produce exactly its reference answer and the end of turn
            (checked teacher-forced in one batched forward pass: argmax = reference at
            every answer token); "generate": the harness generates and the task's
            Verifier scores (exact, but ~50x slower on CPU).
        threads: torch CPU threads (None: torch's default).
    """

    sparsities: list[float] = Field(default_factory=lambda: [1e-5, 1e-4, 1e-3, 1e-2])
    steps: int = Field(20, ge=0)
    batch_size: int = Field(8, ge=1)
    n_train: int = Field(128, ge=1)
    learning_rate: float = Field(1.0, gt=0)
    sigmoid_bias: float = Field(3.0, ge=0)
    seed: int = 0
    max_seq_len: int = Field(256, ge=8)
    baseline_topk: bool = True
    metric: Literal["greedy_match", "generate"] = "greedy_match"
    threads: int | None = Field(None, ge=1)

    @field_validator("sparsities")
    @classmethod
    def _in_range(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("give at least one sparsity, e.g. [1e-4]")
        bad = [s for s in v if not 0 < s <= 1]
        if bad:
            raise ValueError(f"sparsities must be in (0, 1], got {bad} (1e-4 = 0.01%)")
        return sorted(set(v))


# ---- masks --------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Mask:
    """A binary mask over a model's parameters as sorted flat indices into the
    concatenation of its tensors (in ``names`` order, each flattened row-major)."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    indices: np.ndarray  # int64, sorted, unique

    @property
    def n_params(self) -> int:
        return int(sum(math.prod(s) for s in self.shapes))

    @property
    def k(self) -> int:
        return int(self.indices.size)

    def per_tensor(self) -> dict[str, np.ndarray]:
        """Flat indices within each tensor that holds any masked entry."""
        out, lo = {}, 0
        for name, shape in zip(self.names, self.shapes, strict=True):
            hi = lo + math.prod(shape)
            a, b = np.searchsorted(self.indices, [lo, hi])
            if b > a:
                out[name] = self.indices[a:b] - lo
            lo = hi
        return out

    def save(self, path: str | Path) -> Path:
        """Write ``.npz`` (indices) with the names and shapes as JSON inside."""
        p = Path(path)
        meta = json.dumps({"schema_version": SCHEMA_VERSION, "names": list(self.names),
                           "shapes": [list(s) for s in self.shapes]})
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}.npz")
        np.savez_compressed(tmp, indices=self.indices, meta=np.array(meta))
        os.replace(tmp, p)
        return p

    @classmethod
    def load(cls, path: str | Path) -> Mask:
        """Read a mask written by :meth:`save`."""
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            return cls(tuple(meta["names"]), tuple(tuple(s) for s in meta["shapes"]),
                       z["indices"].astype(np.int64))


def n_for(sparsity: float, n_params: int) -> int:
    """Entries in a graft of ``sparsity`` over ``n_params`` parameters.

    Example:
        >>> n_for(1e-4, 134_515_008)
        13452
    """
    return round(sparsity * n_params)


def jaccard(a: Mask, b: Mask) -> float:
    """|a & b| / |a | b| of two masks over the same parameters (1.0 for two empty masks).

    Example:
        >>> m = lambda *i: Mask(("w",), ((10,),), np.array(i, dtype=np.int64))
        >>> jaccard(m(1, 2, 3), m(2, 3, 4))
        0.5
    """
    if a.names != b.names or a.shapes != b.shapes:
        raise LocalizeError("the two masks cover different parameters (different models); "
                            "compare masks of fine-tunes of the same base model.")
    union = np.union1d(a.indices, b.indices).size
    return 1.0 if union == 0 else np.intersect1d(a.indices, b.indices).size / union


def random_jaccard(k: int, n: int) -> float:
    """Expected Jaccard index of two independent random k-subsets of n (about k/(2n-k)).

    Example:
        >>> round(random_jaccard(10, 1000), 5)
        0.00503
    """
    if k == 0:
        return 1.0
    inter = k * k / n
    return inter / (2 * k - inter)


# ---- 1. parameters and deltas -------------------------------------------------------------
def param_table(model: Any) -> dict[str, Any]:
    """``name -> tensor`` of a model's parameters in a fixed order (tied ones once)."""
    return dict(model.named_parameters())


def deltas(base: Any, finetuned: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(base_params, delta)``: detached copies of the base tensors and ft - base.

    Raises:
        LocalizeError: the models' parameter names or shapes differ.
    """
    import torch

    pb, pf = param_table(base), param_table(finetuned)
    if list(pb) != list(pf) or any(pb[n].shape != pf[n].shape for n in pb):
        raise LocalizeError("base and fine-tuned models have different parameters; the "
                            "fine-tune must be of this base model (same architecture).")
    with torch.no_grad():
        theta = {n: p.detach().float() for n, p in pb.items()}  # the base is never written
        delta = {n: pf[n].detach().float() - theta[n] for n in pb}
    return theta, delta


def _topk_mask(scores: dict[str, Any], k: int, names: Sequence[str],
               shapes: Sequence[tuple[int, ...]]) -> Mask:
    """The ``k`` largest entries of ``scores`` over all tensors, exactly ``k`` of them."""
    import torch

    flat = torch.cat([scores[n].reshape(-1) for n in names])
    if k > flat.numel():
        raise LocalizeError(f"asked for {k} entries but the model has {flat.numel()}.")
    idx = (torch.topk(flat, k, sorted=False).indices if k else torch.empty(0, dtype=torch.long))
    return Mask(tuple(names), tuple(shapes), np.sort(idx.numpy().astype(np.int64)))


def top_movement(delta: dict[str, Any], k: int) -> Mask:
    """Step 3: the ``k`` entries of largest ``|delta|``.

    Example:
        >>> import torch
        >>> top_movement({"w": torch.tensor([0.1, -3.0, 2.0])}, 2).indices.tolist()
        [1, 2]
    """
    names = list(delta)
    return _topk_mask({n: d.abs() for n, d in delta.items()}, k, names,
                      [tuple(delta[n].shape) for n in names])


def mask_tensors(mask: Mask, like: dict[str, Any]) -> dict[str, Any]:
    """The mask as 0/1 float tensors shaped like ``like``'s tensors."""
    import torch

    out = {n: torch.zeros_like(t) for n, t in like.items()}
    for name, idx in mask.per_tensor().items():
        out[name].view(-1)[torch.from_numpy(idx)] = 1.0
    return out


# ---- 7. grafting --------------------------------------------------------------------------
def graft_into(model: Any, theta: dict[str, Any], delta: dict[str, Any],
               mask: Mask | dict[str, Any]) -> Any:
    """Set ``model``'s parameters to ``theta + mask * delta`` in place; returns it.

    ``mask`` is a :class:`Mask` or a dict of (relaxed) mask tensors.

    Example:
        >>> graft_into(model, theta, delta, top_movement(delta, 100))  # doctest: +SKIP
    """
    import torch

    m = mask_tensors(mask, delta) if isinstance(mask, Mask) else mask
    params = param_table(model)
    with torch.no_grad():
        for n, p in params.items():
            p.copy_((theta[n] + m[n] * delta[n]).to(p.dtype))
    return model


# ---- 4-6. learning the mask ---------------------------------------------------------------
@dataclass
class MaskResult:
    """A learned mask and how its optimisation went."""

    mask: Mask
    initial: Mask
    losses: list[float]
    seconds: float
    kept_from_initial: float  # share of the final mask's entries that were in gamma_base


def learn_mask(model: Any, theta: dict[str, Any], delta: dict[str, Any], k: int,
               batches: Callable[[int], dict[str, Any]], cfg: LocalizeConfig, *,
               progress: bool = True) -> MaskResult:
    """Optimise the relaxed mask for ``cfg.steps`` steps and keep its top ``k`` entries.

    Args:
        model: the network whose parameters are overwritten (any torch module returning
            ``.loss`` when called with a batch).
        theta: base parameters; delta: ``theta_ft - theta`` (from :func:`deltas`).
        k: entries in the final mask.
        batches: ``step -> batch`` (keyword arguments of ``model``).
        cfg: the :class:`LocalizeConfig`.
    """
    import torch

    names = list(delta)
    initial = top_movement(delta, k)
    base = mask_tensors(initial, delta)
    gen = torch.Generator().manual_seed(cfg.seed)
    s = {n: torch.rand(d.shape, generator=gen) for n, d in delta.items()}
    params = param_table(model)
    for p in params.values():  # PEFT's merge_and_unload leaves the weights frozen
        p.requires_grad_(True)
    losses: list[float] = []
    t0 = time.perf_counter()

    def gamma() -> dict[str, Any]:
        return {n: base[n] + (1 - 2 * base[n]) * torch.sigmoid(s[n] - cfg.sigmoid_bias)
                for n in names}

    model.eval()  # no dropout; gradients still flow
    bar = loss_progress(progress)
    with bar:
        tid = bar.add_task(f"mask k={k}", total=cfg.steps, loss=float("nan"))
        for step in range(cfg.steps):
            graft_into(model, theta, delta, gamma())
            for p in params.values():
                p.grad = None
            loss = model(**batches(step)).loss
            loss.backward()
            with torch.no_grad():
                grads = {}
                for n in names:
                    sig = torch.sigmoid(s[n] - cfg.sigmoid_bias)
                    g = params[n].grad
                    g = torch.zeros_like(s[n]) if g is None else g.float()
                    grads[n] = g * delta[n] * (1 - 2 * base[n]) * sig * (1 - sig)
                scale = _kth_largest_abs(grads, k, gen)
                for n in names:
                    s[n] -= cfg.learning_rate * grads[n] / scale
            value = float(loss.detach())
            losses.append(round(value, 4))
            bar.update(tid, advance=1, loss=value)
    for p in params.values():
        p.grad = None
    with torch.no_grad():
        g = gamma()
        top = max(float(d.abs().max()) for d in delta.values()) or 1.0
        scores = {n: g[n] + 1e-6 * delta[n].abs() / top for n in names}  # ties -> |delta|
    mask = _topk_mask(scores, k, names, [tuple(delta[n].shape) for n in names])
    kept = (np.intersect1d(mask.indices, initial.indices).size / k) if k else 1.0
    return MaskResult(mask=mask, initial=initial, losses=losses,
                      seconds=round(time.perf_counter() - t0, 1), kept_from_initial=kept)


def _kth_largest_abs(grads: dict[str, Any], k: int, gen: Any, sample: int = 1 << 20) -> float:
    """An estimate of the k-th largest ``|g|`` over all tensors (from a uniform sample of
    entries), floored so a zero gradient does not divide by zero."""
    import torch

    flat = torch.cat([g.reshape(-1) for g in grads.values()]).abs()
    n = flat.numel()
    if n > sample:
        flat = flat[torch.randint(0, n, (sample,), generator=gen)]
    q = 1.0 - max(k, 1) / n
    v = float(torch.quantile(flat, min(max(q, 0.0), 1.0))) if flat.numel() else 0.0
    return max(v, float(flat.max()) * 1e-3, 1e-30)


# ---- the language-model side: models, batches, dev accuracy -------------------------------
def resolve_base(spec: str) -> str:
    """The model path behind a base spec: ``local`` (the embedded SmolLM2 GGUF),
    ``gguf:PATH``, ``hf:PATH`` or a plain path."""
    from metaskill.lm.files import embedded_gguf_path

    if spec in ("local", "gguf:local", "hf:local"):
        return str(embedded_gguf_path())
    for prefix in ("gguf:", "hf:"):
        if spec.startswith(prefix):
            return spec[len(prefix):]
    return spec


def resolve_finetuned(path: str | Path) -> tuple[str, Path]:
    """``(kind, path)`` of a fine-tune: ``("adapter", DIR)`` for a PEFT LoRA folder,
    ``("full", DIR)`` for an HF model folder; a ``metaskill train`` run folder is followed
    to its adapter (``scores.json``'s adapter spec).

    Raises:
        LocalizeError: the folder is none of these.
    """
    from metaskill.lm.adapters import split_adapter

    p = Path(path).expanduser()
    if p.suffix == ".gguf" and (p.parent / "adapter_config.json").exists():
        p = p.parent  # the GGUF export inside a PEFT folder (a train run's adapter spec)
    if (p / "adapter_config.json").exists():
        return "adapter", p
    if (p / "config.json").exists():
        return "full", p
    if (p / "scores.json").exists():
        from metaskill.core.readers import read_json

        spec = read_json(p / "scores.json", "train scores", expect=dict).get("adapter_spec")
        adapter = split_adapter(str(spec or ""))[1]
        if adapter:
            return resolve_finetuned(adapter)
    raise LocalizeError(f"'{p}' is not a fine-tuned model: give a PEFT adapter folder, an HF "
                        "model folder or a `metaskill train` run folder.")


def load_pair(base_spec: str, finetuned: str | Path, *, settings: Any = None,
              log: Callable[[str], None] | None = None) -> tuple[Any, Any, Any, dict[str, Any]]:
    """``(base_model, finetuned_model, tokenizer, info)``; a LoRA adapter is merged into a
    second copy of the base (``merge_and_unload``)."""
    from metaskill.lm.hf import load_hf_model

    path = resolve_base(base_spec)
    base, tok, info = load_hf_model(path, settings=settings, log=log)
    kind, ft_path = resolve_finetuned(finetuned)
    if kind == "adapter":
        import warnings

        from peft import PeftModel

        second, _tok, _info = load_hf_model(path, settings=settings)
        with warnings.catch_warnings():  # PEFT reads a deprecated transformers attribute
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*",
                                    category=FutureWarning)
            ft = PeftModel.from_pretrained(second, str(ft_path)).merge_and_unload()
    else:
        ft, _tok, _info = load_hf_model(ft_path, settings=settings)
    ft.eval()
    info = {**info, "finetuned": str(ft_path), "finetuned_kind": kind}
    return base, ft, tok, info


def task_batches(tokenizer: Any, task: Any, examples: Sequence[Any],
                 cfg: LocalizeConfig) -> Callable[[int], dict[str, Any]]:
    """``step -> batch`` of chat-formatted training pairs (loss on the answer tokens, as
    :mod:`metaskill.methods.sft` trains), seeded by ``cfg.seed`` and the step."""
    import torch

    from metaskill.methods.sft import encode_pair, pairs_from_examples

    enc = [e for e in (encode_pair(tokenizer, p) for p in pairs_from_examples(task, examples))
           if len(e.input_ids) <= cfg.max_seq_len]
    if not enc:
        raise LocalizeError(f"task '{task.name}' has no answered training examples within "
                            f"{cfg.max_seq_len} tokens to learn the mask from.")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def batch(step: int) -> dict[str, Any]:
        rng = random.Random(cfg.seed * 100_003 + step)
        items = rng.sample(enc, min(cfg.batch_size, len(enc)))
        w = max(len(e.input_ids) for e in items)
        return {"input_ids": torch.tensor([e.input_ids + [pad] * (w - len(e.input_ids))
                                           for e in items]),
                "labels": torch.tensor([e.labels + [-100] * (w - len(e.labels))
                                        for e in items]),
                "attention_mask": torch.tensor([[1] * len(e.input_ids)
                                                + [0] * (w - len(e.input_ids))
                                                for e in items])}

    return batch


def dev_accuracy(model: Any, tokenizer: Any, base_path: str, task: Any,
                 dev: Sequence[Any], *, max_tokens: int = 64, progress: bool = True) -> float:
    """Zero-shot accuracy of an in-memory HF model on ``dev`` (the harness, no cache)."""
    from metaskill.eval.harness import evaluate
    from metaskill.eval.solvers import ZeroShot
    from metaskill.lm.hf import HFLM

    lm = HFLM(base_path, model=model, tokenizer=tokenizer, cache=None)
    run = evaluate(ZeroShot(lm, max_tokens=max_tokens), task, examples=list(dev),
                   progress=progress)
    return float(run.accuracy)


def greedy_match_accuracy(model: Any, tokenizer: Any, task: Any, dev: Sequence[Any], *,
                          batch_size: int = 16) -> float:
    """Share of ``dev`` whose reference answer (plus end of turn) greedy decoding would
    produce exactly: the argmax at every answer position, teacher-forced, is the reference
    token. Prompts are rendered as :mod:`metaskill.methods.sft` trains them.

    Example:
        >>> greedy_match_accuracy(model, tok, task, dev)  # doctest: +SKIP
        0.82
    """
    import torch

    from metaskill.methods.sft import encode_pair, pairs_from_examples

    enc = [encode_pair(tokenizer, p) for p in pairs_from_examples(task, dev)]
    if not enc:
        raise LocalizeError("no dev examples with answers to score.")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    right = 0
    model.eval()
    with torch.no_grad():
        for lo in range(0, len(enc), batch_size):
            items = enc[lo:lo + batch_size]
            w = max(len(e.input_ids) for e in items)
            ids = torch.tensor([e.input_ids + [pad] * (w - len(e.input_ids)) for e in items])
            att = torch.tensor([[1] * len(e.input_ids) + [0] * (w - len(e.input_ids))
                                for e in items])
            labels = torch.tensor([e.labels + [-100] * (w - len(e.labels)) for e in items])
            pred = model(input_ids=ids, attention_mask=att).logits[:, :-1].argmax(-1)
            target = labels[:, 1:]
            ok = (pred == target) | (target == -100)
            right += int(ok.all(dim=1).sum())
    return right / len(enc)


def gain_recovered(acc: float, acc_base: float, acc_ft: float) -> float | None:
    """``(acc - base) / (ft - base)``; None when fine-tuning gained nothing.

    Example:
        >>> round(gain_recovered(0.7, 0.1, 0.8), 4)
        0.8571
    """
    return None if acc_ft <= acc_base else (acc - acc_base) / (acc_ft - acc_base)


# ---- the curve over sparsity levels (resumable) --------------------------------------------
def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def localize_curve(base: Any, finetuned: Any, tokenizer: Any, task: Any, *, base_path: str,
                   train: Sequence[Any], dev: Sequence[Any], cfg: LocalizeConfig,
                   out_dir: str | Path, max_tokens: int = 64, progress: bool = True,
                   log: Callable[[str], None] | None = None,
                   meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Steps 1-7 at every sparsity; results in ``OUT/localize.json``, masks in
    ``OUT/mask_<s>.npz``. A rerun skips finished levels (and the base/fine-tuned scores).

    ``finetuned`` becomes the working model: its parameters are overwritten.

    Example:
        >>> localize_curve(base, ft, tok, task, base_path=p, train=tr, dev=dv,
        ...                cfg=LocalizeConfig(), out_dir="runs/loc")  # doctest: +SKIP
    """
    import torch

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = log or (lambda _line: None)
    path = out / "localize.json"
    from metaskill.core.hashing import stable_hash

    key = {"task": task.name, "dev": stable_hash([e.id for e in dev]),
           "train": stable_hash([e.id for e in train[: cfg.n_train]]),
           "config": cfg.model_dump(mode="json", exclude={"sparsities", "threads"}),
           **(meta or {})}
    data = _read_results(path) or {"schema_version": SCHEMA_VERSION, "method": "localize",
                                   "key": key, "levels": []}
    if data["key"] != key:
        diff = sorted(k for k in key if data["key"].get(k) != key[k])
        raise LocalizeError(f"'{out}' holds a localization with different {', '.join(diff)}; "
                            "use another --out or the same settings.")
    theta, delta = deltas(base, finetuned)
    n_params = sum(d.numel() for d in delta.values())
    data["n_params"] = n_params
    data["changed_params"] = int(sum(int((d != 0).sum()) for d in delta.values()))

    def acc_of(mask: Mask | None, label: str) -> float:
        if mask is not None:
            graft_into(finetuned, theta, delta, mask)
        say(f"scoring {label} on {len(dev)} dev examples ({cfg.metric})")
        if cfg.metric == "greedy_match":
            return greedy_match_accuracy(finetuned, tokenizer, task, dev)
        return dev_accuracy(finetuned, tokenizer, base_path, task, dev, max_tokens=max_tokens,
                            progress=progress)

    if "acc_finetuned" not in data:
        data["acc_finetuned"] = acc_of(None, "the fine-tuned model")
        _write_json(path, data)
    if "acc_base" not in data:
        data["acc_base"] = acc_of(Mask(tuple(delta), tuple(tuple(d.shape) for d in
                                                          delta.values()),
                                       np.empty(0, np.int64)), "the base model")
        _write_json(path, data)
    say(f"dev accuracy: base {data['acc_base']:.1%}, fine-tuned {data['acc_finetuned']:.1%}")
    batches = task_batches(tokenizer, task, train[: cfg.n_train], cfg)
    done = {lv["sparsity"] for lv in data["levels"]}
    for s in cfg.sparsities:
        if s in done:
            continue
        k = n_for(s, n_params)
        res = learn_mask(finetuned, theta, delta, k, batches, cfg, progress=progress)
        mask_file = res.mask.save(out / f"mask_{s:g}.npz")
        level: dict[str, Any] = {"sparsity": s, "k": k, "mask": mask_file.name,
                                 "steps": cfg.steps, "losses": res.losses,
                                 "seconds": res.seconds,
                                 "kept_from_initial": round(res.kept_from_initial, 4)}
        if cfg.baseline_topk:
            level["acc_topk"] = acc_of(res.initial, f"the top-|delta| graft at s={s:g}")
            level["gain_topk"] = gain_recovered(level["acc_topk"], data["acc_base"],
                                                data["acc_finetuned"])
        level["acc"] = acc_of(res.mask, f"the learned graft at s={s:g}")
        level["gain"] = gain_recovered(level["acc"], data["acc_base"], data["acc_finetuned"])
        data["levels"] = sorted([*data["levels"], level], key=lambda lv: lv["sparsity"])
        _write_json(path, data)
        g = level["gain"]
        say(f"s={s:g} (k={k}): dev {level['acc']:.1%}, gain recovered "
            f"{'n/a' if g is None else f'{g:.0%}'}")
    graft_into(finetuned, theta, delta, {n: torch.ones_like(d) for n, d in delta.items()})
    return data


def _read_results(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    from metaskill.core.readers import read_json

    data = read_json(path, "localize results", expect=dict)
    if data.get("schema_version") != SCHEMA_VERSION:
        raise LocalizeError(f"'{path}' has schema version {data.get('schema_version')}; "
                            f"this code writes {SCHEMA_VERSION}. Use another --out.")
    return data


def pick_level(data: dict[str, Any], target: float = 0.9) -> dict[str, Any]:
    """The sparsest level that recovers ``target`` of the gain, else the best one.

    Example:
        >>> pick_level({"levels": [{"sparsity": 1e-4, "gain": 0.5},
        ...                        {"sparsity": 1e-3, "gain": 0.95}]})["sparsity"]
        0.001
    """
    levels = data["levels"]
    if not levels:
        raise LocalizeError("no sparsity level has finished yet; nothing to save.")
    ok = [lv for lv in levels if (lv.get("gain") or 0) >= target]
    if ok:
        return min(ok, key=lambda lv: lv["sparsity"])
    return max(levels, key=lambda lv: (lv.get("gain") or -1e9, -lv["sparsity"]))


def compare_masks(dir_a: str | Path, dir_b: str | Path) -> list[dict[str, Any]]:
    """Jaccard overlap of two localizations' masks at every sparsity both have, with the
    overlap two random masks of that size would have.

    Example:
        >>> compare_masks("runs/loc_reverse", "runs/loc_sort")  # doctest: +SKIP
        [{'sparsity': 0.0001, 'k': 13452, 'jaccard': 0.21, 'random': 5e-05}]
    """
    a, b = _read_results(Path(dir_a) / "localize.json"), _read_results(Path(dir_b) /
                                                                       "localize.json")
    if a is None or b is None:
        raise LocalizeError(f"no localize.json in '{dir_a if a is None else dir_b}'; run "
                            "`metaskill metatrain localize` there first.")
    lb = {lv["sparsity"]: lv for lv in b["levels"]}
    rows = []
    for lv in a["levels"]:
        if lv["sparsity"] not in lb:
            continue
        ma = Mask.load(Path(dir_a) / lv["mask"])
        mb = Mask.load(Path(dir_b) / lb[lv["sparsity"]]["mask"])
        rows.append({"sparsity": lv["sparsity"], "k": ma.k, "jaccard": jaccard(ma, mb),
                     "random": random_jaccard(ma.k, ma.n_params)})
    return rows


# ---- saving a grafted model: HF folder, GGUF, Solver JSON ----------------------------------
def save_graft(model: Any, tokenizer: Any, out_dir: str | Path, *, task: Any,
               base_gguf: str | Path | None, max_tokens: int = 64,
               note: dict[str, Any] | None = None) -> dict[str, str]:
    """Save the grafted ``model`` as an HF folder (``OUT/``), a GGUF model
    (``OUT/model.gguf``, when the base is a GGUF file) and a zero-shot Solver JSON
    (``OUT/solver.json``) for ``metaskill serve --solver`` / ``eval``; atomically.

    Example:
        >>> save_graft(model, tok, "runs/loc/graft", task=task,
        ...            base_gguf="SmolLM2.gguf")  # doctest: +SKIP
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    from metaskill.core.quiet import no_load_bars

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tmp.chmod(0o755)
        with no_load_bars():
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        spec = f"hf:{out.resolve()}"
        if base_gguf is not None and str(base_gguf).endswith(".gguf"):
            export_graft_gguf(model, base_gguf, tmp / "model.gguf")
            spec = f"gguf:{(out / 'model.gguf').resolve()}"
        solver = {**_zero_shot_json(model, tokenizer, max_tokens), "model": spec,
                  "task": task.name}
        (tmp / "solver.json").write_text(json.dumps(solver, indent=1))
        (tmp / "metaskill_graft.json").write_text(json.dumps(note or {}, indent=1))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"hf": str(out), "spec": spec, "solver": str(out / "solver.json")}


def _zero_shot_json(model: Any, tokenizer: Any, max_tokens: int) -> dict[str, Any]:
    from metaskill.eval.solvers import ZeroShot
    from metaskill.lm.hf import HFLM

    return ZeroShot(HFLM("graft", model=model, tokenizer=tokenizer),
                    max_tokens=max_tokens).to_json()


def export_graft_gguf(model: Any, base_gguf: str | Path, out_path: str | Path) -> Path:
    """A llama.cpp GGUF of the grafted model: the base GGUF dequantized to F32
    (:func:`metaskill.lm.adapters.dequantize_gguf`, names, metadata and layouts kept), then
    every tensor the HF model holds written in place (q/k rows in llama.cpp's head order).

    Raises:
        LocalizeError: an HF tensor has no GGUF counterpart or a different shape.
    """
    import gguf

    from metaskill.lm.adapters import dequantize_gguf, read_gguf_arch

    out = Path(out_path)
    dequantize_gguf(base_gguf, out, dtype="f32")
    arch = read_gguf_arch(base_gguf)
    cfg = model.config
    arch_enum = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch["architecture"]]
    names = gguf.get_tensor_name_map(arch_enum, cfg.num_hidden_layers)
    reader = gguf.GGUFReader(str(out), "r+")
    tensors = {t.name: t for t in reader.tensors}
    for hf_name, p in model.state_dict().items():
        g_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if g_name not in tensors:
            if hf_name == "lm_head.weight" and getattr(cfg, "tie_word_embeddings", False):
                continue
            raise LocalizeError(f"the base GGUF has no tensor for '{hf_name}' ({g_name}).")
        w = p.detach().float().numpy()
        if hf_name.endswith("q_proj.weight"):
            w = _permute_rows(w, arch["n_head"])
        elif hf_name.endswith("k_proj.weight"):
            w = _permute_rows(w, arch["n_head_kv"] or arch["n_head"])
        dst = tensors[g_name].data
        if dst.size != w.size:
            raise LocalizeError(f"tensor '{g_name}' holds {dst.size} values in the GGUF but "
                                f"{w.size} in the model.")
        dst[...] = w.reshape(dst.shape)
    del reader, tensors  # flush the memory map
    return out


def _permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k head permutation (convert_hf_to_gguf's LlamaModel.permute)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


# ---- the whole job, as the CLI runs it -----------------------------------------------------
def run_localize(task_name: str, base_spec: str, finetuned: str | Path, cfg: LocalizeConfig,
                 out_dir: str | Path, *, task_options: dict[str, Any] | None = None,
                 eval_limit: int | None = 50, max_tokens: int = 64, save: bool = True,
                 save_sparsity: float | None = None, compare: str | Path | None = None,
                 settings: Any = None, progress: bool = True,
                 log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Load the task and both models, run :func:`localize_curve`, save the chosen graft
    (``OUT/graft``: HF folder, ``model.gguf``, ``solver.json``) and, with ``compare``, the
    mask overlap with another localization (``OUT/overlap.json``).

    Example:
        >>> run_localize("word_reversal", "local", "runs/reverse", LocalizeConfig(),
        ...              "runs/loc")  # doctest: +SKIP
    """
    from metaskill.methods.base import split_dev
    from metaskill.tasks import get_task

    say = log or (lambda _line: None)
    out = Path(out_dir)
    task = get_task(task_name, **(task_options or {}))
    train, dev, dev_note = split_dev(task.examples("train"), task.splits.get("dev"),
                                     eval_limit)
    dev = dev[:eval_limit] if eval_limit else dev
    base, ft, tok, info = load_pair(base_spec, finetuned, settings=settings, log=log)
    base_path = resolve_base(base_spec)
    meta = {"base": {"source": info["source"], "hash": info["hash"]},
            "finetuned": info["finetuned"], "finetuned_kind": info["finetuned_kind"],
            "task_options": task_options or {}, "max_tokens": max_tokens}
    data = localize_curve(base, ft, tok, task, base_path=base_path, train=train, dev=dev,
                          cfg=cfg, out_dir=out, max_tokens=max_tokens, progress=progress,
                          log=log, meta=meta)
    data["dev_note"] = f"{len(dev)} examples: {dev_note}"
    if save:
        level = (next((lv for lv in data["levels"] if lv["sparsity"] == save_sparsity), None)
                 if save_sparsity is not None else pick_level(data))
        if level is None:
            run = ", ".join(f"{lv['sparsity']:g}" for lv in data["levels"])
            raise LocalizeError(f"--save-sparsity {save_sparsity:g} is not among the levels "
                                f"run ({run}).")
        note = {"sparsity": level["sparsity"], "k": level["k"], "mask": level["mask"],
                "dev_accuracy": level["acc"], "gain": level["gain"], "task": task.name, **meta}
        marker = out / "graft" / "metaskill_graft.json"
        if not (marker.exists() and json.loads(marker.read_text()).get("sparsity")
                == level["sparsity"]):
            theta, delta = deltas(base, ft)
            graft_into(ft, theta, delta, Mask.load(out / level["mask"]))
            say(f"saving the graft at s={level['sparsity']:g} to {out / 'graft'}")
            save_graft(ft, tok, out / "graft", task=task,
                       base_gguf=base_path if base_path.endswith(".gguf") else None,
                       max_tokens=max_tokens, note=note)
        data["graft"] = {"dir": str(out / "graft"), "sparsity": level["sparsity"],
                         "solver": str(out / "graft" / "solver.json")}
    if compare is not None:
        data["overlap"] = compare_masks(out, compare)
        _write_json(out / "overlap.json", {"schema_version": SCHEMA_VERSION, "a": str(out),
                                           "b": str(compare), "rows": data["overlap"]})
    _write_json(out / "localize.json", data)
    return data
