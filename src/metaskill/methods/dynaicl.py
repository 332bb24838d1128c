"""dynaicl: a meta-controller decides how many demos each input gets, under a token budget.

Paper:
    Zhou, Jiang, Cotterell, Sachan (2023). "Efficient Prompting via Dynamic In-Context
    Learning" (DynaICL) -- a small meta-controller predicts how many demonstrations an
    input needs; demos are then allocated per input under a computation budget.

What we changed: the paper fine-tunes a T5 controller to predict the number of demos
directly. We probe each train/dev input at every k in ``ks`` (default {0, 1, 2, 4, 8})
and record whether the answer was right, then fit one scikit-learn logistic regression
per k on the input's MiniLM embedding plus cheap features (input length, similarity of
the nearest pool example) that predicts P(success | input, k). At test time the Solver
starts every input at the smallest k and spends a global prompt-token budget greedily
on the upgrade (to any larger k) with the best expected gain per extra token. The
selector that supplies the demos is pluggable, so "dynaicl over skill_demos" keeps the
skill selector and only decides how many. With a few dozen probes the per-input
regressions are noisy, so each prediction is blended with the k's overall success rate
on the probes by a weight chosen on dev (``shrink_candidates``; 0 spends the budget
like a mix of fixed k, 1 trusts the regressions alone). The budget is an average number
of prompt tokens per input; a batch of n inputs shares n times that. With no budget given it is
chosen on dev: the smallest budget whose dev accuracy reaches the best fixed k's.

Algorithm (what :meth:`DynaICL.fit` does):

1. Demo source: the incoming DemoSolver's selector (or kNN over train, or ``selector``).
2. Probe: answer every probe input (a seeded subset of train, and dev) with each k in
   ``ks``; success[x, k] and tokens[x, k]. The smallest k that answers correctly is each
   input's label in the paper's sense; their counts go in the report.
3. Cross-fit: controller on train probes only; on dev, compute accuracy and mean prompt
   tokens of (a) every fixed k, (b) the oracle that knows each input's cheapest
   successful k, (c) the controller's allocation at a range of budgets -- all from the
   dev probe table, without new LM calls. (c) is traced for each blend of the
   controller with the per-k success rates (``shrink_candidates``).
4. Budget: the given one, or the smallest dev budget matching the best fixed k; the
   blend that matches it cheapest (else the most accurate one) is kept.
5. Refit the controller on train + dev probes; return a :class:`DynaICLSolver`.

Example:
    >>> import numpy as np
    >>> p = np.array([[0.1, 0.9], [0.5, 0.55]])      # P(success) at k = 0 and k = 1
    >>> t = np.array([[10, 30], [10, 30]])           # prompt tokens at each k
    >>> allocate(p, t, budget=50).tolist()           # one upgrade fits: the better one
    [1, 0]
"""

from __future__ import annotations

import heapq
import random
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator

from metaskill.core.errors import MethodError
from metaskill.core.types import Example
from metaskill.eval.solver import Attempt, Solver
from metaskill.methods.base import Method, MethodConfig
from metaskill.methods.demos import (
    DemoSolver,
    KnnSelector,
    RandomSelector,
    Selector,
    demo_options_from,
    run_solver,
    selector_from_json,
)
from metaskill.tasks.base import Task


