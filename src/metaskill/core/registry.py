"""One generic registry, after lm-evaluation-harness's ``Registry[T]``.

Duplicate names are an error; targets may be lazy ``"module:attr"`` strings so that
registering costs no import.

Example:
    >>> r: Registry[int] = Registry("numbers")
    >>> r.register("one", 1)
    >>> r.get("one")
    1
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterator
from typing import Generic, TypeVar

from metaskill.core.errors import MetaskillError, NotFoundError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object map where names are unique and lookups suggest close names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T | str] = {}

    def register(self, name: str, target: T | str) -> None:
        """Register ``target`` (an object or a lazy ``"module:attr"`` string) under ``name``.

        Raises:
            MetaskillError: if ``name`` is already registered.
        """
        if name in self._items:
            raise MetaskillError(
                f"{self.kind} '{name}' is already registered; choose another name "
                "(a registered name is never silently shadowed)."
            )
        self._items[name] = target

    def get(self, name: str) -> T:
        """Return the object registered under ``name``, importing it if it is lazy."""
        if name not in self._items:
            close = difflib.get_close_matches(name, list(self._items), n=3, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise NotFoundError(
                f"unknown {self.kind} '{name}'.{hint} Known: {', '.join(sorted(self._items))}."
            )
        target = self._items[name]
        if isinstance(target, str) and ":" in target:
            module, attr = target.split(":", 1)
            obj = getattr(importlib.import_module(module), attr)
            self._items[name] = obj
            return obj  # type: ignore[no-any-return]
        return target  # type: ignore[return-value]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._items)
