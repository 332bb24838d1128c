"""Built-in Solvers, the Solver registry, and Solver JSON save/load.

* :class:`ZeroShot` -- the task's instructions and the rendered example.
* :class:`KShot` -- the same with ``k`` fixed demonstrations (drawn at random with a seed
  from the task's train pool, or given).
* :class:`LikelihoodClassifier` -- ranks the candidate answers with :meth:`LM.score`
  instead of parsing free text (zero- or k-shot context): each example's own choices
  (``metadata["choices"]``, multiple choice) where it has them, else ``task.labels``.

Multiple choice (``task.kind == "multiple_choice"``): the candidates of an example are its
own ``metadata["choices"]`` (:func:`example_choices`). ``zero-shot`` and ``k-shot`` constrain
their reply to those choices with a grammar (:func:`choice_request`) where the backend
enforces grammars (``"grammar" in lm.constraints``) and ``constrain`` is on; elsewhere they
generate free text, and each Attempt's ``meta["constrained"]`` says which.

Prompt formats (``format``):

* ``chat`` (instruct models): the instructions and the rendered example form the user
  message; k-shot demonstrations are earlier user/assistant turns.
* ``completion`` (base models such as Gemma 3 270M): one plain prompt -- instructions,
  then the demonstrations (``task.demo``), then the rendered example, separated by blank
  lines; generation stops at the end of the line for classification tasks.
* ``auto`` (default): ``chat`` when the LM has a chat template (``lm.chat``), else
  ``completion``.

Answer extraction (``extract``): ``first_line`` keeps the first non-empty line of the
output, ``full`` keeps all of it, ``auto`` uses ``first_line`` for classification and
multiple-choice tasks and ``full`` for generative ones.

:data:`SOLVERS` knows every kind :func:`load_solver` can rebuild: the built-ins above, and
the kinds the methods layer produces as lazy ``"module:Class"`` targets
(:data:`METHOD_SOLVER_KINDS`), so the eval layer never imports a method until a saved
Solver of that kind is loaded; and ``custom`` (:mod:`metaskill.eval.custom`: a prompt
template and sandboxed ``render`` / ``postprocess`` code around another Solver). A new
kind registers with :func:`register_solver` (a method
shipped with metaskill adds its target to :data:`METHOD_SOLVER_KINDS` instead, so its
saved Solvers reload without importing it first).

Example:
    >>> from metaskill.lm.fake import ScriptedLM
    >>> s = KShot(ScriptedLM(default="positive"), k=2, seed=1)
    >>> s.to_json()["kind"], s.to_json()["state"]["k"]
    ('k-shot', 2)
    >>> load_solver(s.to_json(), lm=s.lm).config == s.config
    True
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from metaskill.core.errors import MetaskillError, TaskError
from metaskill.core.readers import expect_type, read_json
from metaskill.core.registry import Registry
from metaskill.core.types import Example, Message, Request, Usage
from metaskill.eval.solver import (
    SCHEMA_VERSION,
    Attempt,
    Solver,
    answer_max_tokens,
    prompt_request,
    render_prompt,
    short_answer,
    uses_chat,
)
from metaskill.lm.structured import choice_grammar

if TYPE_CHECKING:
    from metaskill.tasks.base import Task

SOLVERS: Registry[type[Solver]] = Registry("solver")
"""Solver kind -> Solver class (or lazy ``"module:Class"`` target)."""

METHOD_SOLVER_KINDS: dict[str, str] = {
    "demos": "metaskill.methods.demos:DemoSolver",
    "dynaicl": "metaskill.methods.dynaicl:DynaICLSolver",
    "raml": "metaskill.methods.raml:RamlSolver",
    "self_consistency": "metaskill.methods.self_consistency:SelfConsistencySolver",
    "self_refine": "metaskill.methods.self_refine:SelfRefineSolver",
    "adaptmi": "metaskill.methods.adaptmi:AdaptMISolver",
    "meta_prompting": "metaskill.methods.meta_prompting:MetaPromptingSolver",
    "multi_critique": "metaskill.methods.multi_critique:MultiCritiqueSolver",
    "memory": "metaskill.methods.memory:MemorySolver",
    "tool_use": "metaskill.methods.tool_use:ToolUseSolver",
}
"""Solver kinds the methods layer produces -> lazy targets, registered into :data:`SOLVERS`.

