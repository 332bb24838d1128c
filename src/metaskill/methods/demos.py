"""Per-input demonstrations: the shared Solver and selectors that demo methods build on.

A :class:`DemoSolver` answers each input with its own demonstrations. Which demos is
decided by a pluggable :class:`Selector` (``select(example, k) -> list[Example]``, most
relevant first); how many by ``k``, a per-input override map, or a subclass's
:meth:`DemoSolver.ks_for` (DynaICL allocates ``k`` per input under a token budget); in which
order by ``order`` (nearest last by default, after Liu et al. 2022). The prompt is either a
chat conversation (one user/assistant turn per demo) or a plain-completion prompt (demos
rendered with the task's template, separated by blank lines) for base models.

Selectors shipped here:

* ``random`` (:class:`RandomSelector`) -- k random pool examples, the same for every input
  unless ``per_input``; the classic fixed-k few-shot prompt.
* ``knn`` (:class:`KnnSelector`) -- the k pool examples nearest by embedding, optionally
  label-balanced for classification (:mod:`metaskill.methods.knn_demos`).
* ``skill`` -- registered lazily for :mod:`metaskill.methods.skill_demos`.

A new selector subclasses :class:`Selector`, sets ``kind``, implements ``select``,
``state`` and ``from_state``, and is registered in :data:`SELECTORS` (lazily, by
``"module:Class"``, so a saved Solver reloads without importing the method that built it).

Fit-time helpers shared by all methods: :func:`run_solver` (score a Solver on dev with the
harness, :func:`metaskill.eval.harness.evaluate`, and account tokens and LM calls into a
:class:`~metaskill.methods.base.FitReport`), :func:`parse_answer` (normalise an output
through the task verifier's ``parse``, which never looks at the reference),
:func:`prompt_variants` (the prompt formats, with or without instructions, to score on dev).

Example:
    >>> from metaskill.core.types import Example
    >>> from metaskill.lm.fake import ScriptedLM
    >>> pool = [Example(id=f"t{i}", input=f"review {i}", answer="positive") for i in range(3)]
    >>> solver = DemoSolver(ScriptedLM(default="positive"), RandomSelector(pool, seed=0), k=2)
    >>> solver.to_json()["kind"], solver.to_json()["state"]["k"]
    ('demos', 2)
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from metaskill.core.errors import ContextOverflowError, MetaskillError, MethodError
from metaskill.core.registry import Registry
from metaskill.core.types import Example, Request, Usage
from metaskill.eval.harness import evaluate
from metaskill.eval.run import Record
from metaskill.eval.solver import (
    Attempt,
    PromptFormat,
    Solver,
    answer_max_tokens,
    prompt_request,
    uses_chat,
)
from metaskill.eval.solvers import choice_request, example_choices
from metaskill.methods.base import FitReport, MethodConfig

if TYPE_CHECKING:
    from metaskill.tasks.base import Task

Order = Literal["nearest_last", "nearest_first", "random"]
AnswerMode = Literal["generate", "choices"]

#: kind -> Selector subclass (lazy ``"module:Class"`` targets allowed).
SELECTORS: Registry[Any] = Registry("demo selector")


def examples_to_json(examples: Sequence[Example]) -> list[dict[str, Any]]:
    """Examples as plain JSON-able dicts (for Solver state)."""
    return [e.model_dump(mode="json") for e in examples]


def examples_from_json(rows: Sequence[dict[str, Any]]) -> list[Example]:
    """Inverse of :func:`examples_to_json`."""
    return [Example.model_validate(r) for r in rows]


# ---------------------------------------------------------------------------------------
# Selectors
# ---------------------------------------------------------------------------------------
class Selector(ABC):
    """Picks demonstrations for one input from a pool of labelled examples.

    Contract: :meth:`select` returns at most ``k`` examples, most relevant first, never
    the input itself (same ``id``), and never looks at the input's reference answer.
    """

    kind: ClassVar[str] = "selector"

    @abstractmethod
    def select(self, example: Example, k: int) -> list[Example]:
        """Up to ``k`` demos for ``example``, most relevant first."""

    def select_batch(self, examples: Sequence[Example], ks: Sequence[int]) -> list[list[Example]]:
        """Demos for many inputs (``ks[i]`` for input ``i``); override to batch embedding."""
        return [self.select(e, k) for e, k in zip(examples, ks, strict=True)]

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """JSON-able state from which :meth:`from_state` rebuilds the selector."""

    @classmethod
    @abstractmethod
    def from_state(cls, state: dict[str, Any]) -> Selector:
        """Rebuild from :meth:`state`'s output."""

    def to_json(self) -> dict[str, Any]:
        """``{"kind": ..., "state": ...}``; reload with :func:`selector_from_json`."""
        return {"kind": self.kind, "state": self.state()}


