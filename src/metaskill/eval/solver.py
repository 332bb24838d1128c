"""Solver: an LM plus how to use it. Its state is plain JSON with a schema version.

Every Solver answers a batch of examples of a task with :meth:`Solver.solve`, returning
one :class:`Attempt` per example. ``to_json`` / :func:`load_solver` round-trip its state
without the code that built it (only the registered ``kind`` name is needed).

Example:
    >>> from metaskill.lm.fake import ScriptedLM
    >>> s = ZeroShot(lm=ScriptedLM(default="positive"))   # doctest: +SKIP
    >>> s.to_json()["kind"]                               # doctest: +SKIP
    'zero-shot'
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, Field

from metaskill.core.types import Example, Message, Request, Usage

if TYPE_CHECKING:
    from metaskill.tasks.base import Task

#: The newest Solver JSON this metaskill reads and writes. 1: kind, model, state. 2: the
#: ``custom`` kind (:mod:`metaskill.eval.custom`: a template and sandboxed code around
#: another Solver). A Solver writes the version its kind needs (:attr:`Solver.json_version`),
#: so the JSON of every other kind is unchanged, and an older metaskill reading a v2 Solver
#: says "upgrade" instead of failing on an unknown kind.
SCHEMA_VERSION = 2


class Attempt(BaseModel):
    """What a Solver did for one example."""

    example_id: str
    prompt: str = ""
    output: str = ""
    usage: Usage = Field(default_factory=Usage)
    latency_s: float = 0.0
    error: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)


class Solver(ABC):
    """An LM plus how to use it.

    Subclasses set ``kind`` (registered in ``metaskill.eval.solvers.SOLVERS``), hold
    their learned state as plain attributes, and implement :meth:`solve`,
    :meth:`state` and :meth:`from_state`.
    """

    kind: ClassVar[str] = "solver"
    #: The Solver JSON ``schema_version`` this kind writes (see :data:`SCHEMA_VERSION`).
    json_version: ClassVar[int] = 1

    def __init__(self, lm: Any) -> None:
        self.lm = lm

    @abstractmethod
    def solve(self, task: Task, examples: list[Example]) -> list[Attempt]:
        """Answer a batch of examples of ``task``; one Attempt per example, in order."""

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """The learned state as JSON-able data (without the LM)."""

    @classmethod
    @abstractmethod
    def from_state(cls, state: dict[str, Any], lm: Any) -> Solver:
        """Rebuild a Solver from :meth:`state`'s output and an LM."""

    def with_lm(self, lm: Any) -> Solver:
        """The same Solver (same state) on another LM, e.g. the model plus an adapter."""
        return type(self).from_state(self.state(), lm)

    def to_json(self) -> dict[str, Any]:
        """Schema-versioned JSON: kind, model spec and state."""
        return {
            "schema_version": self.json_version,
            "kind": self.kind,
            "model": getattr(self.lm, "spec", None),
            "state": self.state(),
        }


def short_answer(task: Any) -> bool:
    """Whether ``task`` wants a one-line answer (classification or multiple choice).

    Example:
        >>> from types import SimpleNamespace as NS
        >>> short_answer(NS(kind="multiple_choice")), short_answer(NS(kind="generative"))
        (True, False)
    """
    return getattr(task, "kind", "generative") in ("classification", "multiple_choice")


def answer_max_tokens(task: Any, configured: int | None = None) -> int:
    """The generation budget of an answer to ``task``.

    ``configured`` when given; else the task's ``metadata['max_tokens']``; else 16 for
    classification and multiple choice and 256 for generative tasks.

    Example:
        >>> from types import SimpleNamespace as NS
        >>> answer_max_tokens(NS(kind="generative", metadata={"max_tokens": 48}))
        48
        >>> answer_max_tokens(NS(kind="classification", metadata={}), None)
        16
    """
    if configured:
        return configured
    hint = (getattr(task, "metadata", None) or {}).get("max_tokens")
    if hint:
        return int(hint)
    return 16 if short_answer(task) else 256


# ---- the prompt renderer (one for every prompting Solver) -----------------------------
PromptFormat = Literal["auto", "chat", "completion"]