Strings, not imports: the harness loads a method's module only when a saved Solver of its
kind is rebuilt, and the eval layer keeps no import of the methods layer above it.
"""

for _kind, _target in METHOD_SOLVER_KINDS.items():
    SOLVERS.register(_kind, _target)
SOLVERS.register("custom", "metaskill.eval.custom:CustomSolver")  # a template and code
SOLVERS.register("yesno", "metaskill.metalearn.tune:YesNoSolver")  # meta_tune's zero-shot

S = TypeVar("S", bound=type[Solver])

Format = Literal["auto", "chat", "completion"]
Extract = Literal["auto", "first_line", "full"]


def register_solver(cls: S) -> S:
    """Class decorator: register a Solver subclass under its ``kind``.

    A method that builds a new kind of Solver decorates it, and :func:`load_solver` can
    then rebuild it from JSON. Registering a different class under a taken kind is an
    error; registering the same class again (a module imported twice) is a no-op.

    Example:
        >>> @register_solver
        ... class Echo(ZeroShot):
        ...     kind = "doc-echo"
        >>> SOLVERS.get("doc-echo") is Echo
        True
    """
    kind = cls.kind
    if METHOD_SOLVER_KINDS.get(kind) == f"{cls.__module__}:{cls.__qualname__}":
        return cls  # already known as a lazy target (resolving it now would re-enter)
    if kind in SOLVERS:
        old = SOLVERS.get(kind)
        if (old.__module__, old.__qualname__) == (cls.__module__, cls.__qualname__):
            return cls
    SOLVERS.register(kind, cls)
    return cls


# ---- prompt building ---------------------------------------------------------------
class PromptConfig(BaseModel):
    """How a prompting Solver builds its prompts (the JSON ``state`` of the built-ins).

    Attributes:
        format: ``chat``, ``completion`` or ``auto`` (chat when the LM has a chat template).
        instructions: overrides the task's instructions when not None ("" for none).
        k: number of demonstrations (0 for zero-shot).
        seed: seed of the random draw of demonstrations from ``pool``.
        pool: the split demonstrations are drawn from.
        demos: the demonstrations themselves; when None they are drawn from the task's
            ``pool`` split with ``seed`` (deterministic given the task).
        max_tokens: generation budget; None means the task's ``metadata['max_tokens']``,
            else 16 for classification and multiple-choice tasks, 256 for generative ones.
        temperature: sampling temperature (0 = greedy).
        stop: stop strings; None means a newline for classification / multiple choice in
            completion format, a blank line for generative tasks in completion format,
            nothing in chat format.
        extract: answer extraction (``auto``, ``first_line`` or ``full``).
        constrain: on a multiple-choice task, constrain the reply to the example's own
            choices with a grammar where the backend enforces grammars (free text
            otherwise, and when off).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Format = "auto"
    instructions: str | None = None
    k: int = Field(default=0, ge=0)
    seed: int = 0
    pool: str = "train"
    demos: tuple[Example, ...] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=5.0)
    stop: tuple[str, ...] | None = None
    extract: Extract = "auto"
    constrain: bool = True

    @field_validator("demos", mode="before")
    @classmethod
    def _demos(cls, v: Any) -> Any:
        return tuple(v) if v is not None else None


def select_demos(task: Any, k: int, seed: int = 0, pool: str = "train") -> list[Example]:
    """``k`` demonstrations drawn at random (``random.Random(seed).sample``) from a split.

    Raises:
        TaskError: the pool split is missing, empty, or has fewer than ``k`` examples.
    """
    if k == 0:
        return []
    examples = task.examples(pool)
    if len(examples) < k:
        raise TaskError(
            f"task '{task.name}' has {len(examples)} examples in split '{pool}', fewer than "
            f"k={k} demonstrations; lower --k."
        )
    return random.Random(seed).sample(list(examples), k)


