"""Reading the files a user hands metaskill, where every bad file ends in one line.

Task files, data files, Solver JSON, profiles, SkillBook exports and adapter notes all
come through here, so each failure a file can cause is answered once, the same way: a
missing path, a folder where a file belongs, an unreadable or binary file, malformed JSON
or YAML, nesting deeper than :data:`MAX_DEPTH` (which would otherwise crash the parser or a
later serialiser with ``RecursionError``), an empty file, and the wrong top-level type.
Each raises the error class the caller names (default :class:`FileFormatError`), a
:class:`~metaskill.core.errors.MetaskillError` that the CLI prints as one line.

Example:
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "s.json"
    >>> _ = p.write_text('{"kind": "zero-shot"}')
    >>> read_json(p, "solver file")
    {'kind': 'zero-shot'}
    >>> _ = p.write_bytes(b"\\x89PNG\\r\\n\\x1a\\n\\x00")
    >>> try: read_json(p, "solver file")
    ... except FileFormatError as e: print(str(e).split(": ", 1)[1])
    not UTF-8 text (it looks like a binary file); give the right file, or re-encode it as UTF-8.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from metaskill.core.errors import FileFormatError, MetaskillError

MAX_DEPTH = 100
"""Deepest nesting of lists and mappings accepted in a JSON or YAML file.

pydantic refuses JSON deeper than about 250 levels and Python's own parsers recurse, so a
deeper file would fail later with a traceback; real task data and Solver state nest a few
levels.
"""

_TYPE_WORDS = {dict: "an object (mapping)", list: "a list", str: "a string"}


def read_text(path: str | Path, what: str, error: type[MetaskillError] = FileFormatError,
              ) -> str:
    """The UTF-8 text of the file at ``path``.

    Args:
        path: the file.
        what: how the message names the file, e.g. ``"solver file"``.
        error: the error class to raise.

    Raises:
        MetaskillError: (``error``) missing, a folder, unreadable, or not UTF-8 text.

    Example:
        >>> try: read_text("/nonexistent/x.json", "solver file")
        ... except FileFormatError as e: print(e)
        solver file /nonexistent/x.json does not exist.
    """
    p = Path(path)
    if p.is_dir():
        raise error(f"{what} {p} is a folder; give the path of a file.")
    if not p.exists():
        raise error(f"{what} {p} does not exist.")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise error(f"cannot read {what} {p}: {e.strerror or e}.") from None
    return decode_text(data, f"cannot read {what} {p}", error)


def decode_text(data: bytes, where: str, error: type[MetaskillError] = FileFormatError) -> str:
    """``data`` decoded as UTF-8 (a leading byte-order mark dropped).

    Raises:
        MetaskillError: (``error``) bytes that are not UTF-8 text, or hold NUL bytes.

    Example:
        >>> decode_text("é".encode(), "x")
        'é'
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:
        raise error(f"{where}: not UTF-8 text (it looks like a binary file); give the right "
                    "file, or re-encode it as UTF-8.")
    return text


def too_deep(where: str, error: type[MetaskillError] = FileFormatError,
             limit: int = MAX_DEPTH) -> MetaskillError:
    """The error for data nested deeper than ``limit`` (for a parser's ``RecursionError``).

    Example:
        >>> print(too_deep("d.jsonl:3"))
        d.jsonl:3: lists and objects nest deeper than 100 levels; flatten the data.
    """
    return error(f"{where}: lists and objects nest deeper than {limit} levels; flatten the "
                 "data.")


