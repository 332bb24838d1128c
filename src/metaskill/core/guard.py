"""No test data during fit: while a Method fits, a test Example reaching the LM is an error.

Selection happens on dev; the test split is read only by the final evaluation. A method
that scores its candidates on test (as ``self_evolve`` once did on tasks without a dev
split) reports numbers that are too good, and nothing downstream can tell. This guard makes
that class of bug loud instead of silent:

* :class:`~metaskill.methods.base.Method` enters :func:`guard_fit` around every ``fit``
  (each subclass's ``fit`` is wrapped when the class is defined), with the task's test
  examples;
* :meth:`LM.complete <metaskill.lm.base.LM.complete>` and :meth:`LM.score
  <metaskill.lm.base.LM.score>` call :func:`check_text` on every prompt: a prompt that holds
  a test input (its rendered text, matched on word boundaries, and not also an input of
  another split) raises :class:`TestDataLeakError`;
* every :class:`~metaskill.tasks.base.Verifier` and the harness call :func:`check_examples`:
  a test Example id raises.

Outside a fit the checks cost one context-variable lookup. The guard is a
:class:`contextvars.ContextVar`, so it follows the code that runs the fit (threads started
inside a fit do not inherit it unless they copy the context).

Example:
    >>> from metaskill.core.types import Example
    >>> test = [Example(id="t1", input="a film about a dog")]
    >>> with guard_fit("demo", test):
    ...     check_text("Review: a film about a cat", where="LM.complete")
    ...     try:
    ...         check_text("Review: a film about a dog\\nSentiment:", where="LM.complete")
    ...     except TestDataLeakError as e:
    ...         print(str(e)[:46])
    Test data reached LM.complete during demo.fit:
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from metaskill.core.errors import MetaskillError
from metaskill.core.types import Example

#: Inputs shorter than this are not matched as text (too likely to occur by chance).
MIN_TEXT_CHARS = 12


class TestDataLeakError(MetaskillError):
    """A test-split Example reached the LM or a Verifier while a Method was fitting."""

    __test__ = False  # not a pytest test class


@dataclass(frozen=True)
class FitGuard:
    """The test examples one fit must not touch.

    Attributes:
        owner: the method whose fit is guarded (named in the error).
        test_ids: ids of the test examples.
        test_texts: test inputs as they may appear in a prompt (word-bounded matches).
    """

    owner: str
    test_ids: frozenset[str]
    test_texts: tuple[str, ...]

    def leak(self, where: str, what: str) -> TestDataLeakError:
        """The error for a test item seen at ``where``."""
        return TestDataLeakError(
            f"Test data reached {where} during {self.owner}.fit: {what}. A method selects on "
            "the dev examples it is given (or a dev carved from train) and never reads the "
            "test split, which only the final evaluation scores."
        )


_ACTIVE: ContextVar[FitGuard | None] = ContextVar("metaskill_fit_guard", default=None)


def _texts(examples: Iterable[Example], render: Callable[[Example], str] | None) -> set[str]:
    out: set[str] = set()
    for e in examples:
        out.add(e.text.strip())
        if render is not None:
            try:
                out.add(render(e).strip())
            except (KeyError, IndexError, ValueError):
                pass  # a template that does not fit this example: the raw text still counts
    return {t for t in out if len(t) >= MIN_TEXT_CHARS}


def make_guard(owner: str, test: Iterable[Example], others: Iterable[Example] = (),
               render: Callable[[Example], str] | None = None) -> FitGuard:
    """A :class:`FitGuard` for ``test``; inputs that also occur in ``others``, or inside an
    input of ``others``, are not matched as text (their ids still are).

    Example:
        >>> from metaskill.core.types import Example
        >>> g = make_guard("m", [Example(id="t", input="same text in both splits")],
        ...                [Example(id="d", input="same text in both splits")])
        >>> g.test_ids, g.test_texts
        (frozenset({'t'}), ())
        >>> make_guard("m", [Example(id="t", input="turn left twice")],
        ...            [Example(id="d", input="Go on: turn left twice. Then stop.")]).test_texts
        ()
    """
    test, others = list(test), list(others)
    shared = _texts(others, render)
    # a test input that is also an input of another split, or occurs inside one (BIG-bench
    # navigate's instruction lists nest), cannot tell a leak from legitimate use
    pool = "\n\x00\n".join(sorted(shared))
    texts = sorted((t for t in _texts(test, render) - shared
                    if not (t in pool and _bounded(pool, t))), key=len, reverse=True)
    other_ids = {e.id for e in others}
    return FitGuard(owner=owner, test_ids=frozenset(e.id for e in test) - other_ids,
                    test_texts=tuple(texts))


@contextmanager
def guard_fit(owner: str, test: Iterable[Example], others: Iterable[Example] = (),
              render: Callable[[Example], str] | None = None) -> Iterator[FitGuard | None]:
    """Guard a fit: inside, test examples reaching the LM or a Verifier raise.

    A fit inside a fit (a chain, a method that fits another) keeps the outer guard.

    Example:
        >>> with guard_fit("m", []) as g:
        ...     active_guard() is g
        True
    """
    if _ACTIVE.get() is not None:
        yield _ACTIVE.get()
        return
    token = _ACTIVE.set(make_guard(owner, test, others, render))
    try:
        yield _ACTIVE.get()
    finally:
        _ACTIVE.reset(token)


def active_guard() -> FitGuard | None:
    """The guard of the fit now running, or None outside a fit."""
    return _ACTIVE.get()


@contextmanager
def use_guard(guard: FitGuard | None) -> Iterator[FitGuard | None]:
    """Run under ``guard`` (from another process's :func:`active_guard`, e.g. a Ray worker
    solving batches for a guarded fit); None leaves the guard as it is.

    Example:
        >>> g = make_guard("m", [])
        >>> with use_guard(g):
        ...     active_guard() is g
        True
    """
    if guard is None:
        yield _ACTIVE.get()
        return
    token = _ACTIVE.set(guard)
    try:
        yield guard
    finally:
        _ACTIVE.reset(token)


def _bounded(text: str, needle: str) -> bool:
    """Whether ``needle`` occurs in ``text`` not inside a longer word."""
    start = text.find(needle)
    while start != -1:
        end = start + len(needle)
        before = text[start - 1] if start else " "
        after = text[end] if end < len(text) else " "
        if not (before.isalnum() and needle[0].isalnum()) and not (
                after.isalnum() and needle[-1].isalnum()):
            return True
        start = text.find(needle, start + 1)
    return False


def check_text(text: str, *, where: str) -> None:
    """Raise :class:`TestDataLeakError` if a fit is running and ``text`` holds a test input."""
    guard = _ACTIVE.get()
    if guard is None or not guard.test_texts:
        return
    for needle in guard.test_texts:
        if needle in text and _bounded(text, needle):
            shown = needle if len(needle) <= 60 else needle[:57] + "..."
            raise guard.leak(where, f"the prompt holds the test input {shown!r}")


def check_examples(examples: Iterable[Any], *, where: str) -> None:
    """Raise :class:`TestDataLeakError` if a fit is running and an example is a test one."""
    guard = _ACTIVE.get()
    if guard is None or not guard.test_ids:
        return
    for e in examples:
        if getattr(e, "id", None) in guard.test_ids:
            raise guard.leak(where, f"test example '{e.id}'")