def selector_from_json(data: dict[str, Any]) -> Selector:
    """Rebuild a Selector saved with :meth:`Selector.to_json`.

    Example:
        >>> s = RandomSelector([Example(id="a", input="x", answer="y")], seed=1)
        >>> selector_from_json(s.to_json()).kind
        'random'
    """
    cls = SELECTORS.get(data["kind"])
    return cls.from_state(data.get("state", {}))


class RandomSelector(Selector):
    """``k`` random pool examples: the same for every input (a fixed prompt) by default.

    Args:
        pool: labelled examples to draw from.
        seed: the draw's seed.
        per_input: draw a fresh sample per input (seeded by the input's id) instead.
    """

    kind = "random"

    def __init__(self, pool: Sequence[Example], seed: int = 0, per_input: bool = False) -> None:
        if not pool:
            raise MethodError("random demos: the demo pool is empty; give training examples.")
        self.pool = list(pool)
        self.seed = seed
        self.per_input = per_input
        self._order = list(range(len(self.pool)))
        random.Random(seed).shuffle(self._order)

    def select(self, example: Example, k: int) -> list[Example]:
        order = self._order
        if self.per_input:
            order = list(range(len(self.pool)))
            random.Random(f"{self.seed}:{example.id}").shuffle(order)
        out = [self.pool[i] for i in order if self.pool[i].id != example.id]
        return out[: max(0, k)]

    def state(self) -> dict[str, Any]:
        return {"pool": examples_to_json(self.pool), "seed": self.seed,
                "per_input": self.per_input}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RandomSelector:
        return cls(examples_from_json(state["pool"]), seed=state.get("seed", 0),
                   per_input=state.get("per_input", False))


