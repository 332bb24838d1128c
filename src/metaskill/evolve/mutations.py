"""Mutations of archive nodes: each a small registered function ``(parent, ctx, rng) -> Child``.

Structural mutations edit the parent's :class:`~metaskill.evolve.node.Recipe`; the child is
then rebuilt from the root Solver through :func:`~metaskill.methods.compose.fit_chain`:

* ``add_method`` / ``remove_method`` / ``replace_method`` -- the chain, from the Method
  registry (:data:`metaskill.methods.METHODS`, the names the config allows);
* ``tweak_config`` -- one config field of the root Solver or of a chained method, set to
  another value inside the bounds its pydantic schema declares (``ge``/``le``/``gt``/``lt``,
  ``Literal`` choices, booleans);
* ``prompt_format`` -- the root's prompt format, chat <-> completion;
* ``crossover`` -- uniform crossover of two parents' recipes (root changes, the options of
  the methods both chains hold, edits, custom template and code).

Self-modification (the Darwin Gödel Machine's step, ``self_modify``): a *mutator* LM reads
the parent's Solver JSON (long lists shortened), its fit report and a few of its failed dev
examples, and proposes one change as structured output (:class:`Proposal`, through
:func:`~metaskill.lm.structured.complete_structured`): new instructions (a direct edit of
the Solver JSON, no refit), a prompt template (the recipe's ``custom`` part: the Solver is
wrapped as a ``custom`` Solver, :mod:`metaskill.eval.custom`), a prompt format, or new
config values (a recipe change, refitted). A reply that does not parse, proposes nothing,
or a template that does not check (:func:`~metaskill.eval.custom.check_template`, or a
field no example has), makes an invalid child.

Code children (``self_modify_code``, the DGM step proper: the system rewrites its own
code): the mutator reads the same and the parent's current template and code, and proposes
new Python sources (:class:`CodeProposal`) for the Solver's ``render(input: str, prompt:
str) -> str`` and/or ``postprocess(output: str) -> str``. Each is checked without running
it (:func:`~metaskill.eval.custom.check_code`: it parses, defines the function with that
signature); it then runs only inside the sandbox, during the child's evaluation. Where the
sandbox cannot run, the child is invalid with the sandbox's one-line reason and the
mutator is not even asked.

A mutation raises :class:`NotApplicable` when it cannot act on this parent (nothing to
remove ...): the loop then picks another kind and records nothing. Any other exception makes
the child invalid, recorded with its reason.

Example:
    >>> import random
    >>> from metaskill.evolve.node import Node, Recipe
    >>> ctx = MutationContext(methods=("knn_demos",), root_kind="zero-shot")
    >>> child = add_method(Node(id=0, recipe=Recipe()), ctx, random.Random(0))
    >>> child.kind, child.recipe.describe()
    ('add_method', 'root + knn_demos')
"""

from __future__ import annotations

import json
import random
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, Field
from pydantic.fields import FieldInfo

from metaskill.core.errors import MetaskillError
from metaskill.core.registry import Registry
from metaskill.core.types import Message, Request
from metaskill.evolve.node import Node, Recipe, Step


class NotApplicable(Exception):  # noqa: N818 -- a signal, not an error
    """The mutation cannot act on this parent; pick another kind (nothing is recorded)."""


class InvalidChildError(MetaskillError):
    """The mutation produced a child that cannot be built (recorded with this reason).

    Args:
        reason: why, in one line.
        cost: what the mutation spent before failing (``lm_calls``, ``prompt_tokens``,
            ``completion_tokens``), charged to the invalid child.
    """

    def __init__(self, reason: str, cost: Mapping[str, int] | None = None) -> None:
        super().__init__(reason)
        self.cost = dict(cost or {})