# ---------------------------------------------------------------------------------------
# Budgeted allocation (the test-time half of DynaICL)
# ---------------------------------------------------------------------------------------
def allocate(p: np.ndarray, tokens: np.ndarray, budget: float) -> np.ndarray:
    """Choose a level per input maximising expected successes under a token budget.

    Greedy by expected gain per token: every input starts at level 0; repeatedly apply
    the upgrade (input i from level a to any b > a with p[i, b] > p[i, a]) with the best
    (p[i, b] - p[i, a]) / (tokens[i, b] - tokens[i, a]) that still fits the budget.

    Args:
        p: ``(n, L)`` predicted success probability of input i at level j.
        tokens: ``(n, L)`` prompt tokens of input i at level j (increasing in j).
        budget: total tokens for all n inputs.

    Returns:
        ``(n,)`` chosen level indices. If even level 0 for all exceeds the budget, all 0.
    """
    n, levels = p.shape
    level = np.zeros(n, dtype=int)
    remaining = float(budget) - float(tokens[:, 0].sum())
    if remaining <= 0:
        return level

    def best_upgrade(i: int, cap: float) -> tuple[float, int, float] | None:
        a = level[i]
        best = None
        for b in range(a + 1, levels):
            gain = p[i, b] - p[i, a]
            cost = max(float(tokens[i, b] - tokens[i, a]), 1e-9)
            if gain <= 0 or cost > cap:
                continue
            ratio = gain / cost
            if best is None or ratio > best[0]:
                best = (ratio, b, cost)
        return best

    heap: list[tuple[float, int, int, float]] = []
    for i in range(n):
        up = best_upgrade(i, remaining)
        if up is not None:
            heapq.heappush(heap, (-up[0], i, up[1], up[2]))
    while heap:
        _, i, b, cost = heapq.heappop(heap)
        if b <= level[i]:
            continue  # stale entry
        if cost > remaining:
            up = best_upgrade(i, remaining)  # something cheaper may still fit
            if up is not None:
                heapq.heappush(heap, (-up[0], i, up[1], up[2]))
            continue
        level[i] = b
        remaining -= cost
        up = best_upgrade(i, remaining)
        if up is not None:
            heapq.heappush(heap, (-up[0], i, up[1], up[2]))
    return level


# ---------------------------------------------------------------------------------------
# The controller: P(success | input, k), one logistic regression per k
# ---------------------------------------------------------------------------------------
class Controller:
    """Per-k logistic regressions on ``[embedding, log length, nearest similarity]``.

    Stored as plain numbers (coefficients and intercepts); predicting needs only numpy.
    A k whose training labels are all equal predicts that constant (smoothed).

    ``shrink`` blends each prediction with the k's success rate on the training probes:
    ``shrink * p_input + (1 - shrink) * rate[k]``. With a few dozen probes and a
    384-dimensional embedding the per-input regressions are noisy (on ag_news no budget
    bought the best fixed k's dev accuracy); shrink = 0 spends the budget like a mix of
    fixed k, 1 trusts the regressions alone. It is chosen on dev. On ag_news and trec at
    n=100 no blend did better than the controller alone
    (``benchmarks/results/vs_dspy_ag_news_100.md``).
    """

    def __init__(self, ks: list[int], coefs: list[list[float] | None],
                 intercepts: list[float], *, rates: list[float] | None = None,
                 shrink: float = 1.0) -> None:
        self.ks = list(ks)
        self.coefs = coefs
        self.intercepts = intercepts
        self.rates = list(rates) if rates is not None else None
        self.shrink = float(shrink)

    @classmethod
    def train(cls, features: np.ndarray, success: np.ndarray, ks: list[int],
              c: float = 1.0, seed: int = 0) -> Controller:
        """Fit one logistic regression per k column of ``success`` (n, len(ks))."""
        from sklearn.linear_model import LogisticRegression

        coefs: list[list[float] | None] = []
        intercepts: list[float] = []
        n = len(success)
        for j in range(len(ks)):
            y = success[:, j].astype(int)
            if y.min() == y.max():
                rate = (y.sum() + 0.5) / (n + 1.0)  # smoothed constant
                coefs.append(None)
                intercepts.append(float(np.log(rate / (1 - rate))))
                continue
            model = LogisticRegression(C=c, max_iter=2000, random_state=seed)
            model.fit(features, y)
            coefs.append([float(x) for x in model.coef_[0]])
            intercepts.append(float(model.intercept_[0]))
        rates = [float((success[:, j].sum() + 0.5) / (n + 1.0)) for j in range(len(ks))]
        return cls(ks, coefs, intercepts, rates=rates)

    def with_shrink(self, shrink: float) -> Controller:
        """The same regressions, blended with the per-k rates by ``shrink``."""
        return Controller(self.ks, self.coefs, self.intercepts, rates=self.rates,
                          shrink=shrink)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """``(n, len(ks))`` success probabilities."""
        out = np.zeros((len(features), len(self.ks)))
        for j, (w, b) in enumerate(zip(self.coefs, self.intercepts, strict=True)):
            z = np.full(len(features), b) if w is None else features @ np.asarray(w) + b
            out[:, j] = 1.0 / (1.0 + np.exp(-z))
        if self.rates is not None and self.shrink < 1.0:
            out = self.shrink * out + (1.0 - self.shrink) * np.asarray(self.rates)[None, :]
        return out

    def to_json(self) -> dict[str, Any]:
        """Plain JSON."""
        return {"ks": self.ks, "coefs": self.coefs, "intercepts": self.intercepts,
                "rates": self.rates, "shrink": self.shrink}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Controller:
        """Inverse of :meth:`to_json` (files without ``rates``/``shrink`` load unblended)."""
        return cls(data["ks"], data["coefs"], data["intercepts"], rates=data.get("rates"),
                   shrink=data.get("shrink", 1.0))