class KnnSelector(Selector):
    """The ``k`` pool examples nearest to the input by embedding (cosine similarity).

    Args:
        pool: labelled examples to draw from.
        embedder: an object with ``encode(texts) -> (n, d)`` normalised rows and a
            ``spec`` string; None loads ``embedder_spec`` on first use.
        embedder_spec: spec for :func:`metaskill.skills.embed.load_embedder` (``minilm``,
            ``hash:256`` ...), saved in the state so a reloaded Solver can embed again.
        balanced: label-balanced variant: take the nearest examples of each label in
            turn (round robin), so every label is shown about equally often.
        pool_vectors: precomputed pool embeddings (rows in pool order), if at hand.
    """

    kind = "knn"

    def __init__(
        self,
        pool: Sequence[Example],
        embedder: Any = None,
        embedder_spec: str | None = None,
        balanced: bool = False,
        pool_vectors: np.ndarray | None = None,
    ) -> None:
        if not pool:
            raise MethodError("knn demos: the demo pool is empty; give training examples.")
        if embedder is None and embedder_spec is None:
            raise MethodError("knn demos: needs an embedder or an embedder spec (e.g. 'minilm').")
        self.pool = list(pool)
        self._embedder = embedder
        self.embedder_spec = embedder_spec or getattr(embedder, "spec", "minilm")
        self.balanced = balanced
        self._pool_vecs = pool_vectors
        self._query_cache: dict[str, np.ndarray] = {}
        self._ids = [e.id for e in self.pool]

    @property
    def embedder(self) -> Any:
        """The embedder, loaded from ``embedder_spec`` on first use."""
        if self._embedder is None:
            from metaskill.skills.embed import load_embedder

            self._embedder = load_embedder(self.embedder_spec)
        return self._embedder

    def pool_vectors(self) -> np.ndarray:
        """Embeddings of the pool (computed once)."""
        if self._pool_vecs is None:
            self._pool_vecs = np.asarray(self.embedder.encode([e.text for e in self.pool]))
        return self._pool_vecs

    def query_vectors(self, examples: Sequence[Example]) -> np.ndarray:
        """Embeddings of inputs (memoised per text on this selector)."""
        todo = [e.text for e in examples if e.text not in self._query_cache]
        if todo:
            uniq = list(dict.fromkeys(todo))
            for t, v in zip(uniq, np.asarray(self.embedder.encode(uniq)), strict=True):
                self._query_cache[t] = v
        return np.stack([self._query_cache[e.text] for e in examples])

    def ranked(self, example: Example, query: np.ndarray) -> list[tuple[float, int]]:
        """Pool indices by decreasing similarity to ``query`` (the input itself excluded)."""
        sims = self.pool_vectors() @ query
        order = np.argsort(-sims, kind="stable")
        return [(float(sims[i]), int(i)) for i in order if self._ids[i] != example.id]

    def _pick(self, ranked: list[tuple[float, int]], k: int) -> list[Example]:
        if k <= 0:
            return []
        if not self.balanced:
            return [self.pool[i] for _, i in ranked[:k]]
        by_label: dict[str, list[tuple[float, int]]] = {}
        for s, i in ranked:
            by_label.setdefault(str(self.pool[i].answer), []).append((s, i))
        queues = sorted(by_label.values(), key=lambda q: -q[0][0])
        chosen: list[tuple[float, int]] = []
        depth = 0
        while len(chosen) < k and any(depth < len(q) for q in queues):
            for q in queues:
                if depth < len(q) and len(chosen) < k:
                    chosen.append(q[depth])
            depth += 1
        chosen.sort(key=lambda t: -t[0])
        return [self.pool[i] for _, i in chosen]

    def select(self, example: Example, k: int) -> list[Example]:
        return self.select_batch([example], [k])[0]

    def select_batch(self, examples: Sequence[Example], ks: Sequence[int]) -> list[list[Example]]:
        if not examples:
            return []
        queries = self.query_vectors(examples)
        return [self._pick(self.ranked(e, q), k)
                for e, q, k in zip(examples, queries, ks, strict=True)]

    def neighbours(self, example: Example, k: int) -> list[tuple[Example, float]]:
        """The ``k`` nearest pool examples with their cosine similarities (for RAML)."""
        ranked = self.ranked(example, self.query_vectors([example])[0])
        return [(self.pool[i], s) for s, i in ranked[:k]]

    def state(self) -> dict[str, Any]:
        return {"pool": examples_to_json(self.pool), "embedder": self.embedder_spec,
                "balanced": self.balanced}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> KnnSelector:
        return cls(examples_from_json(state["pool"]), embedder_spec=state["embedder"],
                   balanced=state.get("balanced", False))


SELECTORS.register("random", RandomSelector)
SELECTORS.register("knn", KnnSelector)
SELECTORS.register("skill", "metaskill.methods.skill_demos:SkillSelector")


# ---------------------------------------------------------------------------------------
# Answer parsing and fit-time accounting
# ---------------------------------------------------------------------------------------
def parse_answer(task: Task | None, output: str, example: Example) -> str:
    """Normalise an output to a comparable answer WITHOUT looking at the reference.

    The task verifier's :meth:`~metaskill.tasks.base.Verifier.parse` (lower-cased),
    else -- no verifier, one that reads no answer (None) or one that fails -- the
    stripped, lower-cased first line.

    Example:
        >>> parse_answer(None, "  Positive\\nbecause", Example(id="a", input="x"))
        'positive'
    """
    verifier = getattr(task, "verifier", None)
    if verifier is not None:
        try:
            got = verifier.parse(output, example)
        except Exception:  # a verifier that needs the reference, a crashing scorer
            got = None
        if got is not None:
            return str(got).strip().lower()
    lines = output.strip().splitlines()
    return lines[0].strip().lower() if lines else ""