@dataclass
class Child:
    """What a mutation proposes.

    Attributes:
        kind: the mutation's name.
        description: what changed, in words.
        recipe: the child's recipe.
        rebuild: True: build from the root through the chain; False: the parent's Solver
            JSON with the recipe's edits applied (no refit).
        parent2: the other parent of a crossover.
        lm_calls: LM calls the mutation itself made (the mutator's).
        prompt_tokens: prompt tokens the mutation itself spent.
        completion_tokens: completion tokens the mutation itself spent.
        notes: anything to keep (the mutator's rationale ...).
    """

    kind: str
    description: str
    recipe: Recipe
    rebuild: bool = True
    parent2: int | None = None
    lm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class MutationContext:
    """What mutations may read besides the parent (passed explicitly, no globals).

    Attributes:
        methods: method names ``add_method``/``replace_method`` may use.
        root_kind: the root Solver's kind (its config schema bounds ``tweak_config``).
        task: the task (name, instructions, kind for the mutator's prompt).
        mutator: the LM that proposes self-modifications (None: ``self_modify`` does not
            apply).
        pick_other: ``(parent_id, rng) -> Node``, the second parent of a crossover.
        n_failures: failed dev examples shown to the mutator.
        mutator_max_tokens: the mutator reply's token budget.
    """

    methods: tuple[str, ...] = ()
    root_kind: str = "zero-shot"
    task: Any = None
    mutator: Any = None
    pick_other: Callable[[int, random.Random], Node | None] | None = None
    n_failures: int = 4
    mutator_max_tokens: int = 384


Mutation = Callable[[Node, MutationContext, random.Random], Child]

#: name -> mutation function (the defaults; :func:`evolve` takes its own mapping too).
MUTATIONS: Registry[Mutation] = Registry("mutation")


def _config_class(target: str, ctx: MutationContext) -> type[BaseModel] | None:
    """The pydantic config class of a chain method, or of the root Solver (``base``)."""
    if target == "base":
        from metaskill.eval.solvers import SOLVERS

        cls = SOLVERS.get(ctx.root_kind)
        return getattr(cls, "config_type", None)
    from metaskill.methods import METHODS
    from metaskill.methods.compose import config_class

    return config_class(METHODS.get(target))


# ---- structural mutations ---------------------------------------------------------------
def add_method(parent: Node, ctx: MutationContext, rng: random.Random) -> Child:
    """Append a method the chain does not hold yet (from ``ctx.methods``)."""
    held = {s.method for s in parent.recipe.chain}
    options = [m for m in ctx.methods if m not in held]
    if not options:
        raise NotApplicable("every allowed method is in the chain")
    name = rng.choice(options)
    recipe = parent.recipe.model_copy(deep=True)
    recipe.chain.append(Step(method=name))
    return Child("add_method", f"add {name}", recipe)


def remove_method(parent: Node, ctx: MutationContext, rng: random.Random) -> Child:
    """Drop one method of the chain."""
    if not parent.recipe.chain:
        raise NotApplicable("the chain is empty")
    recipe = parent.recipe.model_copy(deep=True)
    i = rng.randrange(len(recipe.chain))
    step = recipe.chain.pop(i)
    return Child("remove_method", f"remove {step.method}", recipe)


def replace_method(parent: Node, ctx: MutationContext, rng: random.Random) -> Child:
    """Replace one method of the chain by another allowed one (its options dropped)."""
    held = {s.method for s in parent.recipe.chain}
    options = [m for m in ctx.methods if m not in held]
    if not parent.recipe.chain or not options:
        raise NotApplicable("nothing to replace")
    recipe = parent.recipe.model_copy(deep=True)
    i = rng.randrange(len(recipe.chain))
    new = rng.choice(options)
    old = recipe.chain[i].method
    recipe.chain[i] = Step(method=new)
    return Child("replace_method", f"replace {old} by {new}", recipe)


def bounds(info: FieldInfo) -> tuple[float | None, float | None, bool]:
    """``(low, high, integer)`` a numeric field declares (exclusive bounds nudged inside).

    Example:
        >>> from pydantic import BaseModel, Field
        >>> class C(BaseModel):
        ...     k: int = Field(4, ge=1, le=64)
        >>> bounds(C.model_fields["k"])
        (1, 64, True)
    """
    integer = _base_type(info.annotation) is int
    lo = hi = None
    step = 1 if integer else 1e-3
    for m in info.metadata:
        if isinstance(m, Ge):
            lo = m.ge
        elif isinstance(m, Gt):
            lo = m.gt + step
        elif isinstance(m, Le):
            hi = m.le
        elif isinstance(m, Lt):
            hi = m.lt - step
    return lo, hi, integer


