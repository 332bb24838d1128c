"""The ``retrieve`` tool: looks a query up in a searcher and returns the top passages.

The searcher is passed in -- ``search(query, k) -> list[str]`` -- so this layer needs
neither the SkillBook nor the knowledge base: the methods layer wires their search (e.g.
the SkillBook's nearest skills, the experience memory's notes).

Example:
    >>> from metaskill.tools.base import call_tool
    >>> notes = ["add the tens, then the ones", "multiply digit by digit"]
    >>> search = lambda q, k: [n for n in notes if q.split()[0] in n][:k]
    >>> call_tool(retrieve_tool(search), {"query": "add numbers"}).result
    '1. add the tens, then the ones'
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, Field

from metaskill.tools.base import Tool

Searcher = Callable[[str, int], list[str]]


class RetrieveArgs(BaseModel):
    """The retrieve tool's argument."""

    query: str = Field(max_length=120, description="what to look up")


def retrieve(search: Searcher, query: str, k: int) -> str:
    """The top ``k`` passages for ``query``, numbered, one per line.

    Example:
        >>> retrieve(lambda q, k: [], "x", 3)
        '(nothing found)'
    """
    hits = [str(h).strip() for h in search(query, k)][:k]
    return "\n".join(f"{i}. {h}" for i, h in enumerate(hits, 1)) or "(nothing found)"


def retrieve_tool(search: Searcher, k: int = 3, timeout_s: float = 10.0) -> Tool:
    """The retrieve :class:`~metaskill.tools.base.Tool` over ``search``.

    Example:
        >>> retrieve_tool(lambda q, k: []).line()
        'retrieve(query): looks the query up in the skill library and returns notes'
    """
    return Tool("retrieve", "looks the query up in the skill library and returns notes",
                RetrieveArgs, lambda a: retrieve(search, a.query, k), timeout_s=timeout_s)