def features_of(examples: list[Example], embedder: Any, selector: Selector | None) -> np.ndarray:
    """Controller features: embedding, log word count, cosine of the nearest pool example."""
    emb = np.asarray(embedder.encode([e.text for e in examples]), dtype=float)
    length = np.array([[np.log1p(len(e.text.split())) / 4.0] for e in examples])
    if isinstance(selector, KnnSelector):
        q = selector.query_vectors(examples)
        top = []
        for e, v in zip(examples, q, strict=True):
            ranked = selector.ranked(e, v)
            top.append([ranked[0][0] if ranked else 0.0])
        near = np.array(top)
    else:
        near = np.zeros((len(examples), 1))
    return np.hstack([emb, length, near])


# ---------------------------------------------------------------------------------------
# The Solver
# ---------------------------------------------------------------------------------------
class DynaICLSolver(DemoSolver):
    """A DemoSolver whose k per input comes from the controller and a token budget.

    Args:
        lm: the LM.
        selector: where demos come from.
        controller: the fitted :class:`Controller`.
        budget_tokens: average prompt tokens per input; a batch of n inputs shares
            ``n * budget_tokens``.
        embedder: the controller's embedder (None: load ``embedder_spec`` on first use).
        embedder_spec: spec of that embedder (saved in the JSON).
        **options: DemoSolver prompt options.

    Attempts' ``meta`` adds ``p_success`` (the controller's estimate at the chosen k).
    """

    kind: ClassVar[str] = "dynaicl"

    def __init__(self, lm: Any, selector: Selector | None, controller: Controller, *,
                 budget_tokens: float, embedder: Any = None, embedder_spec: str = "minilm",
                 **options: Any) -> None:
        options.pop("k", None)
        options.pop("k_overrides", None)
        super().__init__(lm, selector, k=max(controller.ks), **options)
        self.controller = controller
        self.budget_tokens = float(budget_tokens)
        self._embedder = embedder
        self.embedder_spec = getattr(embedder, "spec", None) or embedder_spec
        self._last: dict[str, float] = {}

    @property
    def embedder(self) -> Any:
        """The controller's embedder (loaded on first use)."""
        if self._embedder is None:
            from metaskill.skills.embed import load_embedder

            self._embedder = load_embedder(self.embedder_spec)
        return self._embedder

    def token_table(self, task: Any, examples: list[Example]) -> np.ndarray:
        """``(n, len(ks))`` prompt tokens of each input at each k."""
        table = np.zeros((len(examples), len(self.controller.ks)))
        for j, k in enumerate(self.controller.ks):
            built = self.build_requests(task, examples, [k] * len(examples))
            for i, (req, _) in enumerate(built):
                table[i, j] = self.lm.count_tokens(self.lm.prompt_of(req))
        return table

    def ks_for(self, task: Any, examples: Any) -> list[int]:
        """Allocate k per input: predict success per k, then :func:`allocate` the budget."""
        examples = list(examples)
        if not examples:
            return []
        p = self.controller.predict(features_of(examples, self.embedder, self.selector))
        tokens = self.token_table(task, examples)
        levels = allocate(p, tokens, self.budget_tokens * len(examples))
        self._last = {e.id: float(p[i, levels[i]]) for i, e in enumerate(examples)}
        return [self.controller.ks[j] for j in levels]

    def solve(self, task: Task, examples: list[Example]) -> list[Attempt]:
        """DemoSolver.solve with the allocated k; meta adds ``p_success``."""
        out = super().solve(task, examples)
        for a in out:
            if a.example_id in self._last:
                a.meta["p_success"] = round(self._last[a.example_id], 4)
        return out

    def state(self) -> dict[str, Any]:
        return {**super().state(), "controller": self.controller.to_json(),
                "budget_tokens": self.budget_tokens, "embedder": self.embedder_spec}

    @classmethod
    def from_state(cls, state: dict[str, Any], lm: Any) -> DynaICLSolver:
        sel = state.get("selector")
        return cls(lm, selector_from_json(sel) if sel else None,
                   Controller.from_json(state["controller"]),
                   budget_tokens=state["budget_tokens"], embedder_spec=state["embedder"],
                   **cls.options_from_state(state))