def example_choices(task: Any, example: Example) -> list[str]:
    """The candidate answers of one example: its own ``metadata["choices"]`` (multiple
    choice) where it has them, else the task's ``labels``, else none.

    Example:
        >>> from types import SimpleNamespace as NS
        >>> ex = Example(id="1", input="x", metadata={"choices": ["up", "down"]})
        >>> example_choices(NS(labels=["a", "b"]), ex), example_choices(NS(labels=["a"]),
        ...                                                              Example(id="2", input="y"))
        (['up', 'down'], ['a'])
    """
    own = (example.metadata or {}).get("choices")
    if own:
        return [str(c) for c in own]
    return [str(x) for x in (getattr(task, "labels", None) or [])]


def choice_request(lm: Any, task: Any, example: Example, request: Request,
                   enabled: bool = True) -> tuple[Request, bool]:
    """``request`` with its reply constrained to the example's choices, where that applies.

    Applies to a multiple-choice task (``task.kind``) whose example has choices, on a backend
    that enforces grammars (``"grammar" in lm.constraints``), to a request without another
    constraint. The grammar is :func:`metaskill.lm.structured.choice_grammar` of the choices,
    after a space for a plain-completion prompt (the template ends with ``A:``, as
    ``task.demo`` writes answers); ``max_tokens`` is raised, where needed, to the longest
    choice's length in bytes plus 4 (a grammar may spell a choice a byte a token; the reply
    ends with the grammar anyway). Returns the request and whether it is constrained.

    Example:
        >>> from types import SimpleNamespace as NS
        >>> from metaskill.lm.fake import ScriptedLM
        >>> ex = Example(id="1", input="x", metadata={"choices": ["up", "down"]})
        >>> req, on = choice_request(ScriptedLM(), NS(kind="multiple_choice"), ex,
        ...                          Request(prompt="Q: x\\nA:", max_tokens=1))
        >>> on, req.grammar
        (True, 'root ::= " " ("up" | "down")')
    """
    choices = [c for c in (example.metadata or {}).get("choices") or [] if str(c)]
    if (not enabled or getattr(task, "kind", "") != "multiple_choice" or not choices
            or "grammar" not in getattr(lm, "constraints", frozenset())
            or request.choices is not None or request.constrained):
        return request, False
    choices = [str(c) for c in choices]
    # a grammar lets the model spell a choice in any tokenization, down to one byte a
    # token, so the budget is the longest choice in bytes (generation ends with the grammar)
    need = max(len((" " + c).encode("utf-8")) for c in choices) + 4
    fields = dict(request)
    fields["grammar"] = choice_grammar(choices, prefix="" if request.messages else " ")
    fields["max_tokens"] = max(request.max_tokens, need)
    return Request(**fields), True