def check_depth(value: Any, where: str, error: type[MetaskillError] = FileFormatError,
                limit: int = MAX_DEPTH) -> Any:
    """``value`` itself, after checking that its lists and mappings nest at most ``limit`` deep.

    Iterative, so it cannot itself run out of stack.

    Raises:
        MetaskillError: (``error``) deeper than ``limit``.

    Example:
        >>> check_depth({"a": [[1]]}, "x", limit=3)
        {'a': [[1]]}
        >>> try: check_depth([[[1]]], "x", limit=2)
        ... except FileFormatError as e: print(e)
        x: lists and objects nest deeper than 2 levels; flatten the data.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children = list(node.values())
        elif isinstance(node, (list, tuple)):
            children = list(node)
        else:
            continue
        if depth > limit:
            raise too_deep(where, error, limit)
        stack.extend((c, depth + 1) for c in children)
    return value


def expect_type(value: Any, expect: type | None, where: str,
                error: type[MetaskillError] = FileFormatError) -> Any:
    """``value`` if it is an instance of ``expect`` (or ``expect`` is None).

    Raises:
        MetaskillError: (``error``) a value of another type, named in the message.

    Example:
        >>> try: expect_type([1], dict, "s.json: 'state'")
        ... except FileFormatError as e: print(e)
        s.json: 'state' must be an object (mapping), got a list.
    """
    if expect is None or isinstance(value, expect):
        return value
    want = _TYPE_WORDS.get(expect, expect.__name__)
    got = _TYPE_WORDS.get(type(value), "null" if value is None else type(value).__name__)
    raise error(f"{where} must be {want}, got {got}.")


def loads(text: str, where: str, error: type[MetaskillError] = FileFormatError,
          hint: str = "") -> Any:
    """``json.loads(text)`` whose every failure is one ``error`` line naming ``where``.

    Malformed JSON (with its position, then ``hint``), a number too long to convert, and
    nesting deeper than :data:`MAX_DEPTH` (a ``RecursionError`` inside the parser, or a
    parse that succeeded but would break a later serialiser) are all refused.

    Example:
        >>> loads('[1, {"a": 2}]', "x")
        [1, {'a': 2}]
        >>> try: loads('{"a": }', "d.jsonl:3", hint="fix that line.")
        ... except FileFormatError as e: print(e)
        d.jsonl:3: malformed JSON (Expecting value: line 1 column 7); fix that line.
    """
    tail = f"; {hint}" if hint else "."
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{where}: malformed JSON ({e.msg}: line {e.lineno} column "
                    f"{e.colno}){tail}") from None
    except RecursionError:
        raise too_deep(where, error) from None
    except ValueError as e:  # e.g. an integer longer than Python converts
        raise error(f"{where}: malformed JSON ({str(e).split(';')[0]}){tail}") from None
    return check_depth(value, where, error)


def parse_json(text: str, where: str, error: type[MetaskillError] = FileFormatError,
               expect: type | None = None) -> Any:
    """The value of the JSON ``text``, checked for depth and (with ``expect``) type.

    Args:
        text: the JSON text.
        where: how messages name the text, e.g. ``"solver file s.json"``.
        error: the error class to raise.
        expect: the type the top-level value must have (None: any).

    Raises:
        MetaskillError: (``error``) empty, malformed, too deep, or of the wrong type.

    Example:
        >>> parse_json('{"a": 1}', "x", expect=dict)
        {'a': 1}
        >>> try: parse_json("[" * 100000, "x")
        ... except FileFormatError as e: print(e)
        x: lists and objects nest deeper than 100 levels; flatten the data.
    """
    if not text.strip():
        raise error(f"{where}: the file is empty; it must hold JSON.")
    return expect_type(loads(text, where, error), expect, f"{where}: the top level", error)


def read_json(path: str | Path, what: str, expect: type | None = dict,
              error: type[MetaskillError] = FileFormatError) -> Any:
    """The JSON value in the file at ``path`` (see :func:`read_text`, :func:`parse_json`).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.json"
        >>> _ = p.write_text("[1, 2]")
        >>> try: read_json(p, "profile")
        ... except FileFormatError as e: print(str(e).split(": ", 1)[1])
        the top level must be an object (mapping), got a list.
    """
    return parse_json(read_text(path, what, error), f"cannot read {what} {path}", error,
                      expect)


def parse_yaml(text: str, where: str, error: type[MetaskillError] = FileFormatError) -> Any:
    """The value of the YAML ``text`` (safe loader), checked for depth.

    Raises:
        MetaskillError: (``error``) malformed YAML (with its line) or too deep.

    Example:
        >>> parse_yaml("a: [1, 2]", "t.yaml")
        {'a': [1, 2]}
    """
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise error(f"{where}{at}: invalid YAML ({problem}); fix the syntax.") from None
    except RecursionError:
        raise too_deep(where, error) from None
    return check_depth(value, where, error)


__all__ = ["MAX_DEPTH", "check_depth", "decode_text", "expect_type", "loads", "parse_json",
           "parse_yaml", "read_json", "read_text", "too_deep"]
