"""Structured outputs: replies constrained to a JSON schema or a grammar, parsed into objects.

A small model's free text rarely parses (SmolLM2-135M's critiques almost never did), and
retrying does not fix that. A :class:`~metaskill.core.types.Request` can instead carry a
constraint, which the backend enforces while decoding:

* ``json_schema`` -- the llama backend compiles it to a llama.cpp grammar; the openai
  backend sends it as ``response_format`` (OpenAI, vLLM and llama.cpp servers accept it);
  the hf backend enforces it, and grammars too, with llguidance (the ``structured`` extra;
  without it ``HFLM.constraints`` is empty).
* ``grammar`` -- a GBNF grammar (llama.cpp syntax), e.g. :func:`choice_grammar` for "the
  reply is one of these strings".

:meth:`LM.complete` validates every ``json_schema`` reply, whichever backend produced it (a
server may ignore ``response_format``), asks once more where one is invalid, and marks a
reply that is still invalid ``finish_reason="invalid"`` instead of raising. Methods call
:func:`complete_structured`, which returns a :class:`Structured` per request: the parsed
pydantic object, or None with the reason (the caller's recorded fallback).

Example:
    >>> from pydantic import BaseModel
    >>> from metaskill.lm.fake import ScriptedLM
    >>> class Verdict(BaseModel):
    ...     correct: bool
    >>> lm = ScriptedLM(default='{"correct": true}')
    >>> out = complete_structured(lm, [Request(prompt="Is 2+2=4? ")], Verdict)
    >>> out[0].value, out[0].error
    (Verdict(correct=True), None)
    >>> print(choice_grammar(["yes", "no"]))
    root ::= "yes" | "no"
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from metaskill.core.errors import InvalidParameterError
from metaskill.core.types import Completion, Request

T = TypeVar("T", bound=BaseModel)

CONSTRAINTS = ("json_schema", "grammar")
"""The constraint kinds a backend may support (its ``LM.constraints``)."""


def schema_text(schema: type[BaseModel] | dict[str, Any] | str) -> str:
    """The compact JSON text of a JSON schema (what ``Request.json_schema`` holds); keys keep
    their order, since property order is the order a constrained reply writes its fields.

    Example:
        >>> schema_text({"type": "object", "properties": {"b": {"type": "integer"}, "a": {}}})
        '{"type":"object","properties":{"b":{"type":"integer"},"a":{}}}'
    """
    r = Request(prompt=".", json_schema=schema)  # type: ignore[arg-type]
    assert r.json_schema is not None
    return r.json_schema


def _gbnf_literal(text: str) -> str:
    out = text.replace("\\", "\\\\").replace('"', '\\"')
    out = out.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{out}"'


def choice_grammar(choices: Sequence[str], *, prefix: str = "") -> str:
    """A GBNF grammar whose only sentences are ``prefix`` followed by one of ``choices``.

    Args:
        choices: the allowed replies (non-empty strings; duplicates are dropped).
        prefix: text every reply starts with (e.g. a space for a completion prompt).

    Raises:
        InvalidParameterError: no choices, or an empty one.

    Example:
        >>> print(choice_grammar(['say "hi"', "bye"], prefix=" "))
        root ::= " " ("say \\"hi\\"" | "bye")
    """
    uniq = list(dict.fromkeys(choices))
    if not uniq or any(not c for c in uniq):
        raise InvalidParameterError("choice_grammar needs at least one non-empty choice.")
    alts = " | ".join(_gbnf_literal(c) for c in uniq)
    if prefix:
        return f"root ::= {_gbnf_literal(prefix)} ({alts})"
    return f"root ::= {alts}"


def text_chars(max_tokens: int, *, overhead: int = 20, most: int = 400) -> int:
    """Characters a reply's free-text field may hold so that the JSON around it still fits
    in ``max_tokens`` (about 2.5 characters a token after ``overhead`` tokens of JSON):
    the ``max_length`` that keeps a constrained reply from being cut.

    Example:
        >>> text_chars(64)
        110
    """
    return max(16, min(most, int(2.5 * (max_tokens - overhead))))


def extract_json(text: str) -> str | None:
    """The JSON value in a reply: the whole text, else the outermost ``{...}``/``[...]``
    (so a reply wrapped in a code fence or a sentence still parses). None if none.

    Example:
        >>> extract_json('Sure! ```json\\n{"a": 1}\\n``` done')
        '{"a": 1}'
    """
    s = text.strip()
    try:
        json.loads(s)
        return s
    except json.JSONDecodeError:
        pass
    dec = json.JSONDecoder()
    for i, ch in enumerate(s):
        if ch in "{[":
            try:
                _, end = dec.raw_decode(s, i)
            except json.JSONDecodeError:
                continue
            return s[i:end]
    return None


def schema_error(schema: str, text: str) -> str | None:
    """Why ``text`` is not JSON valid under ``schema`` (JSON text), or None if it is.

    Validation uses the ``jsonschema`` library (Draft 2020-12, pydantic's dialect).

    Example:
        >>> s = schema_text({"type": "object", "required": ["a"]})
        >>> schema_error(s, '{"a": 1}') is None, schema_error(s, "{}")
        (True, "'a' is a required property")
    """
    import jsonschema

    body = extract_json(text)
    if body is None:
        return "the reply holds no JSON"
    try:
        value = json.loads(body)
    except (json.JSONDecodeError, RecursionError) as e:
        return f"the reply is not JSON ({e})"
    validator = jsonschema.Draft202012Validator(json.loads(schema))
    err = jsonschema.exceptions.best_match(validator.iter_errors(value))
    return None if err is None else err.message


@dataclass
class Structured(Generic[T]):
    """One parsed reply.

    Attributes:
        value: the reply parsed into the model; None when it could not be (a fallback).
        completion: the completion it came from (usage, text, ``retries``).
        error: why ``value`` is None; None when it parsed.
        constrained: whether the backend was asked to enforce the schema (False on a
            backend without ``json_schema`` support: the reply was free text, parsed).
    """

    value: T | None
    completion: Completion
    error: str | None = None
    constrained: bool = True

    @property
    def text(self) -> str:
        """The raw reply."""
        return self.completion.text


def parse_reply(text: str, model: type[T]) -> tuple[T | None, str | None]:
    """Parse ``text`` into ``model``: (value, None), or (None, why not).

    Example:
        >>> class A(BaseModel):
        ...     n: int
        >>> parse_reply('{"n": 3}', A)
        (A(n=3), None)
        >>> parse_reply("three", A)[1]
        'the reply holds no JSON'
    """
    body = extract_json(text)
    if body is None:
        return None, "the reply holds no JSON"
    try:
        return model.model_validate_json(body), None
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first.get("loc", ())) or "reply"
        return None, f"{loc}: {first.get('msg', 'invalid')}"


def complete_structured(
    lm: Any, requests: Sequence[Request], model: type[T], *, cache: bool = True
) -> list[Structured[T]]:
    """Ask each request for a reply that parses into ``model``.

    Requests without a constraint get ``json_schema=model``. On a backend that cannot
    enforce a schema (``"json_schema" not in lm.constraints``) the requests go out as free
    text and the replies are parsed leniently (``Structured.constrained`` is False).

    Args:
        lm: the model (an :class:`~metaskill.lm.base.LM`).
        requests: the requests (their prompts should also describe the wanted JSON).
        model: the pydantic model each reply must parse into.
        cache: passed to :meth:`LM.complete`.

    Returns:
        One :class:`Structured` per request, in order; never raises for a bad reply.

    Example:
        >>> from metaskill.lm.fake import ScriptedLM
        >>> class Score(BaseModel):
        ...     score: int
        >>> r = complete_structured(ScriptedLM(default="no idea"), [Request(prompt="q")], Score)
        >>> r[0].value is None, r[0].error
        (True, 'the reply broke the JSON schema twice (the reply holds no JSON)')
    """
    enforce = "json_schema" in getattr(lm, "constraints", frozenset())
    schema = schema_text(model)
    reqs = []
    for r in requests:
        if enforce and not r.constrained and r.choices is None:
            r = r.model_copy(update={"json_schema": schema})
        reqs.append(r)
    out: list[Structured[T]] = []
    for c in lm.complete(reqs, cache=cache):
        value, err = parse_reply(c.text, model)
        if c.finish_reason == "invalid" and err is not None:
            err = f"the reply broke the JSON schema twice ({err})"
        out.append(Structured(value=value, completion=c, error=err, constrained=enforce))
    return out