class PromptSolver(Solver):
    """Base of the built-in prompting Solvers: holds a :class:`PromptConfig`."""

    kind: ClassVar[str] = "prompt"
    config_type: ClassVar[type[PromptConfig]] = PromptConfig

    def __init__(self, lm: Any, config: PromptConfig | None = None, **kwargs: Any) -> None:
        super().__init__(lm)
        try:
            if config is not None and not kwargs:
                self.config = config
            else:
                base = dict(config) if config is not None else {}
                self.config = self.config_type.model_validate({**base, **kwargs})
        except ValidationError as e:
            raise _config_error(self.kind, e) from None
        self._demo_memo: dict[tuple[str, str], list[Example]] = {}

    # ---- state -----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The config as JSON-able data."""
        return self.config.model_dump(mode="json")

    @classmethod
    def from_state(cls, state: dict[str, Any], lm: Any) -> PromptSolver:
        """Rebuild from :meth:`state`."""
        try:
            config = cls.config_type.model_validate(state)
        except ValidationError as e:
            raise _config_error(cls.kind, e) from None
        return cls(lm, config)

    def with_config(self, **changes: Any) -> PromptSolver:
        """A new Solver of the same kind and LM with some config fields changed."""
        return type(self)(self.lm, self.config, **changes)

    @classmethod
    def for_task(cls, lm: Any, task: Any, **kwargs: Any) -> PromptSolver:
        """A Solver whose demonstrations are drawn now and stored in its state.

        Its JSON then holds the demonstrations themselves, so it reproduces the same
        prompts without the task's train split.
        """
        solver = cls(lm, **kwargs)
        c = solver.config
        if c.k and c.demos is None:
            solver = solver.with_config(demos=tuple(select_demos(task, c.k, c.seed, c.pool)))
        return solver

    # ---- prompts ---------------------------------------------------------------------
    def resolved_format(self) -> Literal["chat", "completion"]:
        """``chat`` or ``completion`` (``auto`` decided by the LM's ``chat`` attribute)."""
        return "chat" if uses_chat(self.lm, self.config.format) else "completion"

    def demos(self, task: Any) -> list[Example]:
        """The demonstrations used for ``task`` (given, or drawn with the seed)."""
        c = self.config
        if c.demos is not None:
            return list(c.demos)[: c.k] if c.k else list(c.demos)
        key = (task.name, str(getattr(task, "version", "")))
        if key not in self._demo_memo:
            self._demo_memo[key] = select_demos(task, c.k, c.seed, c.pool)
        return self._demo_memo[key]

    def instructions(self, task: Any) -> str:
        """The instructions in use (the config's override, else the task's)."""
        if self.config.instructions is not None:
            return self.config.instructions
        return str(getattr(task, "instructions", "") or "")

    def context(self, task: Task, example: Example) -> str | list[Message]:
        """The prompt for one example: a plain string or chat messages.

        Rendered by :func:`metaskill.eval.solver.render_prompt`, as every prompting
        Solver's is.
        """
        return render_prompt(task, example, self.demos(task), self.instructions(task),
                             chat=self.resolved_format() == "chat")

    def request(self, task: Task, example: Example) -> Request:
        """The completion request for one example (:func:`metaskill.eval.solver.prompt_request`),
        its reply constrained to the example's choices on a multiple-choice task where the
        backend enforces grammars (:func:`choice_request`)."""
        c = self.config
        req = prompt_request(
            task, example, self.demos(task), self.instructions(task),
            chat=self.resolved_format() == "chat",
            max_tokens=answer_max_tokens(task, c.max_tokens), temperature=c.temperature,
            seed=c.seed, stop=c.stop,
        )
        return choice_request(self.lm, task, example, req, c.constrain)[0]

    def extract(self, task: Any, text: str) -> str:
        """The answer inside the LM's raw text (see the module doc)."""
        mode = self.config.extract
        if mode == "auto":
            mode = "first_line" if short_answer(task) else "full"
        if mode == "full":
            return text.strip()
        for line in text.splitlines():
            if line.strip():
                return line.strip()
        return ""

    def _prompt_text(self, request: Request) -> str:
        try:
            return str(self.lm.prompt_of(request))
        except Exception:  # a backend without prompt_of: keep a readable transcript
            if request.prompt is not None:
                return request.prompt
            return "\n".join(f"{m.role}: {m.content}" for m in request.messages or ())

    # ---- solving -----------------------------------------------------------------------
    def solve(self, task: Task, examples: list[Example]) -> list[Attempt]:
        """Answer a batch with ONE ``lm.complete`` call; one Attempt per example."""
        requests = [self.request(task, e) for e in examples]
        t0 = time.perf_counter()
        completions = self.lm.complete(requests)
        per = (time.perf_counter() - t0) / max(1, len(examples))
        out = []
        for e, r, c in zip(examples, requests, completions, strict=True):
            raw = c.text
            meta: dict[str, Any] = {"raw": raw, "finish_reason": c.finish_reason}
            if c.cached:
                meta["cached"] = True
            if getattr(task, "kind", "") == "multiple_choice":
                meta["constrained"] = r.grammar is not None
                if r.grammar is None:
                    meta["constraint"] = ("off in the config" if not self.config.constrain
                                          else "the backend enforces no grammar: free text")
            out.append(Attempt(
                example_id=e.id, prompt=self._prompt_text(r), output=self.extract(task, raw),
                usage=c.usage, latency_s=c.latency_s or per, meta=meta,
            ))
        return out


