"""PSEC LoRA skill library: one adapter per skill, composed per input by a context router.

Paper: Liu, Wang et al. (2025). "Skill Expansion and Composition in Parameter Space"
(PSEC): keep a library of skill LoRA modules and compose them for the current context by
a weighted combination of their low-rank updates.

Algorithm:

1. For every skill, train a LoRA adapter on the training examples that exercise it
   (:func:`train_skill_library`), record the centroid of those inputs' embeddings, and
   register the adapter path on the Skill in the SkillBook (``Skill.adapter``).
2. For an input x, the context router gives weights
   ``w = softmax(cos(embed(x), centroid_k) / temperature)`` over the skills.
3. The composed update of every adapted layer is ``sum_k w_k * (alpha_k / r_k) B_k A_k``:
   all adapters are active in PEFT at once, each with its scaling multiplied by w_k.
4. Modes for comparison: ``single`` (one named adapter, weight 1), ``uniform``
   (w_k = 1/K) and ``routed`` (the router's weights).

What we changed: PSEC learns the composition network; we use the training-free context
router the issue asks for (similarity to skill centroids with a softmax temperature).
Composition runs in the HF backend (per-input weights need per-input scalings).

Example:
    >>> import numpy as np
    >>> route_weights(np.array([1.0, 0.0]), np.array([[1.0, 0.0], [0.0, 1.0]]), 0.1).round(3)
    array([1., 0.])
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from metaskill.core.errors import MethodError
from metaskill.core.types import Completion, Example, Request, Sample, Usage

Embed = Callable[[Sequence[str]], np.ndarray]
Mode = Literal["single", "uniform", "routed"]


class SkillAdapter(BaseModel):
    """One library entry: the skill, its PEFT adapter folder and its input centroid."""

    skill: str
    adapter_dir: str
    centroid: list[float]
    n_train: int = 0


class Library(BaseModel):
    """The library as plain JSON (``library.json`` in its folder)."""

    schema_version: int = 1
    adapters: list[SkillAdapter] = Field(default_factory=list)

    def save(self, path: str | Path) -> Path:
        """Write the library JSON."""
        p = Path(path)
        p.write_text(self.model_dump_json(indent=1))
        return p

    @classmethod
    def load(cls, path: str | Path) -> Library:
        """Read a library JSON (a damaged or foreign file is a one-line error)."""
        from pydantic import ValidationError

        from metaskill.core.errors import FileFormatError
        from metaskill.core.readers import read_json

        data = read_json(path, "adapter library")
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(x) for x in first.get("loc", ()))
            raise FileFormatError(f"cannot read adapter library {path}: {loc}: "
                                  f"{first.get('msg')}.") from None


def route_weights(query: np.ndarray, centroids: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax over cosine similarities of ``query`` to each centroid, at ``temperature``."""
    if temperature <= 0:
        raise MethodError(f"router temperature must be > 0, got {temperature}.")
    q = query / (np.linalg.norm(query) or 1.0)
    c = centroids / np.clip(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12, None)
    logits = (c @ q) / temperature
    e = np.exp(logits - logits.max())
    return e / e.sum()


def train_skill_library(lm: Any, task: Any, train: list[Example], config: Any,
                        out_dir: str | Path, embed: Embed, *, skills: list[str] | None = None,
                        book: Any = None, settings: Any = None,
                        progress: bool = True) -> Library:
    """Train one adapter per skill on the examples with that skill; register them.

    Args:
        lm: the base LM (its model file is what gets adapted).
        task: the Task (renders the prompts).
        train: training examples; ``Example.skills`` decides which adapter each trains.
        config: the :class:`~metaskill.methods.sft.SFTConfig` used for every skill.
        out_dir: the library folder (``<skill>/`` adapters and ``library.json``).
        embed: texts -> vectors (e.g. a SkillBook's embedder ``encode``).
        skills: the skills to train (default: every skill seen in ``train``).
        book: a SkillBook; each trained skill present in it gets ``adapter=<path>``.
    """
    from metaskill.methods.sft import pairs_from_examples, train_for_lm, user_text

    out = Path(out_dir)
    names = skills or sorted({s for e in train for s in e.skills})
    if not names:
        raise MethodError("no skills to train: the examples carry no skill labels.")
    lib = Library()
    for name in names:
        exs = [e for e in train if name in e.skills and e.answer is not None]
        if not exs:
            raise MethodError(f"skill '{name}' has no answered training examples.")
        res = train_for_lm(lm, pairs_from_examples(task, exs), config, out / name,
                           settings=settings, progress=progress)
        vecs = np.asarray(embed([user_text(task, e) for e in exs]), dtype=np.float64)
        lib.adapters.append(SkillAdapter(skill=name, adapter_dir=str(res.adapter_dir),
                                         centroid=vecs.mean(axis=0).tolist(), n_train=len(exs)))
        if book is not None and name in book:
            book.update_skill(name, adapter=str(res.adapter_dir))
    lib.save(out / "library.json")
    return lib


