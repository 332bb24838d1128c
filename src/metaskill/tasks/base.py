"""Task and Verifier: the contract every layer above relies on.

A :class:`Task` is a named, versioned set of Examples with splits, a prompt template and a
:class:`Verifier`. A Verifier scores one output against one Example and returns a
:class:`Verdict` (score in [0, 1], a short reason, and the answer it parsed).

Example:
    >>> from metaskill.core.types import Example
    >>> class Exact(Verifier):
    ...     name = "exact"
    ...     def verify(self, output, example):
    ...         ok = output.strip() == (example.answer or "")
    ...         return Verdict(score=float(ok), reason="match" if ok else "mismatch",
    ...                        parsed=output.strip())
    >>> Exact().verify("4", Example(id="1", input="2+2", answer="4")).score
    1.0
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from metaskill.core.guard import check_examples
from metaskill.core.types import Example


class Verdict(BaseModel):
    """A verifier's judgement of one output.

    Attributes:
        score: in [0, 1].
        reason: a short reason, one line.
        parsed: the answer the verifier parsed from the output (None if none).
        meta: anything longer (an LM judge's full critique, a program's stderr).
    """

    score: float = Field(ge=0.0, le=1.0)
    reason: str = ""
    parsed: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)


class Verifier(ABC):
    """Scores an output against an Example. Subclasses set ``name`` and implement verify."""

    name: ClassVar[str] = "verifier"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Guard each subclass's own ``verify``/``verify_batch`` against test data in a fit."""
        super().__init_subclass__(**kwargs)
        for attr in ("verify", "verify_batch"):
            if attr in cls.__dict__:
                setattr(cls, attr, _guarded(cls.__dict__[attr], attr))

    @abstractmethod
    def verify(self, output: str, example: Example) -> Verdict:
        """Judge ``output`` (the model's text) against ``example``'s reference.

        May raise (a crashing scorer, a broken judge LM): the harness catches the
        exception and records the example as failed, or use
        :func:`metaskill.tasks.verifiers.safe_verify` to turn it into a score-0 Verdict.
        """

    def verify_batch(self, outputs: list[str], examples: list[Example]) -> list[Verdict]:
        """Judge many outputs; verifiers that batch (an LM judge) override this."""
        return [self.verify(o, e) for o, e in zip(outputs, examples, strict=True)]

    def parse(self, output: str, example: Example) -> str | None:
        """The answer this verifier reads in ``output``, WITHOUT looking at the reference.

        Methods compare answers through it (self-consistency's vote, AdaptMI's agreement
        gate), so "Positive." and "positive" count as one answer. None means the verifier
        reads no answer in the output (callers then fall back to the output's own text);
        a verifier that knows the output names no answer (a label verifier) returns "".

        The default is the ``parsed`` field of a verdict against a copy of ``example``
        with its reference (``answer`` and ``metadata["answers"]``) removed; verifiers
        that parse override it. It may raise where a verifier cannot judge without a
        reference.

        Example:
            >>> class Stripped(Verifier):
            ...     def verify(self, output, example):
            ...         return Verdict(score=0.0, parsed=output.strip())
            >>> Stripped().parse(" 4 ", Example(id="1", input="2+2", answer="4"))
            '4'
        """
        meta = {k: v for k, v in example.metadata.items() if k != "answers"}
        blind = example.model_copy(update={"answer": None, "metadata": meta})
        return self.verify(output, blind).parsed

    def to_spec(self) -> dict[str, Any]:
        """A JSON-able description from which the verifier can be rebuilt."""
        return {"name": self.name}


def _guarded(fn: Callable[..., Any], attr: str) -> Callable[..., Any]:
    """``fn`` that first checks its example(s) against the fit guard (see core/guard.py)."""

    @functools.wraps(fn)
    def wrapper(self: Verifier, outputs: Any, examples: Any, *args: Any, **kw: Any) -> Any:
        check_examples(examples if attr == "verify_batch" else [examples],
                       where=f"{type(self).__name__}.{attr}")
        return fn(self, outputs, examples, *args, **kw)

    return wrapper


TaskKind = Literal["classification", "multiple_choice", "generative"]


class Task(BaseModel):
    """A named, versioned set of Examples with splits, a prompt template and a Verifier.

    Attributes:
        name: registry name (snake_case).
        version: bumped whenever examples, template or verifier change.
        description: one line for ``tasks ls``.
        splits: split name -> examples (e.g. ``train``, ``dev``, ``test``).
        template: Python format string that renders one example up to where the answer
            starts, with ``{input}`` (the example text) and any of the input's field
            names, e.g. ``"Review: {input}\\nSentiment:"``. A demonstration is the
            rendered template, a space, and the reference answer.
        instructions: what to do and how to format the answer (a system/user preamble).
        labels: the label set of a classification task, else None.
        label_descriptions: label -> a short description of the texts that have it
            (``"a positive opinion of the film"``), for methods that ask about each label
            in words (meta-tuning's yes/no questions); None where the task has none.
        kind: classification, multiple_choice or generative.
        verifier: scores outputs against references.
        metadata: provenance, licence, split protocol and anything else.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str
    version: str = "1"
    description: str = ""
    splits: dict[str, list[Example]]
    template: str = "{input}"
    instructions: str = ""
    labels: list[str] | None = None
    label_descriptions: dict[str, str] | None = None
    kind: TaskKind = "generative"
    verifier: Verifier
    metadata: dict[str, Any] = Field(default_factory=dict)

    def examples(self, split: str) -> list[Example]:
        """The examples of ``split``.

        Raises:
            TaskError: if the split does not exist or is empty.
        """
        from metaskill.core.errors import TaskError

        if split not in self.splits:
            raise TaskError(
                f"task '{self.name}' has no split '{split}'; "
                f"it has: {', '.join(sorted(self.splits)) or 'none'}."
            )
        if not self.splits[split]:
            raise TaskError(f"split '{split}' of task '{self.name}' is empty.")
        return self.splits[split]

    def render(self, example: Example) -> str:
        """The example rendered with :attr:`template` (ends where the answer starts)."""
        fields = example.input if isinstance(example.input, dict) else {}
        return self.template.format(input=example.text, **fields)

    def demo(self, example: Example) -> str:
        """The example as a demonstration: rendered template, a space, the answer."""
        return f"{self.render(example)} {example.answer or ''}".rstrip()