@register_solver
class ZeroShot(PromptSolver):
    """The task's instructions and the rendered example, no demonstrations.

    Example:
        >>> from metaskill.lm.fake import ScriptedLM
        >>> ZeroShot(ScriptedLM(), format="completion").config.k
        0
    """

    kind: ClassVar[str] = "zero-shot"

    def __init__(self, lm: Any, config: PromptConfig | None = None, **kwargs: Any) -> None:
        super().__init__(lm, config, **kwargs)
        if self.config.k:
            raise MetaskillError("a zero-shot solver has k=0; use the k-shot solver for demos.")


@register_solver
class KShot(PromptSolver):
    """``k`` fixed demonstrations (random with a seed from the train pool, or given).

    Example:
        >>> from metaskill.lm.fake import ScriptedLM
        >>> KShot(ScriptedLM(), k=4, seed=0).config.k
        4
    """

    kind: ClassVar[str] = "k-shot"

    def __init__(self, lm: Any, config: PromptConfig | None = None, **kwargs: Any) -> None:
        if config is None and "k" not in kwargs:
            kwargs["k"] = 4
        super().__init__(lm, config, **kwargs)


class LikelihoodConfig(PromptConfig):
    """Config of :class:`LikelihoodClassifier`.

    Attributes:
        normalize: ``none`` ranks labels by their summed log-probability (lm-eval's
            ``acc``); ``chars`` divides it by the label's length in characters (lm-eval's
            ``acc_norm`` divides by bytes). Default ``none``: on the dev splits of the five
            multiple-choice BIG-bench tasks the two tied (38.5% vs 38.2% mean accuracy,
            ``benchmarks/results/multiple_choice.md``).
        labels: the candidate labels; None means each example's own choices
            (``metadata["choices"]``) where it has them, else the task's ``labels``.
    """

    normalize: Literal["none", "chars"] = "none"
    labels: tuple[str, ...] | None = None