# ---------------------------------------------------------------------------------------
# The Method
# ---------------------------------------------------------------------------------------
class DynaICLConfig(MethodConfig):
    """Options of :class:`DynaICL`."""

    ks: list[int] = Field(default_factory=lambda: [0, 1, 2, 4, 8],
                          description="candidate numbers of demos, increasing")
    selector: Literal["inherit", "knn", "knn_balanced", "random", "skill"] = Field(
        "inherit", description="demo source: inherit an incoming DemoSolver's (else knn), "
        "or name one ('skill' needs skill_demos applied first)")
    budget_tokens: float | None = Field(
        None, gt=0, description="average prompt tokens per input; None: chosen on dev")
    match_tolerance: float = Field(
        0.0, ge=0.0, le=1.0,
        description="with no budget: accept dev accuracy this far below the best fixed k")
    max_train_probe: int | None = Field(
        60, ge=1, description="probe at most this many train inputs (seeded subset); 60 as "
        "in every dynaicl row of benchmarks/results/vs_dspy.md")
    max_dev: int | None = Field(None, ge=1, description="probe at most this many dev inputs")
    c: float = Field(1.0, gt=0, description="inverse L2 strength of the logistic regressions")
    shrink_candidates: list[float] = Field(
        default_factory=lambda: [1.0, 0.75, 0.5, 0.25, 0.0],
        description="blends of the per-input controller with the per-k success rates "
                    "(1 = controller only, 0 = rates only) to choose among on dev")
    seed: int = Field(0, description="seed of the probe subset and the regressions")

    @field_validator("ks")
    @classmethod
    def _ks(cls, v: list[int]) -> list[int]:
        if len(v) < 2 or any(k < 0 for k in v) or sorted(set(v)) != list(v):
            raise ValueError("ks must be at least two distinct increasing numbers >= 0")
        return v

    @field_validator("shrink_candidates")
    @classmethod
    def _shrinks(cls, v: list[float]) -> list[float]:
        if any(not 0.0 <= a <= 1.0 for a in v):
            raise ValueError(f"shrink_candidates must lie in [0, 1], got {v}")
        return v