def run_solver(
    solver: Solver,
    task: Task,
    examples: Sequence[Example],
    report: FitReport | None = None,
    *,
    batch_size: int = 32,
    progress: bool = False,
    label: str = "solving",
    executor: Any = None,
) -> tuple[list[Attempt], list[float]]:
    """Score ``solver`` on ``examples`` with the harness, and charge the cost to ``report``.

    A method's dev scoring is an ordinary in-memory run:
    :func:`metaskill.eval.harness.evaluate` with ``examples=`` and ``store=None``. So an
    example on which the Solver or the Verifier raises is recorded as failed (score 0, its
    attempt's ``error`` says why) and the fit goes on; only errors about the environment
    (:data:`~metaskill.eval.harness.FATAL_ERRORS`) and a first batch that fails entirely
    with one error (a setup problem) stop it. Every attempt's usage is added to
    ``report.usage``; LM calls are counted from ``attempt.meta["lm_calls"]`` (1 where
    absent).

    Args:
        solver: the Solver to score.
        task: the task; its Verifier scores each output.
        examples: the examples (ids unique), e.g. the dev set a method selects on.
        report: the fit report charged with usage and LM calls (None: not charged).
        batch_size: examples per ``solver.solve`` call.
        progress: show a progress bar on stderr.
        label: names the examples in the progress bar (e.g. ``"knn_demos dev"``).
        executor: where the harness solves the batches (None: here; e.g. Ray workers,
            :mod:`metaskill.distributed`).

    Returns:
        One attempt per example, in order (rebuilt from the run's records: ``meta`` keeps
        the Solver's details plus ``raw``), and one verifier score per example (0.0 for a
        failed one).

    Example:
        >>> from metaskill.lm.fake import ScriptedLM
        >>> from metaskill.tasks.base import Task, Verdict, Verifier
        >>> class Exact(Verifier):
        ...     def verify(self, output, ex):
        ...         return Verdict(score=float(output.strip() == ex.answer))
        >>> task = Task(name="t", splits={}, verifier=Exact())
        >>> ex = [Example(id="1", input="x", answer="y")]
        >>> s = DemoSolver(ScriptedLM(default="y"), None, k=0)
        >>> run_solver(s, task, ex)[1]
        [1.0]
    """
    if not examples:
        return [], []
    run = evaluate(solver, task, label, examples=examples, batch_size=batch_size,
                   progress=progress, executor=executor)
    attempts = [_attempt_of(r) for r in run.records]
    if report is not None:
        charge(report, attempts)
    return attempts, [float(r.score) for r in run.records]


def _attempt_of(record: Record) -> Attempt:
    """The Attempt a harness Record was made from (its verdict details left out)."""
    meta = {k: v for k, v in record.meta.items() if k != "verdict"}
    meta["raw"] = record.raw
    return Attempt(example_id=record.example_id, prompt=record.prompt, output=record.output,
                   usage=record.usage, latency_s=record.latency_s, error=record.error,
                   meta=meta)


def prompt_variants(
    method: str,
    lm: Any,
    format_candidates: Sequence[PromptFormat] | None,
    try_no_instructions: bool,
    default_format: PromptFormat | None,
    uses_chat: Callable[[PromptFormat | None], bool],
) -> list[tuple[PromptFormat | None, bool]]:
    """The (prompt format, bare) variants a demo method scores on dev.

    ``format_candidates`` (deduplicated, in order) or else ``[default_format]``; with
    ``try_no_instructions`` each plain-completion format also comes without the task's
    instruction preamble (``bare=True``). A chat prompt never goes bare: there the
    instructions are the only thing that says what the turns are for.

    Args:
        method: The calling method's name, for error messages.
        lm: The model; ``lm.chat`` false means it has no chat template.
        format_candidates: Formats to try, or None for the default only.
        try_no_instructions: Also try bare plain-completion prompts.
        default_format: The format used when ``format_candidates`` is empty.
        uses_chat: Whether a Solver built with a format would render a chat prompt.

    Raises:
        MethodError: 'chat' asked of a model without a chat template, or
            ``try_no_instructions`` without any plain-completion format.

    Example:
        >>> prompt_variants("knn_demos", None, ["chat", "completion"], True, None,
        ...                 lambda f: f == "chat")
        [('chat', False), ('completion', False), ('completion', True)]
    """
    formats: list[PromptFormat | None] = list(dict.fromkeys(format_candidates or []))
    if "chat" in formats and not getattr(lm, "chat", True):
        raise MethodError(f"{method}: format_candidates lists 'chat' but the model has no chat "
                          "template; use ['completion'] or leave it unset.")
    formats = formats or [default_format]
    bares = [False, True] if try_no_instructions else [False]
    variants = [(f, bare) for f in formats for bare in bares if not bare or not uses_chat(f)]
    if try_no_instructions and not any(bare for _, bare in variants):
        raise MethodError(f"{method}: try_no_instructions applies to the plain-completion "
                          "format only; add 'completion' to format_candidates.")
    return variants