@register_solver
class LikelihoodClassifier(PromptSolver):
    """Ranks the candidate answers by their log-likelihood after the prompt.

    The candidates are each example's own choices on a multiple-choice task (as
    lm-evaluation-harness scores multiple choice), else the task's labels
    (:func:`example_choices`; a ``labels`` config overrides both). The context is the
    zero- or k-shot prompt (chat messages, or a plain prompt where each candidate is scored
    with a leading space, as ``task.demo`` writes answers). The output is the best
    candidate; the record's meta keeps every candidate's score.

    Example:
        >>> from metaskill.lm.fake import ScriptedLM
        >>> LikelihoodClassifier(ScriptedLM(), labels=["no", "yes"]).config.labels
        ('no', 'yes')
    """

    kind: ClassVar[str] = "likelihood"
    config_type: ClassVar[type[PromptConfig]] = LikelihoodConfig

    def labels(self, task: Any, example: Example | None = None) -> list[str]:
        """The candidates: the config's labels, else the example's own choices, else the
        task's labels."""
        cfg = self.config
        assert isinstance(cfg, LikelihoodConfig)
        if cfg.labels:
            return list(cfg.labels)
        if example is not None:
            labels = example_choices(task, example)
        else:
            labels = list(getattr(task, "labels", None) or [])
        if not labels:
            where = f"example '{example.id}' of " if example is not None else ""
            raise MetaskillError(
                f"the likelihood solver needs labels or choices, and {where}task "
                f"'{task.name}' has none; use it on a classification or multiple-choice task "
                "or give labels in its config."
            )
        return labels

    def solve(self, task: Task, examples: list[Example]) -> list[Attempt]:
        """Score every candidate after each example's prompt (one ``lm.score`` per example)."""
        cfg = self.config
        assert isinstance(cfg, LikelihoodConfig)
        out = []
        for e in examples:
            labels = self.labels(task, e)
            t0 = time.perf_counter()
            ctx = self.context(task, e)
            if isinstance(ctx, str):
                conts = [" " + lab for lab in labels]
                prompt = ctx
            else:
                conts = list(labels)
                prompt = self._prompt_text(Request(messages=tuple(ctx)))
            values = self.lm.score(ctx, conts)
            ranked = [
                v / max(1, len(c)) if cfg.normalize == "chars" else v
                for v, c in zip(values, conts, strict=True)
            ]
            best = max(range(len(labels)), key=ranked.__getitem__)
            count = getattr(self.lm, "count_tokens", lambda s: max(1, len(s) // 4))
            usage = Usage(prompt_tokens=count(prompt) + sum(count(c) for c in conts))
            out.append(Attempt(
                example_id=e.id, prompt=prompt, output=labels[best], usage=usage,
                latency_s=time.perf_counter() - t0,
                meta={"raw": labels[best],
                      "scores": {lab: _finite(v) for lab, v in zip(labels, values, strict=True)}},
            ))
        return out


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _config_error(kind: str, e: ValidationError) -> MetaskillError:
    err = e.errors()[0]
    field = ".".join(str(p) for p in err.get("loc", ())) or "config"
    return MetaskillError(f"bad {kind} solver config: field '{field}': {err.get('msg')}.")


# ---- JSON save / load -------------------------------------------------------------
def solver_from_name(
    name: str, lm: Any, task: Any | None = None, **config: Any
) -> Solver:
    """A built-in Solver by CLI name (``zero-shot``, ``k-shot``, ``likelihood``).

    With ``task`` given, demonstrations are drawn now and stored in the Solver's state.
    """
    cls = SOLVERS.get(name)
    if task is not None and hasattr(cls, "for_task"):
        return cls.for_task(lm, task, **config)  # type: ignore[attr-defined, no-any-return]
    return cls(lm, **config)  # type: ignore[call-arg]


def load_solver(
    path_or_dict: str | Path | dict[str, Any],
    lm: Any = None,
    *,
    lm_loader: Callable[[str], Any] | None = None,
) -> Solver:
    """Rebuild any registered Solver from its schema-versioned JSON.

    Args:
        path_or_dict: a JSON file path, or the dict :meth:`Solver.to_json` returned.
        lm: the LM to use (plus the adapter the JSON's ``model`` spec names, if any); when
            None, the JSON's ``model`` spec is loaded with ``metaskill.lm.load_lm`` (or
            ``lm_loader``).
        lm_loader: how to load a model spec (default :func:`metaskill.lm.load_lm`).

    Raises:
        MetaskillError: unreadable file, unknown kind, newer schema, or no model.

    Example:
        >>> from metaskill.lm.fake import ScriptedLM
        >>> s = load_solver({"schema_version": 1, "kind": "zero-shot", "model": "fake",
        ...                  "state": {"format": "chat"}}, lm=ScriptedLM())
        >>> type(s).__name__
        'ZeroShot'
    """
    where = "solver JSON"
    if isinstance(path_or_dict, dict):
        data = path_or_dict
    else:
        where = str(path_or_dict)
        data = read_json(path_or_dict, "solver file", expect=dict)
    if not isinstance(data, dict) or not isinstance(data.get("kind"), str):
        raise MetaskillError(f"{where} is not a solver: it has no 'kind' field (a string).")
    version = data.get("schema_version", 1)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise MetaskillError(
            f"{where} has schema_version {version}; this metaskill reads up to "
            f"{SCHEMA_VERSION}. Upgrade metaskill."
        )
    cls = SOLVERS.get(data["kind"])
    state = data.get("state")
    state = {} if state is None else expect_type(state, dict, f"{where}: 'state'")
    if data.get("model") is not None and not isinstance(data["model"], str):
        raise MetaskillError(f"{where}: 'model' must be a model spec string, got "
                             f"{type(data['model']).__name__}.")
    if lm is None:
        spec = data.get("model")
        if not spec:
            raise MetaskillError(f"{where} names no model; pass one (--model SPEC).")
        if lm_loader is None:
            from metaskill.lm import load_lm

            lm_loader = load_lm
        lm = lm_loader(str(spec))
    else:
        lm = with_adapter_of(lm, data.get("model"))
    return _from_state(cls, dict(state), lm, where)


def _from_state(cls: type[Solver], state: dict[str, Any], lm: Any, where: str) -> Solver:
    """``cls.from_state(state, lm)``, a state of the wrong shape answered in one line.

    Solver kinds check their own state where they can (a ``MetaskillError``); a value of the
    wrong type that reaches their code (a list where a mapping belongs ...) ends here.
    """
    try:
        return cls.from_state(state, lm)
    except MetaskillError:
        raise
    except (TypeError, KeyError, ValueError, AttributeError, IndexError) as e:
        detail = str(e).splitlines()[0] if str(e) else ""
        raise MetaskillError(
            f"{where}: its 'state' does not fit solver kind '{cls.kind}' "
            f"({type(e).__name__}{': ' + detail if detail else ''}); give a Solver JSON "
            "that metaskill saved."
        ) from e


def with_adapter_of(lm: Any, spec: str | None) -> Any:
    """``lm`` plus the adapter that the Solver JSON's model ``spec`` names, if it lacks it.

    A trained Solver is plain Solver JSON whose model spec carries its adapter
    (``local+adapter:PATH``); loading it onto the base LM serves base + that adapter.

    Example:
        >>> from metaskill.lm.fake import ScriptedLM
        >>> with_adapter_of(ScriptedLM(), "fake+adapter:runs/a").spec
        'fake+adapter:runs/a'
        >>> with_adapter_of(ScriptedLM(), "fake").spec
        'fake'
    """
    from metaskill.lm.adapters import split_adapter

    wanted = split_adapter(str(spec or ""))[1]
    if wanted is None or getattr(lm, "adapter", None) == wanted:
        return lm
    return lm.with_adapter(wanted)


def save_solver(solver: Solver, path: str | Path) -> Path:
    """Write a Solver's schema-versioned JSON to ``path`` (folders created) and return it.

    Example:
        >>> import tempfile, pathlib
        >>> from metaskill.lm.fake import ScriptedLM
        >>> p = save_solver(ZeroShot(ScriptedLM()), pathlib.Path(tempfile.mkdtemp()) / "s.json")
        >>> load_solver(p, lm=ScriptedLM()).kind
        'zero-shot'
    """
    p = Path(path)
    if p.is_dir():
        raise MetaskillError(f"cannot write solver file {p}: it is a folder; give a file "
                             "path such as solver.json.")
    text = json.dumps(solver.to_json(), indent=2, ensure_ascii=False) + "\n"
    tmp = p.with_suffix(p.suffix + ".tmp")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(p)
    except OSError as e:
        raise MetaskillError(f"cannot write solver file {p}: {e.strerror or e}.") from None
    return p


__all__ = [
    "METHOD_SOLVER_KINDS",
    "SOLVERS",
    "KShot",
    "LikelihoodClassifier",
    "LikelihoodConfig",
    "PromptConfig",
    "PromptSolver",
    "ZeroShot",
    "choice_request",
    "example_choices",
    "load_solver",
    "register_solver",
    "save_solver",
    "select_demos",
    "solver_from_name",
]