class DynaICL(Method):
    """Per-input number of demos from a learned controller, under a token budget (DynaICL)."""

    name: ClassVar[str] = "dynaicl"
    Config: ClassVar[type[MethodConfig]] = DynaICLConfig
    config: DynaICLConfig

    def _selector(self, solver: Any, train: list[Example]) -> tuple[Selector, dict[str, Any]]:
        cfg = self.config
        options = demo_options_from(solver)
        incoming = solver.selector if isinstance(solver, DemoSolver) else None
        if cfg.selector == "inherit" and incoming is not None:
            return incoming, options
        if cfg.selector == "skill":
            if incoming is not None and incoming.kind == "skill":
                return incoming, options
            raise MethodError(
                "dynaicl: selector 'skill' needs skill demos to allocate; apply skill_demos "
                "first (--method skill_demos,dynaicl)."
            )
        pool = [e for e in train if e.answer is not None]
        if not pool:
            raise MethodError("dynaicl: no training examples with answers to use as demos.")
        if cfg.selector == "random":
            return RandomSelector(pool, seed=cfg.seed), options
        return KnnSelector(pool, embedder=self.resources.get_embedder(),
                           balanced=cfg.selector == "knn_balanced"), options

    def _probe(self, lm: Any, selector: Selector, options: dict[str, Any], task: Any,
               examples: list[Example], label: str) -> tuple[np.ndarray, np.ndarray]:
        """success and prompt tokens of each input at each k (one LM call per pair)."""
        ks = self.config.ks
        success = np.zeros((len(examples), len(ks)))
        tokens = np.zeros((len(examples), len(ks)))
        for j, k in enumerate(ks):
            fixed = DemoSolver(lm, selector, k=k, **options)
            attempts, scores = run_solver(fixed, task, examples, self.report,
                                          progress=self.resources.progress,
                                          executor=self.resources.executor,
                                          label=f"dynaicl probe {label} k={k}")
            success[:, j] = np.array(scores) >= 0.5
            # priced as at test time: tokens of the rendered prompt
            tokens[:, j] = [lm.count_tokens(a.prompt) for a in attempts]
        return success, tokens

    def fit(self, solver: Solver, task: Task, train: list[Example],
            dev: list[Example] | None = None) -> DynaICLSolver:
        """Probe, fit the controller, trace the dev curve, pick the budget (module doc)."""
        cfg = self.config
        dev_set = list(dev or [])[: cfg.max_dev]
        if not dev_set:
            raise MethodError("dynaicl: needs dev examples to trace the accuracy-vs-tokens "
                              "curve and choose the budget.")
        # 1. Demo source.
        selector, options = self._selector(solver, train)
        embedder = self.resources.get_embedder()

        # 2. Probe train (a seeded subset) and dev at every k.
        probe = [e for e in train if e.answer is not None]
        random.Random(cfg.seed).shuffle(probe)
        probe = probe[: cfg.max_train_probe]
        if len(probe) < 4:
            raise MethodError(f"dynaicl: needs at least 4 labelled train examples to train "
                              f"the controller, got {len(probe)}.")
        s_tr, _ = self._probe(solver.lm, selector, options, task, probe, "train")
        s_dv, t_dv = self._probe(solver.lm, selector, options, task, dev_set, "dev")
        f_tr = features_of(probe, embedder, selector)
        f_dv = features_of(dev_set, embedder, selector)

        # 3. Cross-fitted controller -> dev curve against fixed k and the oracle, for each
        #    blend with the per-k rates (shrink).
        ctrl = Controller.train(f_tr, s_tr, cfg.ks, c=cfg.c, seed=cfg.seed)
        shrinks = list(dict.fromkeys(cfg.shrink_candidates)) or [1.0]

        # 4. Budget: given, or the cheapest dev budget that matches the best fixed k;
        #    the blend whose curve gets there cheapest (else the most accurate) is kept.
        def choose(curve: dict[str, Any], p_dv: np.ndarray) -> tuple[tuple, dict[str, float]]:
            best_fixed = max(curve["fixed"], key=lambda r: (r["accuracy"], -r["tokens"]))
            if cfg.budget_tokens is not None:
                point = point_at(p_dv, s_dv, t_dv, float(cfg.budget_tokens))
                return (point["accuracy"], -point["tokens"]), point
            ok = [r for r in curve["dynaicl"]
                  if r["accuracy"] >= best_fixed["accuracy"] - cfg.match_tolerance - 1e-12]
            if ok:
                point = min(ok, key=lambda r: r["budget"])
                return (1, -point["budget"], 0.0), point
            point = max(curve["dynaicl"], key=lambda r: (r["accuracy"], -r["budget"]))
            return (0, point["accuracy"], -point["budget"]), point

        tried = []
        for a in shrinks:
            p_dv = ctrl.with_shrink(a).predict(f_dv)
            curve = dev_curve(p_dv, s_dv, t_dv, cfg.ks)
            key, point = choose(curve, p_dv)
            tried.append({"shrink": a, "key": key, "point": point, "curve": curve})
        pick = max(range(len(tried)), key=lambda i: (tried[i]["key"], -i))
        shrink, chosen, curve = (tried[pick]["shrink"], tried[pick]["point"],
                                 tried[pick]["curve"])
        best_fixed = max(curve["fixed"], key=lambda r: (r["accuracy"], -r["tokens"]))
        budget = float(chosen["budget"])

        # 5. Final controller on train + dev probes.
        final = Controller.train(np.vstack([f_tr, f_dv]), np.vstack([s_tr, s_dv]), cfg.ks,
                                 c=cfg.c, seed=cfg.seed).with_shrink(shrink)
        smallest = [_smallest_k(row, cfg.ks) for row in np.vstack([s_tr, s_dv])]
        self.report.notes.update({
            "dev_accuracy": chosen["accuracy"],
            "dev_prompt_tokens": chosen["tokens"],
            "budget_tokens": budget,
            "best_fixed_k": best_fixed,
            "token_saving_vs_best_fixed": (1 - chosen["tokens"] / best_fixed["tokens"]
                                           if best_fixed["tokens"] else 0.0),
            "oracle": curve["oracle"],
            "curve": curve,
            "shrink": shrink,
            "shrink_tried": [{"shrink": t["shrink"], "accuracy": t["point"]["accuracy"],
                              "tokens": t["point"]["tokens"]} for t in tried],
            "smallest_k_counts": {str(k): smallest.count(k) for k in [*cfg.ks, None]},
            "probe": {"train": len(probe), "dev": len(dev_set), "ks": cfg.ks},
            "selector": selector.kind,
        })
        return DynaICLSolver(solver.lm, selector, final, budget_tokens=budget,
                             embedder=embedder, **options)


