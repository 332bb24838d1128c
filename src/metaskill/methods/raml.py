"""raml: fuse the LM's label likelihoods with the labels of retrieved neighbours.

Paper:
    Li, Li, Li, Luoyiching, Zheng, Zhou, Su (2023). "Retrieval-Augmented Meta Learning
    for Low-Resource Text Classification" (RAML) -- a parametric model's prediction is
    combined with labelled examples retrieved from a non-parametric memory.

    The fusion itself follows kNN-LM (Khandelwal, Levy, Jurafsky, Zettlemoyer, Lewis,
    2020, "Generalization through Memorization: Nearest Neighbor Language Models"):
    interpolate the model's distribution with a distribution over the neighbours' labels.

What we changed: no meta-training. The "parametric" side is the frozen LM scoring each
label after the prompt (:meth:`LM.score`, softmax over labels, optionally with nearest
demos in the prompt); the "memory" is the training pool embedded by a frozen MiniLM;
the neighbour distribution is a similarity-weighted vote (softmax of cosine /
temperature, Laplace-smoothed). The fusion is log-linear,
``log p = (1 - w) log p_lm + w log p_ret``, and the weight ``w`` plus an optional
label-prior calibration of the LM (divide by its mean label distribution on dev inputs,
after Zhao et al. 2021; no dev labels are used for the prior) are chosen on dev. The fit
report shows dev accuracy of the LM alone, retrieval alone and the fusion, and every
test attempt keeps all three predictions in its ``meta`` so a test run shows the same
comparison without refitting.

Multiple choice: where examples carry their own choices (``metadata["choices"]``,
BIG-bench ``target_scores``), both sides work over each example's own choices. The LM
scores the example's choices, as lm-evaluation-harness does. A neighbour votes for the
query's choice equal to its answer (case-folded) where the choices are shared; otherwise
for the query's choice most similar to its answer text by the same embedder (a neighbour's
answer "dog" votes for "cat" among "cat", "red", "blue"). Where every example has the same
choice set (``True``/``False``), that set is the label set and calibration applies as for
classification; with choice sets that differ per example there is no common label
distribution, so calibration is off.

Algorithm (what :meth:`Raml.fit` does):

1. Check the task is a classification task with a label set, or a multiple-choice task
   whose examples carry their choices.
2. Embed the training pool; for each dev input retrieve its k nearest labelled
   neighbours and form p_ret.
3. Score every label after each dev input's prompt with the LM and form p_lm; the prior
   is p_lm's mean over dev inputs.
4. For calibration in {off, on} and w in the grid: dev accuracy of argmax of the fusion.
   Keep the best (ties: smaller w, then no calibration); w = 0 is the LM alone, w = 1
   retrieval alone. With ``format_candidates`` / ``try_no_instructions``, steps 3-4 run
   for each prompt variant of the LM side (chat template, plain completion, plain
   completion without the instruction preamble) and the variant with the best *fused*
   dev accuracy is kept (ties: the shorter prompt) -- the format that is best for the LM
   alone need not be best once the neighbours vote too. ``k_candidates`` adds the number
   of nearest demos in the LM's prompt to the variants, and ``max_prompt_tokens`` keeps
   only variants whose mean dev prompt (labels included) fits a budget -- the neighbours'
   vote often buys back what fewer demos lose, at a fraction of the prompt.
5. Return a :class:`RamlSolver` holding the pool, the embedder spec, w and the prior.

Example:
    >>> fuse(np.array([[0.8, 0.2]]), np.array([[0.1, 0.9]]), 0.5).round(3).tolist()
    [[0.4, 0.6]]
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, field_validator, model_validator

from metaskill.core.errors import MethodError
from metaskill.core.types import Example, Usage
from metaskill.eval.solver import Attempt, Solver
from metaskill.eval.solvers import example_choices
from metaskill.methods.base import Method, MethodConfig
from metaskill.methods.demos import (
    DemoPromptConfig,
    DemoSolver,
    KnnSelector,
    PromptFormat,
    prompt_variants,
)
from metaskill.tasks.base import Task

_EPS = 1e-9


def softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise softmax (``-inf`` entries get probability 0)."""
    z = x - np.max(x, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def fuse(p_lm: np.ndarray, p_ret: np.ndarray, weight: float,
         prior: np.ndarray | None = None) -> np.ndarray:
    """Log-linear fusion of two label distributions (rows), renormalised.

    ``prior`` (the LM's mean label distribution) divides ``p_lm`` first when given.
    """
    lm = p_lm / prior if prior is not None else p_lm
    lm = lm / lm.sum(axis=-1, keepdims=True)
    logp = (1 - weight) * np.log(lm + _EPS) + weight * np.log(p_ret + _EPS)
    return softmax(logp)


class RamlSolver(DemoSolver):
    """Classifies by fusing LM label likelihoods with retrieved neighbours' labels.

    Args:
        lm: the LM.
        selector: a :class:`KnnSelector` over the labelled pool (neighbours and demos).
        labels: the label set, in a fixed order; empty for a multiple-choice task whose
            examples have choice sets of their own (each example's choices are used, and
            an example with choices always uses its own).
        weight: fusion weight w of the retrieval side (0 = LM only, 1 = retrieval only).
        k_neighbours: neighbours that vote on the label.
        sim_temperature: softmax temperature of the neighbours' cosine similarities.
        smoothing: added to each label's neighbour share before renormalising.
        prior: the LM's mean label distribution on dev (calibration), or None.
        k: demos in the LM's prompt (nearest ones; 0 = zero-shot prompt).
        **options: DemoSolver prompt options (format, order, instructions).

    Each attempt's ``meta`` has ``p_lm``, ``p_ret``, ``p_fused`` and the three
    predictions ``pred_lm``, ``pred_retrieval``, ``pred_fused`` (the output).
    """

    kind: ClassVar[str] = "raml"

    def __init__(self, lm: Any, selector: KnnSelector, labels: list[str], *,
                 weight: float = 0.5, k_neighbours: int = 16, sim_temperature: float = 0.05,
                 smoothing: float = 0.1, prior: list[float] | None = None, k: int = 0,
                 **options: Any) -> None:
        options.pop("answer_mode", None)
        super().__init__(lm, selector, k=k, **options)
        self.selector: KnnSelector = selector
        self.labels = list(labels)
        self.weight = float(weight)
        self.k_neighbours = k_neighbours
        self.sim_temperature = sim_temperature
        self.smoothing = smoothing
        self.prior = list(prior) if prior is not None else None
        self._text_vecs: dict[str, np.ndarray] = {}

    # ---- the candidates of one input -----------------------------------------------------
    def choices_for(self, task: Any, example: Example) -> list[str]:
        """The example's own choices (multiple choice) where it has them, else the labels."""
        own = example_choices(None, example)
        if own:
            return own
        if not self.labels:
            raise MethodError(f"raml: example '{example.id}' has no choices and the solver "
                              "no label set; give a classification or multiple-choice task.")
        return list(self.labels)

    def _prior_for(self, choices: list[str]) -> np.ndarray | None:
        """The calibration prior where the input's candidates are the label set (in order)."""
        if self.prior is None or choices != self.labels:
            return None
        return np.array(self.prior)

    def _vectors(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Embeddings of answer / choice texts (memoised on this solver)."""
        todo = list(dict.fromkeys(t for t in texts if t not in self._text_vecs))
        if todo:
            for t, v in zip(todo, np.asarray(self.selector.embedder.encode(todo)), strict=True):
                self._text_vecs[t] = v
        return self._text_vecs

    # ---- the two distributions ---------------------------------------------------------
    def retrieval_dist(self, examples: list[Example], task: Any = None) -> list[np.ndarray]:
        """p_ret per input: similarity-weighted, smoothed vote of the nearest neighbours.

        A neighbour votes for the input's candidate equal to its answer (case-folded); where
        none is (multiple choice with choice sets of their own), for the candidate most
        similar to its answer text by embedding.
        """
        out: list[np.ndarray] = []
        queries = self.selector.query_vectors(examples)
        for ex, q in zip(examples, queries, strict=True):
            choices = self.choices_for(task, ex)
            row = np.zeros(len(choices))
            index = {lab.casefold(): j for j, lab in enumerate(choices)}
            ranked = self.selector.ranked(ex, q)[: self.k_neighbours]
            sims = np.array([s for s, _ in ranked])
            w = np.exp((sims - sims.max()) / self.sim_temperature) if len(sims) else sims
            answers = [str(self.selector.pool[i].answer) for _, i in ranked]
            unmatched = [a for a in answers if a.casefold() not in index]
            vecs = self._vectors(unmatched + choices) if unmatched else {}
            for weight, a in zip(w, answers, strict=True):
                j = index.get(a.casefold())
                if j is None:
                    j = int(np.argmax([float(vecs[a] @ vecs[c]) for c in choices]))
                row[j] += weight
            total = row.sum()
            row = (row / total if total > 0 else row) + self.smoothing
            out.append(row / row.sum())
        return out

    def lm_dist(self, task: Any, examples: list[Example]) -> tuple[list[np.ndarray], list[Usage],
                                                                   list[str], list[int]]:
        """p_lm per input (softmax of its candidates' log-likelihoods), usage, prompts and
        demo counts."""
        built = self.build_requests(task, examples)
        dist: list[np.ndarray] = []
        usages, prompts, ks = [], [], []
        for ex, (req, demos) in zip(examples, built, strict=True):
            context: Any = list(req.messages) if req.messages is not None else req.prompt
            conts = self._continuations(req, self.choices_for(task, ex))
            scores = np.array(self.lm.score(context, conts), dtype=float)
            scores[~np.isfinite(scores)] = -1e9
            dist.append(softmax(scores))
            prompt = self.lm.prompt_of(req)
            usages.append(Usage(prompt_tokens=self._prompt_tokens(prompt, conts)))
            prompts.append(prompt)
            ks.append(len(demos))
        return dist, usages, prompts, ks

    def prompt_cost(self, task: Any, examples: list[Example]) -> float:
        """Mean prompt tokens per input (labels included) -- counted, the LM is not run."""
        built = self.build_requests(task, examples)
        total = sum(self._prompt_tokens(self.lm.prompt_of(req),
                                        self._continuations(req, self.choices_for(task, ex)))
                    for ex, (req, _) in zip(examples, built, strict=True))
        return total / max(1, len(built))

    def _continuations(self, req: Any, choices: list[str]) -> list[str]:
        return list(choices) if req.messages is not None else [f" {c}" for c in choices]

    def _prompt_tokens(self, prompt: str, conts: list[str]) -> int:
        return self.lm.count_tokens(prompt) + sum(self.lm.count_tokens(c) for c in conts)

    # ---- the Solver verb ---------------------------------------------------------------
    def solve(self, task: Task, examples: list[Example]) -> list[Attempt]:
        """Fuse p_lm and p_ret per input; output the best label."""
        t0 = time.perf_counter()
        p_lm, usages, prompts, ks = self.lm_dist(task, examples)
        p_ret = self.retrieval_dist(examples, task)
        per = (time.perf_counter() - t0) / max(1, len(examples))
        out = []
        for i, ex in enumerate(examples):
            choices = self.choices_for(task, ex)
            prior = self._prior_for(choices)
            p = fuse(p_lm[i], p_ret[i], self.weight, prior)
            pred = choices[int(np.argmax(p))]
            out.append(Attempt(
                example_id=ex.id, prompt=prompts[i], output=pred, usage=usages[i],
                latency_s=per,
                meta={"p_lm": _r(p_lm[i]), "p_ret": _r(p_ret[i]), "p_fused": _r(p),
                      "pred_lm": choices[int(np.argmax(fuse(p_lm[i], p_ret[i], 0.0, prior)))],
                      "pred_retrieval": choices[int(np.argmax(p_ret[i]))],
                      "pred_fused": pred, "k": ks[i], "lm_calls": 1},
            ))
        return out

    def state(self) -> dict[str, Any]:
        return {**super().state(), "labels": self.labels, "weight": self.weight,
                "k_neighbours": self.k_neighbours, "sim_temperature": self.sim_temperature,
                "smoothing": self.smoothing, "prior": self.prior}

    @classmethod
    def from_state(cls, state: dict[str, Any], lm: Any) -> RamlSolver:
        from metaskill.methods.demos import selector_from_json

        sel = selector_from_json(state["selector"])
        if not isinstance(sel, KnnSelector):
            raise MethodError("raml: saved state has no knn selector; the file is damaged.")
        opts = cls.options_from_state(state)
        opts.pop("k_overrides", None)
        return cls(lm, sel, state["labels"], weight=state["weight"],
                   k_neighbours=state["k_neighbours"],
                   sim_temperature=state["sim_temperature"],
                   smoothing=state.get("smoothing", 0.1), prior=state.get("prior"), **opts)


def _r(v: np.ndarray) -> list[float]:
    return [round(float(x), 4) for x in v]


class RamlConfig(DemoPromptConfig):
    """Options of :class:`Raml`.

    The defaults are the search of the ``raml_budget`` rows of
    ``benchmarks/results/vs_dspy.md`` (without their token cap): the LM side's demo count
    (0-4), prompt format and instruction preamble chosen on dev by the fused accuracy.
    Setting ``k`` alone fixes the demo count (no k search).

    Example:
        >>> RamlConfig().k_candidates, RamlConfig(k=4).k_candidates
        ([0, 1, 2, 3, 4], None)
    """

    k_neighbours: int = Field(16, ge=1, le=256, description="neighbours that vote on the label")
    sim_temperature: float = Field(0.05, gt=0.0, le=10.0,
                               description="softmax temperature of neighbour similarities")
    smoothing: float = Field(0.1, ge=0.0, le=10.0,
                             description="added to each label's neighbour share")
    k: int | None = Field(
        None, ge=0, le=32,
        description="nearest demos in the LM's prompt; None: an incoming DemoSolver's k, else "
                    "0 (used when k_candidates is null; setting k alone turns that search off)",
    )
    weights: list[float] = Field(
        default_factory=lambda: [round(0.1 * i, 1) for i in range(11)],
        description="fusion weights to try on dev (0 = LM only, 1 = retrieval only)",
    )
    calibrate: bool | None = Field(
        None, description="divide p_lm by its dev mean; None tries both and keeps the better"
    )
    format_candidates: list[PromptFormat] | None = Field(
        default_factory=lambda: ["auto", "completion"],
        description="if given, choose the LM side's prompt format (chat, completion) on dev by "
                    "the fused accuracy; default auto (the chat template where the model has "
                    "one) and completion, as in every raml row above 'raml' in "
                    "benchmarks/results/vs_dspy.md (sst2: raml_fmt 81.0%, raml_budget 88.0% "
                    "vs raml 77.0%); null keeps the incoming Solver's",
    )
    try_no_instructions: bool = Field(
        True, description="also try plain-completion prompts without the task's instruction "
                          "preamble; dev ties go to the shorter prompt (default on, as in "
                          "raml_budget and raml_joint of benchmarks/results/vs_dspy.md)"
    )
    k_candidates: list[int] | None = Field(
        default_factory=lambda: [0, 1, 2, 3, 4],
        description="if given, choose the LM side's demo count among these on dev by the "
                    "fused accuracy (overrides k); default 0-4, raml_budget's search (sst2 "
                    "88.0%, the best raml row, in benchmarks/results/vs_dspy.md); null: k",
    )
    max_prompt_tokens: float | None = Field(
        None, gt=0, description="only prompt variants whose mean prompt tokens per input "
                                "(labels included) on dev are at most this are eligible"
    )

    @field_validator("k_candidates")
    @classmethod
    def _ks(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(x < 0 for x in v):
            raise ValueError(f"k_candidates must be demo counts >= 0, got {v}")
        return v

    @model_validator(mode="after")
    def _fixed_k(self) -> RamlConfig:
        # an explicit k (alone) is a fixed demo count, not skipped by the default search
        if "k" in self.model_fields_set and "k_candidates" not in self.model_fields_set:
            self.k_candidates = None
        return self

    def over_demos(self) -> RamlConfig:
        """This config over an incoming nearest-demo Solver (``knn_demos,raml``): the
        searches not set explicitly are off, so the incoming prompt and k stand (as in the
        ``raml_fmt`` row of benchmarks/results/vs_dspy.md, 71.0% on trec).

        Example:
            >>> RamlConfig().over_demos().k_candidates is None
            True
        """
        off = {"format_candidates": None, "try_no_instructions": False, "k_candidates": None}
        return self.model_copy(update={f: v for f, v in off.items()
                                       if f not in self.model_fields_set})


class Raml(Method):
    """Retrieval-augmented classification: LM label likelihoods fused with neighbours' labels."""

    name: ClassVar[str] = "raml"
    Config: ClassVar[type[MethodConfig]] = RamlConfig
    config: RamlConfig

    def fit(self, solver: Solver, task: Task, train: list[Example],
            dev: list[Example] | None = None) -> RamlSolver:
        """Fit the fusion weight (and calibration) on dev; see the module doc."""
        cfg = self.config
        if isinstance(solver, DemoSolver) and isinstance(solver.selector, KnnSelector):
            cfg = cfg.over_demos()
        # 1. A classification task with labels, or multiple choice with per-example choices.
        pool = [e for e in train if e.answer is not None]
        dev_set = cfg.dev_subset(dev)
        labels = list(getattr(task, "labels", None) or []) or shared_choices(pool + dev_set)
        per_example = all(example_choices(None, e) for e in dev_set) and bool(dev_set)
        if getattr(task, "kind", "generative") == "generative" or not (labels or per_example):
            raise MethodError(
                f"raml: needs a classification task with a label set or a multiple-choice task "
                f"whose examples carry their choices; task '{getattr(task, 'name', '?')}' is "
                f"{getattr(task, 'kind', 'generative')}"
                f"{'' if labels else ' and has no labels'} (try knn_demos instead)."
            )
        if not pool:
            raise MethodError("raml: no labelled training examples to retrieve from.")
        if not dev_set:
            raise MethodError("raml: needs dev examples to fit the fusion weight.")

        # 2. The memory and p_ret on dev.
        embedder = self.resources.get_embedder()
        selector = KnnSelector(pool, embedder=embedder)
        k = cfg.k
        if k is None:
            k = solver.k if isinstance(solver, DemoSolver) and isinstance(
                solver.selector, KnnSelector) else 0
        options = cfg.prompt_options(solver)
        options.pop("answer_mode", None)
        options.pop("max_tokens", None)

        def build(fmt: PromptFormat | None, bare: bool, k_lm: int | None = None) -> RamlSolver:
            opts = {**options, **({"prompt_format": fmt} if fmt is not None else {})}
            if bare:
                opts["instructions"] = ""
            return RamlSolver(solver.lm, selector, labels, weight=0.0,
                              k_neighbours=cfg.k_neighbours, sim_temperature=cfg.sim_temperature,
                              smoothing=cfg.smoothing, k=k if k_lm is None else k_lm, **opts)

        # The prompt variants of the LM side: the incoming Solver's, unless format_candidates,
        # try_no_instructions or k_candidates ask for more (bare prompts only for plain
        # completion).
        prompts = prompt_variants(self.name, solver.lm, cfg.format_candidates,
                                  cfg.try_no_instructions, None,
                                  lambda f: build(f, False).uses_chat())
        ks = sorted(set(cfg.k_candidates)) if cfg.k_candidates else [k]
        variants = [(f, bare, x) for f, bare in prompts for x in ks]
        first = build(*variants[0])
        p_ret = first.retrieval_dist(dev_set, task)
        dev_choices = [first.choices_for(task, e) for e in dev_set]
        gold = [_gold_indices(c, e) for c, e in zip(dev_choices, dev_set, strict=True)]
        # Calibration needs one label distribution: every dev input's candidates are the
        # label set (classification, or multiple choice with one shared choice set).
        can_calibrate = bool(labels) and all(c == labels for c in dev_choices)

        def acc(p: list[np.ndarray]) -> float:
            return float(np.mean([int(np.argmax(r)) in g for r, g in zip(p, gold, strict=True)]))

        def fused(p_lm: list[np.ndarray], w: float,
                  prior: np.ndarray | None) -> list[np.ndarray]:
            return [fuse(a, b, w, prior) for a, b in zip(p_lm, p_ret, strict=True)]

        fits, over_cap = [], []
        for fmt, bare, k_lm in variants:
            raml = build(fmt, bare, k_lm)
            if cfg.max_prompt_tokens is not None:
                # Counted before scoring: a variant over the budget costs no LM calls.
                cost = raml.prompt_cost(task, dev_set)
                if cost > cfg.max_prompt_tokens:
                    over_cap.append({"prompt_format": "chat" if raml.uses_chat() else
                                     "completion", "instructions": not bare, "k": k_lm,
                                     "prompt_tokens": round(cost, 1)})
                    continue
            # 3. p_lm on dev, and its mean as the calibration prior (no labels used).
            p_lm, usages, _, _ = raml.lm_dist(task, dev_set)
            for u in usages:
                self.report.usage = self.report.usage + u
            self.report.lm_calls += len(dev_set)
            prior = np.mean(p_lm, axis=0) if can_calibrate else None

            # 4. Grid over calibration and w, scored on dev.
            calib = [False, True] if cfg.calibrate is None else [cfg.calibrate]
            calib = [c for c in calib if not c or prior is not None] or [False]
            table = []
            for c in calib:
                for w in sorted(set(cfg.weights)):
                    table.append({"calibrate": c, "weight": w, "dev_accuracy": acc(
                        fused(p_lm, w, prior if c else None))})
            best = max(table, key=lambda r: (r["dev_accuracy"], -r["weight"],
                                             not r["calibrate"]))
            lm_only = max(acc(p_lm), acc(fused(p_lm, 0.0, prior)))
            fits.append({
                "solver": raml, "best": best, "prior": prior,
                "prompt_tokens": sum(u.prompt_tokens for u in usages) / len(usages),
                "notes": {
                    "dev_accuracy": best["dev_accuracy"],
                    "dev_accuracy_lm_only": acc(p_lm),
                    "dev_accuracy_lm_only_calibrated": acc(fused(p_lm, 0.0, prior)),
                    "dev_accuracy_retrieval_only": acc(p_ret),
                    "dev_accuracy_fused": best["dev_accuracy"],
                    "fusion_beats_both_on_dev": best["dev_accuracy"] > max(lm_only, acc(p_ret)),
                    "weight": best["weight"], "calibrate": best["calibrate"], "k": k_lm,
                    "k_neighbours": cfg.k_neighbours,
                    "prior": _r(prior) if prior is not None else None,
                    "choices": "labels" if can_calibrate else "per example",
                    "prompt_format": "chat" if raml.uses_chat() else "completion",
                    "instructions": not bare, "grid": table,
                },
            })
        if not fits:
            cheapest = min(v["prompt_tokens"] for v in over_cap)
            raise MethodError(
                f"raml: no prompt variant fits max_prompt_tokens={cfg.max_prompt_tokens:g}; the "
                f"cheapest needs {cheapest:.1f} prompt tokens per dev input (add 0 to "
                f"k_candidates, or try_no_instructions, or raise the cap).")
        # The variant with the best fused dev accuracy (ties: shorter prompt, listed first).
        chosen = max(range(len(fits)), key=lambda i: (fits[i]["best"]["dev_accuracy"],
                                                      -fits[i]["prompt_tokens"], -i))
        fit = fits[chosen]
        self.report.notes.update(fit["notes"])
        if len(fits) > 1:
            self.report.notes["variants"] = [
                {"prompt_format": f["notes"]["prompt_format"],
                 "instructions": f["notes"]["instructions"], "k": f["notes"]["k"],
                 "prompt_tokens": round(f["prompt_tokens"], 1),
                 "dev_accuracy_lm_only": f["notes"]["dev_accuracy_lm_only"],
                 "dev_accuracy_fused": f["notes"]["dev_accuracy_fused"]} for f in fits]
        if over_cap:
            self.report.notes["over_token_cap"] = over_cap
        # 5. The Solver.
        raml = fit["solver"]
        raml.weight = fit["best"]["weight"]
        raml.prior = [float(x) for x in fit["prior"]] if fit["best"]["calibrate"] else None
        return raml


def _gold_indices(choices: list[str], example: Example) -> set[int]:
    """Indices of the accepted answers (``metadata["answers"]``, else ``answer``) among
    ``choices``, case-folded."""
    accepted = [str(a) for a in (example.metadata or {}).get("answers") or []]
    accepted = {a.casefold() for a in accepted or [example.answer or ""]}
    return {j for j, c in enumerate(choices) if c.casefold() in accepted}


def shared_choices(examples: list[Example]) -> list[str]:
    """The one choice set every example carries (same choices, same order), else [].

    Example:
        >>> ex = [Example(id=str(i), input="q", metadata={"choices": ["True", "False"]})
        ...       for i in range(2)]
        >>> shared_choices(ex), shared_choices(ex + [Example(id="x", input="q")])
        (['True', 'False'], [])
    """
    sets = {tuple(example_choices(None, e)) for e in examples}
    if len(sets) != 1:
        return []
    return list(next(iter(sets)))


__all__ = ["Raml", "RamlConfig", "RamlSolver", "fuse", "shared_choices"]