def uses_chat(lm: Any, prompt_format: PromptFormat | None) -> bool:
    """Whether a prompt in ``prompt_format`` is chat messages (else plain completion text).

    ``auto`` (and None) means chat when the LM has a chat template (``lm.chat``, true
    when the LM does not say).

    Example:
        >>> from types import SimpleNamespace as NS
        >>> uses_chat(NS(chat=False), "auto"), uses_chat(NS(chat=False), "chat")
        (False, True)
    """
    if prompt_format in (None, "auto"):
        return bool(getattr(lm, "chat", True))
    return prompt_format == "chat"


def render_prompt(
    task: Task, example: Example, demos: Sequence[Example], instructions: str, *, chat: bool
) -> str | list[Message]:
    """The prompt that asks ``example`` after ``demos`` (in the order given).

    Chat: one user/assistant turn per demo, the instructions at the head of the first user
    turn. Plain completion (base models): the instructions, each demo as
    ``task.demo(d)``, then ``task.render(example)``, separated by blank lines. Empty
    instructions are left out. Every prompting Solver (zero-shot, k-shot, likelihood, the
    methods' DemoSolver) renders through this function, so they differ only in which
    demos they show.

    Example:
        >>> from metaskill.tasks.base import Task, Verdict, Verifier
        >>> class V(Verifier):
        ...     def verify(self, output, example): return Verdict(score=0.0)
        >>> task = Task(name="t", splits={}, verifier=V(), template="Q: {input}\\nA:")
        >>> demo = Example(id="d", input="1+1", answer="2")
        >>> print(render_prompt(task, Example(id="q", input="2+2"), [demo], "Add.", chat=False))
        Add.
        <BLANKLINE>
        Q: 1+1
        A: 2
        <BLANKLINE>
        Q: 2+2
        A:
        >>> [m.role for m in render_prompt(task, Example(id="q", input="2+2"), [demo], "",
        ...                                chat=True)]
        ['user', 'assistant', 'user']
    """
    if not chat:
        parts = [instructions] if instructions else []
        parts += [task.demo(d) for d in demos]
        parts.append(task.render(example))
        return "\n\n".join(parts)
    msgs: list[Message] = []
    head = f"{instructions}\n\n" if instructions else ""
    for d in demos:
        msgs.append(Message(role="user", content=head + task.render(d)))
        msgs.append(Message(role="assistant", content=str(d.answer or "")))
        head = ""
    msgs.append(Message(role="user", content=head + task.render(example)))
    return msgs


def default_stop(task: Any, chat: bool) -> tuple[str, ...]:
    """Stop strings of an answer: none in chat; in plain completion the end of the line
    (classification, multiple choice) or a blank line (generative tasks).

    Example:
        >>> from types import SimpleNamespace as NS
        >>> default_stop(NS(kind="classification"), chat=False), default_stop(NS(), chat=True)
        (('\\n',), ())
    """
    if chat:
        return ()
    return ("\n",) if short_answer(task) else ("\n\n",)


def prompt_request(
    task: Task,
    example: Example,
    demos: Sequence[Example],
    instructions: str,
    *,
    chat: bool,
    max_tokens: int,
    temperature: float = 0.0,
    seed: int = 0,
    stop: tuple[str, ...] | None = None,
    choices: tuple[str, ...] | None = None,
) -> Request:
    """The completion request for ``example`` after ``demos`` (see :func:`render_prompt`).

    Args:
        task: the task (template, kind).
        example: the input asked.
        demos: demonstrations, in prompt order.
        instructions: the preamble ("" for none).
        chat: chat messages, else one plain-completion prompt.
        max_tokens: generation limit.
        temperature: sampling temperature.
        seed: sampling seed.
        stop: stop strings; None means :func:`default_stop`.
        choices: constrain the answer to these strings (ranked by likelihood).

    Example:
        >>> from metaskill.tasks.base import Task, Verdict, Verifier
        >>> class V(Verifier):
        ...     def verify(self, output, example): return Verdict(score=0.0)
        >>> task = Task(name="t", splits={}, verifier=V(), kind="classification")
        >>> prompt_request(task, Example(id="q", input="hi"), [], "", chat=False,
        ...                max_tokens=4).stop
        ('\\n',)
    """
    context = render_prompt(task, example, demos, instructions, chat=chat)
    common: dict[str, Any] = {
        "max_tokens": max_tokens, "temperature": temperature, "seed": seed, "choices": choices,
        "stop": default_stop(task, chat) if stop is None else stop,
    }
    if isinstance(context, str):
        return Request(prompt=context, **common)
    return Request(messages=tuple(context), **common)