def _base_type(annotation: Any) -> Any:
    """``X`` of ``X``, ``X | None`` or ``Optional[X]``; else the annotation itself."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return annotation


def new_value(info: FieldInfo, current: Any, rng: random.Random) -> Any:
    """Another value for a field, inside what its schema allows.

    Booleans flip, ``Literal`` fields take another choice, numbers are drawn inside their
    declared bounds (without an upper bound: up to twice the current value, plus a step).

    Raises:
        NotApplicable: the field is not a bool, Literal, int or float, or has one value.

    Example:
        >>> from pydantic import BaseModel, Field
        >>> class C(BaseModel):
        ...     k: int = Field(4, ge=1, le=5)
        >>> new_value(C.model_fields["k"], 4, random.Random(0)) in {1, 2, 3, 5}
        True
    """
    kind = _base_type(info.annotation)
    if kind is bool:
        return not bool(current)
    if typing.get_origin(kind) is Literal:
        others = [c for c in typing.get_args(kind) if c != current]
        if not others:
            raise NotApplicable("a Literal with one choice")
        return rng.choice(others)
    if kind not in (int, float):
        raise NotApplicable(f"a field of type {kind!r}")
    lo, hi, integer = bounds(info)
    if current is None and (lo is None or hi is None):
        raise NotApplicable("unset, and unbounded")
    base = current if current is not None else lo
    lo = lo if lo is not None else (0 if base >= 0 else 2 * base)
    hi = hi if hi is not None else max(lo + 1, 2 * base + 1)
    for _ in range(16):
        value = rng.randint(int(lo), int(hi)) if integer else round(rng.uniform(lo, hi), 3)
        if value != current:
            return value
    raise NotApplicable("no other value inside the bounds")


def tunable_fields(target: str, ctx: MutationContext) -> dict[str, FieldInfo]:
    """Config fields of ``target`` (``base`` or a method) that ``tweak_config`` may change:
    booleans, ``Literal`` choices and bounded numbers; never seeds."""
    cls = _config_class(target, ctx)
    if cls is None:
        return {}
    out = {}
    for name, info in cls.model_fields.items():
        kind = _base_type(info.annotation)
        if "seed" in name or name == "format":  # format: the prompt_format mutation's
            continue
        if kind in (bool, int, float) or typing.get_origin(kind) is Literal:
            out[name] = info
    return out


def _root_accepts(ctx: MutationContext, base: dict[str, Any]) -> bool:
    """Whether the root Solver's kind builds from these state changes (no LM needed)."""
    from metaskill.eval.solvers import SOLVERS

    try:
        SOLVERS.get(ctx.root_kind).from_state(dict(base), None)
    except MetaskillError:
        return False
    return True


def tweak_config(parent: Node, ctx: MutationContext, rng: random.Random) -> Child:
    """Set one config field (of the root Solver or of a chained method) to another value
    inside the bounds its pydantic schema declares."""
    targets: list[tuple[str, str, FieldInfo]] = []
    for target in ["base", *(s.method for s in parent.recipe.chain)]:
        targets += [(target, n, f) for n, f in tunable_fields(target, ctx).items()]
    rng.shuffle(targets)
    recipe = parent.recipe.model_copy(deep=True)
    for target, name, info in targets:
        where = recipe.base if target == "base" else next(
            s.options for s in recipe.chain if s.method == target)
        current = where.get(name, info.get_default(call_default_factory=True))
        try:
            value = new_value(info, current, rng)
        except NotApplicable:
            continue
        if target == "base" and not _root_accepts(ctx, {**recipe.base, name: value}):
            continue  # inside the schema, but the root kind refuses it (zero-shot's k)
        where[name] = value
        return Child("tweak_config", f"{target}.{name}: {current!r} -> {value!r}", recipe)
    raise NotApplicable("no tunable field")