def _smallest_k(row: np.ndarray, ks: list[int]) -> int | None:
    hits = [k for k, s in zip(ks, row, strict=True) if s]
    return hits[0] if hits else None


def point_at(p: np.ndarray, success: np.ndarray, tokens: np.ndarray,
             budget: float) -> dict[str, float]:
    """Realised accuracy and mean tokens of the allocation at ``budget`` tokens per input."""
    levels = allocate(p, tokens, budget * len(p))
    rows = np.arange(len(p))
    return {"budget": float(budget),
            "accuracy": float(success[rows, levels].mean()),
            "tokens": float(tokens[rows, levels].mean())}


def dev_curve(p: np.ndarray, success: np.ndarray, tokens: np.ndarray, ks: list[int],
              points: int = 12) -> dict[str, Any]:
    """Accuracy vs mean prompt tokens on probed inputs: fixed k, oracle, DynaICL budgets.

    Args:
        p: the controller's predicted success (n, len(ks)).
        success: the probed outcome (n, len(ks)).
        tokens: the probed prompt tokens (n, len(ks)).
        ks: the k of each column.
        points: budgets traced between the cheapest and the dearest fixed k.

    Example:
        >>> s = np.array([[0, 1], [1, 1]]); t = np.array([[10, 20], [10, 20]])
        >>> dev_curve(s.astype(float), s, t, [0, 4])["oracle"]
        {'accuracy': 1.0, 'tokens': 15.0}
    """
    rows = np.arange(len(success))
    fixed = [{"k": k, "accuracy": float(success[:, j].mean()),
              "tokens": float(tokens[:, j].mean())} for j, k in enumerate(ks)]
    # Oracle: the cheapest successful k per input (the smallest k when none succeeds).
    cost = np.where(success > 0, tokens, np.inf)
    best = np.argmin(cost, axis=1)
    solved = np.isfinite(cost[rows, best])
    best = np.where(solved, best, 0)
    oracle = {"accuracy": float(solved.mean()), "tokens": float(tokens[rows, best].mean())}
    lo, hi = float(tokens[:, 0].mean()), float(tokens[:, -1].mean())
    budgets = sorted({*np.linspace(lo, hi, points).round(1).tolist(),
                      *[round(r["tokens"], 1) for r in fixed]})
    dyn = [point_at(p, success, tokens, b) for b in budgets]
    return {"fixed": fixed, "oracle": oracle, "dynaicl": dyn}