class ComposedLM:
    """An HF base model with every library adapter loaded, composed per request.

    Args:
        hf_lm: an :class:`~metaskill.lm.hf.HFLM` of the base model (no adapter).
        library: the :class:`Library`.
        embed: texts -> vectors (the same embedder the centroids came from).
        mode: ``single``, ``uniform`` or ``routed``.
        skill: the adapter used in ``single`` mode.
        temperature: the router's softmax temperature.

    It answers ``complete`` like an LM (greedy or sampled, as the request says); each
    Completion's first sample records nothing extra, but :attr:`last_weights` holds the
    weights used for the last request.
    """

    chat = True

    def __init__(self, hf_lm: Any, library: Library, embed: Embed, mode: Mode = "routed",
                 skill: str | None = None, temperature: float = 0.1) -> None:
        from peft import PeftModel

        if not library.adapters:
            raise MethodError("the LoRA library is empty; train it first.")
        self.hf = hf_lm
        self.library = library
        self.embed = embed
        self.mode = mode
        self.temperature = temperature
        self.names = [a.skill for a in library.adapters]
        if mode == "single" and skill not in self.names:
            raise MethodError(f"single mode needs one of the library's skills "
                              f"({', '.join(self.names)}), got {skill!r}.")
        self.skill = skill
        first, *rest = library.adapters
        model = PeftModel.from_pretrained(hf_lm.model, first.adapter_dir,
                                          adapter_name=first.skill)
        for a in rest:
            model.load_adapter(a.adapter_dir, adapter_name=a.skill)
        model.base_model.set_adapter(self.names)
        model.eval()
        self.model = model
        self._base_scaling = {
            (id(m), n): m.scaling[n] for m in model.modules()
            if isinstance(getattr(m, "scaling", None), dict)
            for n in self.names if n in m.scaling
        }
        self.centroids = np.array([a.centroid for a in library.adapters])
        self.last_weights: dict[str, float] = {}
        self.spec = f"psec:{mode}"

    def weights(self, text: str) -> np.ndarray:
        """The composition weights for one input text."""
        k = len(self.names)
        if self.mode == "single":
            return np.array([1.0 if n == self.skill else 0.0 for n in self.names])
        if self.mode == "uniform":
            return np.full(k, 1.0 / k)
        q = np.asarray(self.embed([text]), dtype=np.float64)[0]
        return route_weights(q, self.centroids, self.temperature)

    def _apply(self, w: np.ndarray) -> None:
        for m in self.model.modules():
            scaling = getattr(m, "scaling", None)
            if not isinstance(scaling, dict):
                continue
            for i, n in enumerate(self.names):
                if (id(m), n) in self._base_scaling:
                    scaling[n] = self._base_scaling[(id(m), n)] * float(w[i])

    def complete(self, requests: Sequence[Request], *, cache: bool = False) -> list[Completion]:
        """Answer each request with the adapters composed for its last user message."""
        out = []
        hf_model = self.hf.model
        self.hf.model = self.model
        try:
            for r in requests:
                t0 = time.perf_counter()
                text = r.messages[-1].content if r.messages else (r.prompt or "")
                w = self.weights(text)
                self.last_weights = dict(zip(self.names, map(float, w), strict=True))
                self._apply(w)
                c = self.hf._complete([r])[0]
                out.append(Completion(samples=c.samples or [Sample(text="")],
                                      usage=c.usage or Usage(),
                                      latency_s=time.perf_counter() - t0))
        finally:
            self.hf.model = hf_model
        return out

    def prompt_of(self, request: Request) -> str:
        """The rendered prompt (the base model's chat template)."""
        return str(self.hf.prompt_of(request))

    def close(self) -> None:
        """Nothing to release beyond the HF model, which the caller owns."""