def prompt_format(parent: Node, ctx: MutationContext, rng: random.Random) -> Child:
    """Switch the root Solver's prompt format between chat and completion."""
    cls = _config_class("base", ctx)
    if cls is None or "format" not in cls.model_fields:
        raise NotApplicable(f"a '{ctx.root_kind}' root has no prompt format")
    recipe = parent.recipe.model_copy(deep=True)
    current = recipe.base.get("format", "auto")
    value = "completion" if current == "chat" else "chat" if current == "completion" else \
        rng.choice(["chat", "completion"])
    recipe.base["format"] = value
    return Child("prompt_format", f"prompt format {current} -> {value}", recipe)


def crossover(parent: Node, ctx: MutationContext, rng: random.Random) -> Child:
    """Uniform crossover with a second parent chosen by the same rule: each root change,
    each option of a method both chains hold, and each edit comes from either parent."""
    other = ctx.pick_other(parent.id, rng) if ctx.pick_other else None
    if other is None or other.id == parent.id:
        raise NotApplicable("no second parent")
    a, b = parent.recipe, other.recipe

    def mix(x: dict[str, Any], y: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for key in sorted(set(x) | set(y)):
            src = x if rng.random() < 0.5 else y
            if key in src:
                out[key] = src[key]
        return out

    theirs = {s.method: s.options for s in b.chain}
    chain = [Step(method=s.method, options=mix(s.options, theirs[s.method])
                  if s.method in theirs else dict(s.options)) for s in a.chain]
    recipe = Recipe(base=mix(a.base, b.base), chain=chain, edits=mix(a.edits, b.edits),
                    custom=mix(a.custom, b.custom))
    return Child("crossover", f"crossover of {parent.id} and {other.id}", recipe,
                 parent2=other.id)


# ---- self-modification (the mutator LM) -------------------------------------------------
class ConfigChange(BaseModel):
    """One config value the mutator proposes."""

    method: str = Field(max_length=40, description="'base' or a method of the chain")
    field: str = Field(max_length=40)
    value: bool | int | float | str | None = None


class Proposal(BaseModel):
    """The mutator's reply: one change to the Solver (unused parts null or empty)."""

    rationale: str = Field("", max_length=200)
    instructions: str | None = Field(None, max_length=400)
    template: str | None = Field(None, max_length=300)
    prompt_format: Literal["chat", "completion"] | None = None
    config: list[ConfigChange] = Field(default_factory=list, max_length=3)


class CodeProposal(BaseModel):
    """The mutator's reply to ``self_modify_code``: new Python sources (null: keep)."""

    rationale: str = Field("", max_length=200)
    render: str | None = Field(None, max_length=3000)
    postprocess: str | None = Field(None, max_length=3000)


def shorten(obj: Any, max_items: int = 3, max_chars: int = 160) -> Any:
    """``obj`` with long lists cut to ``max_items`` (and a count) and long strings cut.

    Example:
        >>> shorten({"pool": list(range(10)), "s": "x" * 300}, max_chars=5)
        {'pool': [0, 1, 2, '... 7 more'], 's': 'xxxxx...'}
    """
    if isinstance(obj, dict):
        return {k: shorten(v, max_items, max_chars) for k, v in obj.items()}
    if isinstance(obj, list):
        head = [shorten(v, max_items, max_chars) for v in obj[:max_items]]
        return head + ([f"... {len(obj) - max_items} more"] if len(obj) > max_items else [])
    if isinstance(obj, str) and len(obj) > max_chars:
        return obj[:max_chars] + "..."
    return obj


_ASK = ('Propose ONE change as JSON: {"rationale": "...", "instructions": "new instructions '
        'or null", "template": "a new prompt template using {input}, or null", '
        '"prompt_format": "chat" or "completion" or null, "config": [{"method": '
        '"base" or a method of the recipe, "field": "...", "value": ...}]}')

_ASK_CODE = (
    "Improve the Solver by writing Python (standard library only; it runs in a sandbox, "
    "batched, with a time limit). Optional functions:\n"
    "- def render(input: str, prompt: str) -> str: input is the example's text, prompt is "
    "the example as the template renders it; return the text the model reads instead.\n"
    "- def postprocess(output: str) -> str: the model's answer in, the final answer out.\n"
    'Reply as JSON: {"rationale": "...", "render": "python source defining render, or '
    'null", "postprocess": "python source defining postprocess, or null"}')


def mutator_prompt(parent: Node, ctx: MutationContext, ask: str = _ASK) -> str:
    """What the mutator reads: the task, the Solver JSON (shortened), its chain and fit
    notes, its dev score and a few failed dev examples, and the JSON wanted back
    (``ask``)."""
    task = ctx.task
    lines = [
        "You improve a Solver: a small language model plus how it is prompted.",
        f"Task: {getattr(task, 'name', '?')} ({getattr(task, 'kind', '?')}). "
        f"Task instructions: {getattr(task, 'instructions', '') or '(none)'}",
        f"Dev accuracy: {parent.score if parent.score is not None else '?'} "
        f"on {parent.n_scored} examples.",
        f"Recipe: {parent.recipe.describe()}",
        "Solver JSON: " + json.dumps(shorten(parent.solver or {}), ensure_ascii=False)[:1500],
    ]
    notes = {k: v for k, v in parent.notes.items() if k != "rationale"}
    if notes:
        lines.append("Fit report: " + json.dumps(shorten(notes), ensure_ascii=False)[:600])
    fails = parent.failures[: ctx.n_failures]
    if fails:
        lines.append("Dev examples it got wrong:")
        for f in fails:
            lines.append(f"- input: {str(f.get('input'))[:200]} | expected: "
                         f"{str(f.get('reference'))[:60]} | got: {str(f.get('output'))[:60]}")
    lines.append(ask)
    return "\n".join(lines)


def _ask_mutator(parent: Node, ctx: MutationContext, rng: random.Random, model: type[Any],
                 ask: str) -> tuple[Any, dict[str, int], bool]:
    """One structured mutator call: the parsed reply, its cost, whether it was constrained.

    Raises:
        InvalidChildError: the reply does not parse as ``model``.
    """
    from metaskill.lm.structured import complete_structured

    request = Request(messages=(Message(role="user", content=mutator_prompt(parent, ctx, ask)),),
                      max_tokens=ctx.mutator_max_tokens, temperature=0.7,
                      seed=rng.randrange(2**31))
    [reply] = complete_structured(ctx.mutator, [request], model)
    c = reply.completion
    cost = {"lm_calls": 1 + c.retries, "prompt_tokens": c.usage.prompt_tokens,
            "completion_tokens": c.usage.completion_tokens}
    if reply.value is None:
        raise InvalidChildError(f"the mutator's reply is not a proposal: {reply.error}", cost)
    return reply.value, cost, reply.constrained


def _check_template(template: str, ctx: MutationContext, cost: dict[str, int]) -> None:
    """Raise InvalidChildError for a template that does not check, or names a field that
    the task's first train/dev example does not have."""
    from metaskill.eval.custom import check_template

    try:
        fields = check_template(template)
    except MetaskillError as e:
        raise InvalidChildError(f"the proposed template is invalid: {e}", cost) from None
    splits = getattr(ctx.task, "splits", None) or {}
    sample = next((xs[0] for name in ("dev", "train") if (xs := splits.get(name))), None)
    if sample is not None:
        have = {"input", *(sample.input if isinstance(sample.input, dict) else {})}
        if fields - have:
            raise InvalidChildError(
                f"the proposed template names field(s) {', '.join(sorted(fields - have))} "
                f"the task's examples do not have (they have: {', '.join(sorted(have))})", cost)


def self_modify(parent: Node, ctx: MutationContext, rng: random.Random) -> Child:
    """The DGM step: the mutator LM reads the parent (Solver JSON, fit report, failed dev
    examples) and proposes new instructions, a prompt template, a prompt format or config
    values."""

    if ctx.mutator is None:
        raise NotApplicable("no mutator LM")
    p, cost, constrained = _ask_mutator(parent, ctx, rng, Proposal, _ASK)
    recipe = parent.recipe.model_copy(deep=True)
    said: list[str] = []
    rebuild = False
    if p.prompt_format is not None:
        recipe.base["format"] = p.prompt_format
        said.append(f"prompt format {p.prompt_format}")
        rebuild = True
    for change in p.config:
        if change.method == "base":
            where = recipe.base
        else:
            step = next((s for s in recipe.chain if s.method == change.method), None)
            if step is None:
                raise InvalidChildError(f"the mutator changed '{change.method}', which is not in "
                                   f"the chain ({recipe.describe()})", cost)
            where = step.options
        where[change.field] = change.value
        said.append(f"{change.method}.{change.field}={change.value!r}")
        rebuild = True
    if p.instructions is not None and p.instructions.strip():
        recipe.edits["instructions"] = p.instructions.strip()
        said.append(f"instructions {p.instructions.strip()[:60]!r}")
    if p.template is not None and p.template.strip():
        _check_template(p.template, ctx, cost)
        recipe.custom["template"] = p.template
        said.append(f"template {p.template[:60]!r}")
    if not said:
        raise InvalidChildError("the mutator proposed no change", cost)
    return Child("self_modify", "; ".join(said), recipe, rebuild=rebuild,
                 notes={"rationale": p.rationale, "constrained": constrained}, **cost)


def self_modify_code(parent: Node, ctx: MutationContext, rng: random.Random) -> Child:
    """The DGM step on code: the mutator LM reads the parent (its Solver JSON, current
    template and code, fit report, failed dev examples) and writes new Python for the
    Solver's ``render(input, prompt)`` and/or ``postprocess(output)``, run only in the
    sandbox (refused, as an invalid child, where the sandbox cannot run)."""
    from metaskill.eval.custom import check_code, sandbox_problem

    if ctx.mutator is None:
        raise NotApplicable("no mutator LM")
    if problem := sandbox_problem():
        raise InvalidChildError(f"code child refused: {problem}")
    current = dict(parent.recipe.custom)
    ask = _ASK_CODE
    if current:
        ask = "Current custom parts: " + json.dumps(current, ensure_ascii=False)[:2000] + \
            "\n" + ask
    p, cost, constrained = _ask_mutator(parent, ctx, rng, CodeProposal, ask)
    recipe = parent.recipe.model_copy(deep=True)
    said = []
    for name in ("render", "postprocess"):
        source = getattr(p, name)
        if source is None or not source.strip():
            continue
        try:
            check_code(name, source)
        except MetaskillError as e:
            raise InvalidChildError(f"the proposed code is invalid: {e}", cost) from None
        recipe.custom[name] = source
        said.append(f"{name} ({len(source.splitlines())} lines)")
    if not said:
        raise InvalidChildError("the mutator proposed no code", cost)
    return Child("self_modify_code", "new " + ", ".join(said), recipe, rebuild=False,
                 notes={"rationale": p.rationale, "constrained": constrained}, **cost)


for _fn in (add_method, remove_method, replace_method, tweak_config, prompt_format, crossover,
            self_modify, self_modify_code):
    MUTATIONS.register(_fn.__name__, _fn)


def default_mutations() -> dict[str, Mutation]:
    """The registered mutations, by name."""
    return {name: MUTATIONS.get(name) for name in MUTATIONS.names()}


__all__ = ["MUTATIONS", "Child", "CodeProposal", "ConfigChange", "InvalidChildError", "Mutation",
           "MutationContext", "NotApplicable", "Proposal", "add_method", "bounds",
           "crossover", "default_mutations", "mutator_prompt", "new_value", "prompt_format",
           "remove_method", "replace_method", "self_modify", "self_modify_code", "shorten",
           "tunable_fields", "tweak_config"]