def curve_svg(notes: dict[str, Any], title: str = "dynaicl on dev") -> str:
    """dynaicl's dev accuracy-vs-prompt-tokens curve as an inline ``<svg>`` (matplotlib).

    Draws the fixed-k points, the controller's allocation at each traced budget, the
    oracle that knows each input's cheapest successful k, and the budget that was kept.

    Args:
        notes: a dynaicl fit report's ``notes`` (``curve``, ``budget_tokens``, ...).
        title: the plot's title.

    Example:
        >>> notes = {"curve": {"fixed": [{"k": 0, "accuracy": 0.5, "tokens": 20.0},
        ...                               {"k": 4, "accuracy": 0.8, "tokens": 120.0}],
        ...                     "oracle": {"accuracy": 0.9, "tokens": 40.0},
        ...                     "dynaicl": [{"budget": 20.0, "accuracy": 0.5, "tokens": 20.0},
        ...                                 {"budget": 70.0, "accuracy": 0.8, "tokens": 68.0}]},
        ...          "dev_accuracy": 0.8, "dev_prompt_tokens": 68.0}
        >>> curve_svg(notes).startswith("<svg")
        True
    """
    from metaskill.eval.report import figure_svg

    curve = notes.get("curve")
    if not curve or not curve.get("fixed"):
        raise MethodError("dynaicl: this fit report has no accuracy-vs-tokens curve "
                          "(notes['curve']); was it written by dynaicl?")

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        fixed = curve["fixed"]
        ax.plot([r["tokens"] for r in fixed], [r["accuracy"] for r in fixed], "s--",
                color="#8C8C8C", markersize=6, label="fixed k")
        for r in fixed:
            ax.annotate(f"k={r['k']}", (r["tokens"], r["accuracy"]),
                        textcoords="offset points", xytext=(5, -10), fontsize=7)
        dyn = sorted(curve["dynaicl"], key=lambda r: r["tokens"])
        ax.plot([r["tokens"] for r in dyn], [r["accuracy"] for r in dyn], "o-",
                color="#4C72B0", markersize=4, label="dynaicl (budgets traced on dev)")
        o = curve["oracle"]
        ax.plot([o["tokens"]], [o["accuracy"]], "*", color="#55A868", markersize=12,
                label="oracle (cheapest successful k per input)")
        if "dev_prompt_tokens" in notes:
            ax.plot([notes["dev_prompt_tokens"]], [notes["dev_accuracy"]], "o",
                    markerfacecolor="none", markeredgecolor="#C44E52", markersize=13,
                    markeredgewidth=1.5, label="kept budget")
        ax.set_xlabel("mean prompt tokens per input")
        ax.set_ylabel("accuracy on dev")
        ax.yaxis.set_major_formatter(lambda y, _: f"{100 * y:.0f}%")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, loc="lower right")

    return figure_svg(draw, (6.0, 3.6), salt="dynaicl")
