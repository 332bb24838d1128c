"""Plain data types shared by every layer.

All are pydantic models, so they validate early, serialize to JSON and copy cheaply.

Example:
    >>> r = Request(prompt="Review: great film\\nSentiment:", max_tokens=3)
    >>> r.temperature
    0.0
    >>> Example(id="a", input="2+2?", answer="4").skills
    []
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Role = Literal["system", "user", "assistant"]


class Message(BaseModel):
    """One chat message."""

    model_config = ConfigDict(frozen=True)

    role: Role
    content: str


class Request(BaseModel):
    """One completion request: chat ``messages`` or a plain ``prompt`` (exactly one).

    Attributes:
        messages: chat messages, rendered with the model's chat template.
        prompt: a plain-completion prompt (for base models such as Gemma 3 270M).
        max_tokens: most tokens to generate (>= 1).
        temperature: 0 means greedy.
        top_p: nucleus sampling mass in (0, 1].
        stop: strings that end generation (not included in the text).
        seed: sampling seed; with temperature > 0 each sample index gets its own seed.
        n: number of samples.
        choices: if given, the answer is constrained to one of these strings, chosen by
            log-likelihood with :meth:`LM.score`.
        json_schema: if given, the reply must be JSON valid under this schema (compact
            JSON text, keys in their given order -- the order the reply's fields are
            written in; a dict or a pydantic model class is accepted and converted). Local
            backends enforce it while decoding (llama.cpp grammars), servers get it as
            ``response_format``; :meth:`LM.complete` validates every reply, asks once more
            where one is invalid and marks a reply still invalid ``finish_reason="invalid"``.
        grammar: if given, the reply must match this GBNF grammar (llama.cpp's syntax;
            :func:`metaskill.lm.structured.choice_grammar` builds one for a list of choices).
            At most one of ``choices``, ``json_schema`` and ``grammar`` may be set.
    """

    model_config = ConfigDict(frozen=True)

    messages: tuple[Message, ...] | None = None
    prompt: str | None = None
    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 0
    n: int = 1
    choices: tuple[str, ...] | None = None
    json_schema: str | None = None
    grammar: str | None = None

    @field_validator("json_schema", mode="before")
    @classmethod
    def _coerce_schema(cls, v: Any) -> Any:
        import json

        if v is None or isinstance(v, str):
            if isinstance(v, str):
                try:
                    v = json.loads(v)
                except json.JSONDecodeError as e:
                    raise ValueError(f"not JSON ({e.msg}).") from None
            else:
                return None
        if isinstance(v, type) and issubclass(v, BaseModel):
            v = v.model_json_schema()
        if not isinstance(v, dict):
            raise ValueError("must be a JSON object (a dict, JSON text or a "
                             "pydantic model class).")
        # keys keep their order: a schema's property order is the order the reply is
        # written in (e.g. reasoning before the verdict)
        return json.dumps(v, separators=(",", ":"))

    @field_validator("messages", mode="before")
    @classmethod
    def _coerce_messages(cls, v: Any) -> Any:
        if v is None:
            return None
        return tuple(Message(**m) if isinstance(m, dict) else m for m in v)

    @field_validator("stop", "choices", mode="before")
    @classmethod
    def _coerce_tuple(cls, v: Any) -> Any:
        if isinstance(v, str):
            return (v,)
        return tuple(v) if v is not None else v

    @model_validator(mode="after")
    def _check(self) -> Request:
        from metaskill.core.errors import InvalidParameterError

        if (self.messages is None) == (self.prompt is None):
            raise InvalidParameterError("a Request needs exactly one of 'messages' or 'prompt'.")
        if self.max_tokens < 1:
            raise InvalidParameterError(f"max_tokens must be >= 1, got {self.max_tokens}.")
        if not 0.0 <= self.temperature <= 5.0:
            raise InvalidParameterError(
                f"temperature must be in [0, 5], got {self.temperature}."
            )
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidParameterError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.n < 1:
            raise InvalidParameterError(f"n must be >= 1, got {self.n}.")
        if self.choices is not None and len(self.choices) == 0:
            raise InvalidParameterError("choices, when given, must not be empty.")
        if sum(x is not None for x in (self.choices, self.json_schema, self.grammar)) > 1:
            raise InvalidParameterError(
                "a Request takes at most one constraint: choices, json_schema or grammar.")
        if self.grammar is not None and not self.grammar.strip():
            raise InvalidParameterError("grammar, when given, must not be empty.")
        return self

    @property
    def constrained(self) -> bool:
        """True when the reply is constrained by a JSON schema or a grammar."""
        return self.json_schema is not None or self.grammar is not None


class Usage(BaseModel):
    """Token counts of one request, as the backend reported them."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
        )


class Sample(BaseModel):
    """One generated sample."""

    text: str
    finish_reason: str = "stop"
    logprobs: list[float] | None = None


class Completion(BaseModel):
    """The answer to one :class:`Request`: ``n`` samples, usage and timing.

    ``text`` and ``finish_reason`` are those of the first sample.
    """

    samples: list[Sample]
    usage: Usage = Field(default_factory=Usage)
    latency_s: float = 0.0
    cached: bool = False
    retries: int = 0

    @property
    def text(self) -> str:
        """Text of the first sample."""
        return self.samples[0].text

    @property
    def texts(self) -> list[str]:
        """Texts of all samples."""
        return [s.text for s in self.samples]

    @property
    def finish_reason(self) -> str:
        """Finish reason of the first sample: "stop", "length", "choice", or "invalid" (the
        reply broke the request's JSON schema even when asked a second time)."""
        return self.samples[0].finish_reason

    @property
    def logprobs(self) -> list[float] | None:
        """Token log-probabilities of the first sample, where the backend gives them."""
        return self.samples[0].logprobs


class Example(BaseModel):
    """One input with its reference answer, an id, and the skills it exercises.

    Attributes:
        id: unique within its task.
        input: the question text, or a mapping of named fields.
        answer: the reference answer (None where a task has none).
        skills: names of the skills the example exercises (may be empty).
        metadata: anything else (level, source, options ...).
    """

    id: str
    input: str | dict[str, Any]
    answer: str | None = None
    skills: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def text(self) -> str:
        """The input as one string (fields joined as ``key: value`` lines)."""
        if isinstance(self.input, str):
            return self.input
        return "\n".join(f"{k}: {v}" for k, v in self.input.items())