def charge(report: FitReport, attempts: Sequence[Attempt]) -> None:
    """Add attempts' usage and LM calls to a fit report (in place)."""
    for a in attempts:
        report.usage = report.usage + a.usage
        report.lm_calls += int(a.meta.get("lm_calls", 1))


def _progress(items: list[Any], label: str, enabled: bool) -> Any:
    if not enabled or len(items) < 2:
        return items
    from rich.console import Console
    from rich.progress import track

    return track(items, description=label, console=Console(stderr=True), transient=True)


# ---------------------------------------------------------------------------------------
# The DemoSolver
# ---------------------------------------------------------------------------------------
class DemoConfig(BaseModel):
    """How a :class:`DemoSolver` prompts (its JSON ``state``, besides the selector).

    Attributes:
        k: demos per input (default).
        k_overrides: per example id, a ``k`` that replaces the default.
        order: ``nearest_last`` (most relevant demo right before the input),
            ``nearest_first``, or ``random`` (seeded by the input's id).
        prompt_format: ``chat`` (a user/assistant turn per demo, the instructions at the
            head of the first user turn), ``completion`` (demos as plain text separated by
            blank lines, for base models), or ``auto`` (chat if the LM has a chat
            template, i.e. ``lm.chat`` is true).
        answer_mode: ``generate`` (greedy text, first line for classification) or
            ``choices`` (the label with the highest likelihood; classification only).
        max_tokens: generation limit; None takes the task's ``metadata['max_tokens']``,
            else 16 for classification and multiple choice, 256 otherwise.
        instructions: preamble; None uses the task's instructions ("" for none).
        temperature: sampling temperature (0 = greedy).
        seed: sampling seed and seed of the ``random`` order.

    Example:
        >>> DemoConfig(k=2).order
        'nearest_last'
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    k: int = Field(4, ge=0)
    k_overrides: dict[str, int] = Field(default_factory=dict)
    order: Order = "nearest_last"
    prompt_format: PromptFormat = "auto"
    answer_mode: AnswerMode = "generate"
    max_tokens: int | None = Field(None, ge=1)
    instructions: str | None = None
    temperature: float = Field(0.0, ge=0.0)
    seed: int = 0

    @field_validator("k_overrides", mode="before")
    @classmethod
    def _overrides(cls, v: Any) -> Any:
        return {} if v is None else v


class DemoSolver(Solver):
    """An LM prompted with per-input demonstrations chosen by a :class:`Selector`.

    Args:
        lm: the LM.
        selector: where demos come from; None means zero-shot.
        k: demos per input (default; overrides ``config.k`` when given).
        config: a :class:`DemoConfig`; keyword ``options`` (its field names) override
            its fields. Prompts render with :func:`metaskill.eval.solver.render_prompt`,
            exactly as the harness's built-in ``k-shot`` Solver renders them, so the two
            differ only in which demos.
        **options: :class:`DemoConfig` fields (``order``, ``prompt_format``,
            ``answer_mode``, ``max_tokens``, ``instructions``, ``temperature``, ``seed``,
            ``k_overrides``).

    Raises:
        MethodError: an invalid option (naming the field), or ``k > 0`` without a selector.

    Attempts keep the raw text in ``meta["raw"]``, the number of demos in ``meta["k"]`` and
    their ids in ``meta["demos"]``.

    The prompt never exceeds the LM's context window: where ``lm.context_window`` is
    known, demos are dropped from the least relevant end until it fits (the attempt's
    ``meta["k"]`` says how many were used).
    """

    kind: ClassVar[str] = "demos"

    def __init__(
        self,
        lm: Any,
        selector: Selector | None,
        k: int | None = None,
        *,
        config: DemoConfig | None = None,
        **options: Any,
    ) -> None:
        super().__init__(lm)
        values = {**(config.model_dump() if config is not None else {}), **options}
        if k is not None:
            values["k"] = k
        try:
            self.config = DemoConfig.model_validate(values)
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(x) for x in err.get("loc", ())) or "config"
            raise MethodError(f"demos: bad option '{field}': {err.get('msg')}"
                              f" (got {err.get('input')!r}).") from None
        if self.config.k > 0 and selector is None:
            raise MethodError("demos: k > 0 needs a demo selector (e.g. knn or random).")
        self.selector = selector

    # ---- the config's fields, read-only ------------------------------------------------
    @property
    def k(self) -> int:
        """Demos per input (default)."""
        return self.config.k

    @property
    def k_overrides(self) -> dict[str, int]:
        """Per example id, a ``k`` that replaces the default."""
        return self.config.k_overrides

    @property
    def order(self) -> Order:
        """Demo order in the prompt."""
        return self.config.order

    @property
    def prompt_format(self) -> PromptFormat:
        """``chat``, ``completion`` or ``auto``."""
        return self.config.prompt_format

    @property
    def answer_mode(self) -> AnswerMode:
        """``generate`` or ``choices``."""
        return self.config.answer_mode

    @property
    def max_tokens(self) -> int | None:
        """Generation limit (None: the task's)."""
        return self.config.max_tokens

    @property
    def instructions(self) -> str | None:
        """The preamble (None: the task's)."""
        return self.config.instructions

    @property
    def temperature(self) -> float:
        """Sampling temperature."""
        return self.config.temperature

    @property
    def seed(self) -> int:
        """Sampling seed and seed of the ``random`` order."""
        return self.config.seed

    # ---- how many demos, which, in what order ----------------------------------------
    def ks_for(self, task: Task, examples: Sequence[Example]) -> list[int]:
        """Demos per input: ``k_overrides`` where given, else ``k``. Subclasses allocate."""
        return [self.k_overrides.get(e.id, self.k) for e in examples]

    def demos_for(
        self, examples: Sequence[Example], ks: Sequence[int]
    ) -> list[list[Example]]:
        """The demos of each input, in prompt order."""
        if self.selector is None or not any(ks):
            return [[] for _ in examples]
        picked = self.selector.select_batch(list(examples), list(ks))
        return [self._ordered(e, d) for e, d in zip(examples, picked, strict=True)]

    def _ordered(self, example: Example, demos: list[Example]) -> list[Example]:
        if self.order == "nearest_last":
            return list(reversed(demos))
        if self.order == "random":
            out = list(demos)
            random.Random(f"{self.seed}:{example.id}").shuffle(out)
            return out
        return list(demos)

    # ---- prompt rendering ------------------------------------------------------------
    def uses_chat(self) -> bool:
        """Whether prompts are chat messages (else plain completion text)."""
        return uses_chat(self.lm, self.prompt_format)

    def request_for(self, task: Task, example: Example, demos: Sequence[Example]) -> Request:
        """The request that asks ``example`` after ``demos`` (in the order given).

        Rendered by :func:`metaskill.eval.solver.prompt_request`, the renderer every
        prompting Solver shares. In ``choices`` mode the candidates are the example's own
        choices (multiple choice) where it has them, else the task's labels
        (:func:`metaskill.eval.solvers.example_choices`), each after a space in a
        plain-completion prompt. In ``generate`` mode on a multiple-choice task the reply is
        constrained to the example's choices by a grammar where the backend enforces one
        (:func:`metaskill.eval.solvers.choice_request`).
        """
        instructions = task.instructions if self.instructions is None else self.instructions
        chat = self.uses_chat()
        choices = None
        if self.answer_mode == "choices":
            labels = example_choices(task, example)
            if not labels:
                raise MethodError(
                    f"demos: answer_mode 'choices' needs a task with labels or examples with "
                    f"choices; task '{task.name}' has none (use answer_mode 'generate')."
                )
            choices = tuple(labels) if chat else tuple(f" {lab}" for lab in labels)
        req = prompt_request(
            task, example, demos, instructions, chat=chat,
            max_tokens=answer_max_tokens(task, self.max_tokens),
            temperature=self.temperature, seed=self.seed, choices=choices,
        )
        return choice_request(self.lm, task, example, req)[0]

    def fitted_request(
        self, task: Task, example: Example, demos: list[Example]
    ) -> tuple[Request, list[Example]]:
        """:meth:`request_for`, dropping the least relevant demos until the prompt fits."""
        window = getattr(self.lm, "context_window", None)
        req = self.request_for(task, example, demos)
        if not window:
            return req, demos
        budget = window - req.max_tokens
        while demos and self.lm.count_tokens(self.lm.prompt_of(req)) > budget:
            least = 0 if self.order == "nearest_last" else len(demos) - 1
            demos = demos[:least] + demos[least + 1 :]
            req = self.request_for(task, example, demos)
        return req, demos

    def build_requests(
        self, task: Task, examples: Sequence[Example], ks: Sequence[int] | None = None
    ) -> list[tuple[Request, list[Example]]]:
        """One request per input (with the demos it shows); reusable by wrapper methods."""
        ks = self.ks_for(task, examples) if ks is None else list(ks)
        demos = self.demos_for(examples, ks)
        return [self.fitted_request(task, e, d) for e, d in zip(examples, demos, strict=True)]

    def prompt_tokens(self, task: Task, example: Example, k: int) -> int:
        """Prompt tokens of ``example`` with ``k`` demos (used to price ``k``)."""
        req, _ = self.build_requests(task, [example], [k])[0]
        return int(self.lm.count_tokens(self.lm.prompt_of(req)))

    def postprocess(self, task: Task, text: str) -> str:
        """The answer text: stripped; the first non-empty line for classification tasks."""
        text = text.strip()
        if getattr(task, "kind", "generative") != "generative":
            return next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
        return text

    # ---- the Solver verbs --------------------------------------------------------------
    def solve(self, task: Task, examples: list[Example]) -> list[Attempt]:
        """Answer each example with its own demos; ``meta`` has ``k`` and ``demos`` (ids)."""
        built = self.build_requests(task, examples)
        requests = [r for r, _ in built]
        try:
            completions: list[Any] = self.lm.complete(requests)
        except ContextOverflowError:
            completions = []
            for r in requests:
                try:
                    completions.append(self.lm.complete([r])[0])
                except MetaskillError as e:
                    completions.append(e)
        out = []
        for ex, (req, demos), c in zip(examples, built, completions, strict=True):
            meta: dict[str, Any] = {"k": len(demos), "demos": [d.id for d in demos],
                                    "lm_calls": 1}
            prompt = self.lm.prompt_of(req)
            if isinstance(c, Exception):
                out.append(Attempt(example_id=ex.id, prompt=prompt, error=str(c), meta=meta))
                continue
            meta["raw"] = c.text
            out.append(Attempt(
                example_id=ex.id, prompt=prompt, output=self.postprocess(task, c.text),
                usage=c.usage, latency_s=c.latency_s, meta=meta,
            ))
        return out

    def sampled(self, temperature: float, seed: int) -> DemoSolver:
        """A copy that samples at ``temperature`` with ``seed`` (for self-consistency)."""
        return type(self).from_state(
            {**self.state(), "temperature": temperature, "seed": seed}, self.lm
        )

    def state(self) -> dict[str, Any]:
        return {
            "selector": self.selector.to_json() if self.selector is not None else None,
            **self.config.model_dump(mode="json"),
        }

    @classmethod
    def options_from_state(cls, state: dict[str, Any]) -> dict[str, Any]:
        """Constructor keyword arguments (besides lm and selector) from a state dict.

        The :class:`DemoConfig` fields the state holds (``k`` 0 where absent); other keys
        (a subclass's own state) are left out.

        Example:
            >>> DemoSolver.options_from_state({"k": 2, "weight": 0.5})
            {'k': 2}
        """
        opts = {name: state[name] for name in DemoConfig.model_fields if name in state}
        opts.setdefault("k", 0)
        return opts

    @classmethod
    def from_state(cls, state: dict[str, Any], lm: Any) -> DemoSolver:
        sel = state.get("selector")
        return cls(lm, selector_from_json(sel) if sel else None,
                   **cls.options_from_state(state))

    def describe(self) -> str:
        """One line for reports."""
        sel = self.selector.kind if self.selector is not None else "none"
        return f"{self.kind}(selector={sel}, k={self.k}, order={self.order})"


def demo_options_from(solver: Any) -> dict[str, Any]:
    """Prompt options to carry over from an incoming Solver.

    A DemoSolver passes on its prompt format, answer mode, token limit, instructions and
    order; a harness prompting Solver (``zero-shot``, ``k-shot``) its format, instruction
    override and token limit; a ``likelihood`` Solver also asks for label choices. So a
    method applied after another keeps the prompt the earlier one chose.
    """
    if isinstance(solver, DemoSolver):
        keep = ("prompt_format", "answer_mode", "max_tokens", "instructions", "order")
        return {k: getattr(solver, k) for k in keep}
    cfg = getattr(solver, "config", None)
    out: dict[str, Any] = {}
    if cfg is not None and hasattr(cfg, "format"):
        out["prompt_format"] = cfg.format
        out["instructions"] = cfg.instructions
        out["max_tokens"] = cfg.max_tokens
        if getattr(solver, "kind", "") == "likelihood":
            out["answer_mode"] = "choices"
    return out


class DemoPromptConfig(MethodConfig):
    """Prompt options shared by the methods that build a :class:`DemoSolver` (knn_demos,
    skill_demos, raml): one config base, so they read, default and apply alike.

    A method redeclares a field to give it another default.

    Example:
        >>> from metaskill.lm.fake import ScriptedLM
        >>> zs = DemoSolver(ScriptedLM(), None, k=0, prompt_format="chat", max_tokens=8)
        >>> opts = DemoPromptConfig(prompt_format="completion").prompt_options(zs)
        >>> opts["prompt_format"], opts["max_tokens"]
        ('completion', 8)
    """

    prompt_format: PromptFormat | None = Field(
        None, description="chat, completion or auto; None keeps the incoming Solver's (else auto)"
    )
    format_candidates: list[PromptFormat] | None = Field(
        None, description="if given, choose the prompt format among these on dev "
                          "(overrides prompt_format)"
    )
    try_no_instructions: bool = Field(
        False, description="also try each plain-completion candidate without the task's "
                           "instruction preamble (the demos alone show the format); ties go "
                           "to the shorter prompt"
    )
    max_dev: int | None = Field(
        None, ge=1, description="score at most this many dev examples (cheaper selection)"
    )

    def prompt_options(self, solver: Solver) -> dict[str, Any]:
        """DemoSolver options: the incoming Solver's (:func:`demo_options_from`), then this
        config's ``prompt_format`` and, where the config has them and they are set,
        ``answer_mode`` and ``order``."""
        options = demo_options_from(solver)
        for name in ("prompt_format", "answer_mode", "order"):
            value = getattr(self, name, None)
            if value is not None:
                options[name] = value
        return options

    def dev_subset(self, dev: Sequence[Example] | None) -> list[Example]:
        """The dev examples scored: the first ``max_dev`` of ``dev`` (all when None)."""
        return list(dev or [])[: self.max_dev]


def usage_of(attempts: Sequence[Attempt]) -> Usage:
    """Summed usage of attempts."""
    total = Usage()
    for a in attempts:
        total = total + a.usage
    return total
