"""An OpenAI-compatible HTTP server that applies a saved Solver in front of any LM backend.

:func:`metaskill.serve.asgi.create_app` returns a FastAPI app with
``POST /v1/chat/completions`` (streaming and not), ``GET /v1/models``,
``GET /v1/models/{id}`` and ``GET /health``. This module holds what does not need FastAPI:
parsing a chat request, the Solver service (one worker thread), errors, limits and the
binding rule; it never imports the ASGI side.

How a chat request becomes a Solver call (the Solver answers Examples of a Task):

1. The LAST message must come from the user; its text is the input of one
   :class:`~metaskill.core.types.Example` (id derived from the text, so per-input random
   demos are deterministic). The Solver builds its prompt as it does in evaluation: the
   task's template and instructions (or its own), demonstrations it retrieves for this
   input (knn_demos, skill_demos ...), refinement rounds, and so on.
2. A ``system`` (or ``developer``) message is passed through by default: every LM call the
   Solver makes gets it in front (as a leading system message for chat prompts, merged
   with the Solver's own system message if it has one; as a leading paragraph for plain
   completion prompts). ``system_prompt=False`` drops it.
3. Earlier user/assistant turns are dropped by default: the Solver's demonstrations are
   its conversation. ``history=True`` puts them, verbatim, in front of every chat prompt
   the Solver builds (after the system message), or as ``User:``/``Assistant:`` lines in
   front of a plain prompt.
4. The client's ``max_tokens`` (or ``max_completion_tokens``) caps every generation the
   Solver asks for; ``temperature`` and ``top_p``, when given, override the Solver's;
   ``seed`` shifts every seed the Solver uses by that much (so a Solver that samples with
   distinct seeds keeps them distinct); ``stop`` adds to its stop strings. ``n`` > 1
   solves the input ``n`` times, choice ``i`` with the shift ``seed + i`` (identical
   answers at temperature 0).
5. The answer is the Solver's answer (``Attempt.output``: e.g. the first line for a
   classification task), and ``usage`` sums every LM call it made.

Streaming: the Solver's answer is only known once it has finished (it may extract a line,
vote, or refine), so a streamed response is computed first and then sent as OpenAI
``chat.completion.chunk`` events (one per word), ending with ``data: [DONE]``. Errors
therefore arrive as ordinary HTTP errors, never in the middle of a stream; the time to
the first chunk equals the full latency.

Concurrency: llama.cpp is not thread-safe, so every Solver call runs on ONE worker thread
(requests queue in order; the HTTP side stays async). At most ``limits.max_queue``
requests wait; beyond that the server answers 429 rather than lose or stall a request.

Errors use OpenAI's body ``{"error": {"message", "type", "param", "code"}}``: 400 for
bad JSON, missing or wrong fields and requests over the limits, 401 for a missing or wrong
bearer token, 404 for an unknown model or route, 413 for a body over ``max_body_bytes``,
429 when the queue is full, 500/502 when the Solver or backend fails.

Example:
    >>> chat_task().name
    'chat'
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from metaskill.core.errors import (
    ContextOverflowError,
    InvalidParameterError,
    MetaskillError,
    ServerUnreachableError,
)
from metaskill.core.types import Example, Message, Request, Usage

log = logging.getLogger("metaskill.serve")


# ---- limits and errors -------------------------------------------------------------------
@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask for; anything over gets a 400 (413 for the body, 429 queue).

    Attributes:
        max_tokens: the most ``max_tokens`` a client may request.
        max_input_chars: the most characters in all messages together.
        max_messages: the most messages in one request.
        max_n: the most choices (``n``) per request.
        max_body_bytes: the largest request body.
        max_queue: the most requests in flight (running or waiting for the LM).
    """

    max_tokens: int = 2048
    max_input_chars: int = 32_000
    max_messages: int = 256
    max_n: int = 4
    max_body_bytes: int = 1_000_000
    max_queue: int = 64

    def __post_init__(self) -> None:
        for name in ("max_tokens", "max_input_chars", "max_messages", "max_n",
                     "max_body_bytes", "max_queue"):
            if getattr(self, name) < 1:
                raise InvalidParameterError(f"serve limit {name} must be >= 1, "
                                            f"got {getattr(self, name)}.")


class ApiError(Exception):
    """An error answered as an OpenAI-style body with an HTTP status."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type, "param": param,
                               "code": code}}


def _bad(message: str, param: str | None = None, code: str | None = "invalid_value"
         ) -> ApiError:
    return ApiError(400, message, param=param, code=code)


# ---- the request schema --------------------------------------------------------------------
class _ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class _ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[_ContentPart] | None = None


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatRequest(BaseModel):
    """The subset of OpenAI's chat-completions body the server understands.

    Unknown fields are accepted and ignored (clients send many); ``tools``, ``functions``
    and non-text content are refused with a 400.
    """

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[_ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    stream: bool = False
    stream_options: _StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None


def _text_of(msg: _ChatMessage, i: int) -> str:
    if msg.content is None:
        return ""
    if isinstance(msg.content, str):
        return msg.content
    texts = []
    for part in msg.content:
        if part.type != "text" or part.text is None:
            raise _bad(f"messages[{i}]: content part of type '{part.type}' is not supported; "
                       "this server takes text only.", f"messages[{i}].content",
                       "unsupported_content")
        texts.append(part.text)
    return "".join(texts)


@dataclass(frozen=True)
class ChatInput:
    """A validated chat request, reduced to what the Solver call needs."""

    text: str
    prefix: tuple[Message, ...]
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    seed: int | None
    stop: tuple[str, ...]
    n: int
    stream: bool
    include_usage: bool


def parse_chat_request(body: bytes, limits: ServeLimits, *, model_id: str,
                       system_prompt: bool = True, history: bool = False) -> ChatInput:
    """Validate a request body into a :class:`ChatInput`, or raise :class:`ApiError`.

    Example:
        >>> b = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
        >>> parse_chat_request(b, ServeLimits(), model_id="m").text
        'hi'
    """
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _bad(f"the request body is not valid JSON ({e.msg if hasattr(e, 'msg') else e}).",
                   code="invalid_json") from None
    if not isinstance(data, dict):
        raise _bad("the request body must be a JSON object.", code="invalid_json")
    for unsupported in ("tools", "functions", "tool_choice", "function_call"):
        if data.get(unsupported):
            raise _bad(f"'{unsupported}' is not supported by a metaskill Solver server.",
                       unsupported, "unsupported_parameter")
    try:
        req = ChatRequest.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err.get("loc", ())) or None
        kind = "missing_required_parameter" if err.get("type") == "missing" else "invalid_type"
        what = "is required" if kind == "missing_required_parameter" else err.get("msg", "")
        raise _bad(f"'{loc}' {what}.", loc, kind) from None
    if req.model != model_id:
        raise ApiError(404, f"The model '{req.model}' does not exist; this server serves "
                       f"'{model_id}'.", param="model", code="model_not_found")
    if len(req.messages) > limits.max_messages:
        raise _bad(f"{len(req.messages)} messages is over the limit of "
                   f"{limits.max_messages}.", "messages", "too_many_messages")
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None \
        else req.max_tokens
    param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    if max_tokens is not None and not 1 <= max_tokens <= limits.max_tokens:
        raise _bad(f"{param} must be between 1 and {limits.max_tokens}, got {max_tokens}.",
                   param)
    if not 1 <= req.n <= limits.max_n:
        raise _bad(f"n must be between 1 and {limits.max_n}, got {req.n}.", "n")
    if req.temperature is not None and not 0.0 <= req.temperature <= 2.0:
        raise _bad(f"temperature must be between 0 and 2, got {req.temperature}.",
                   "temperature")
    if req.top_p is not None and not 0.0 < req.top_p <= 1.0:
        raise _bad(f"top_p must be in (0, 1], got {req.top_p}.", "top_p")
    stops = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    if len(stops) > 4:
        raise _bad(f"stop takes at most 4 sequences, got {len(stops)}.", "stop")

    texts = [_text_of(m, i) for i, m in enumerate(req.messages)]
    total = sum(len(t) for t in texts)
    if total > limits.max_input_chars:
        raise _bad(f"the messages hold {total} characters, over the limit of "
                   f"{limits.max_input_chars}.", "messages", "context_length_exceeded")
    roles = []
    for i, m in enumerate(req.messages):
        role = "system" if m.role == "developer" else m.role
        if role not in ("system", "user", "assistant"):
            raise _bad(f"messages[{i}]: role '{m.role}' is not supported (use system, "
                       "user or assistant).", f"messages[{i}].role", "unsupported_role")
        roles.append(role)
    if roles[-1] != "user":
        raise _bad("the last message must come from the user: it is the Solver's input.",
                   "messages", "last_message_not_user")
    if not texts[-1].strip():
        raise _bad("the last user message is empty.", "messages", "empty_input")

    system_texts = [t for r, t in zip(roles, texts, strict=True) if r == "system" and t]
    prefix: list[Message] = []
    if system_prompt and system_texts:
        prefix.append(Message(role="system", content="\n\n".join(system_texts)))
    if history:
        prefix += [Message(role=r, content=t)  # type: ignore[arg-type]
                   for r, t in zip(roles[:-1], texts[:-1], strict=True) if r != "system"]
    return ChatInput(
        text=texts[-1], prefix=tuple(prefix), max_tokens=max_tokens,
        temperature=req.temperature, top_p=req.top_p, seed=req.seed, stop=stops, n=req.n,
        stream=req.stream,
        include_usage=bool(req.stream_options and req.stream_options.include_usage),
    )


# ---- the LM wrapper that applies the request's context ---------------------------------------
@dataclass(frozen=True)
class _CallContext:
    prefix: tuple[Message, ...] = ()
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int = 0  # added to every request's seed
    stop: tuple[str, ...] = ()


# Context of the request being solved. Set only inside the single worker thread, for the
# duration of one Solver call (a context variable, not a shared mutable setting).
_CALL: contextvars.ContextVar[_CallContext | None] = contextvars.ContextVar(
    "metaskill_serve_call", default=None)


def _transcript(prefix: Sequence[Message]) -> str:
    lines = []
    for m in prefix:
        lines.append(m.content if m.role == "system" else
                     f"{'User' if m.role == 'user' else 'Assistant'}: {m.content}")
    return "\n\n".join(lines)


def _merge_messages(prefix: Sequence[Message], msgs: Sequence[Message]) -> tuple[Message, ...]:
    sys_parts = [m.content for m in prefix if m.role == "system"]
    rest = list(msgs)
    if rest and rest[0].role == "system":
        sys_parts.append(rest.pop(0).content)
    head = [Message(role="system", content="\n\n".join(sys_parts))] if sys_parts else []
    return (*head, *[m for m in prefix if m.role != "system"], *rest)


class RequestContextLM:
    """Wraps an LM so every call a Solver makes carries the current chat request's context.

    Everything but ``complete`` and ``score`` is delegated to the wrapped LM (spec, chat,
    count_tokens, prompt_of ...). Outside a request (no context set) it is transparent.
    """

    def __init__(self, lm: Any) -> None:
        self.inner = lm

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _apply(self, r: Request, ctx: _CallContext) -> Request:
        fields = r.model_dump()
        if ctx.max_tokens is not None:
            fields["max_tokens"] = min(r.max_tokens, ctx.max_tokens)
        if ctx.temperature is not None:
            fields["temperature"] = ctx.temperature
        if ctx.top_p is not None:
            fields["top_p"] = ctx.top_p
        if ctx.seed:
            fields["seed"] = r.seed + ctx.seed  # shift, so a Solver's distinct seeds stay distinct
        if ctx.stop:
            fields["stop"] = tuple(dict.fromkeys((*r.stop, *ctx.stop)))
        if ctx.prefix:
            if r.messages is not None:
                fields["messages"] = _merge_messages(ctx.prefix, r.messages)
            else:
                fields["prompt"] = f"{_transcript(ctx.prefix)}\n\n{r.prompt}"
        return Request(**fields)

    def complete(self, requests: Sequence[Request | dict[str, Any]], **kwargs: Any) -> Any:
        """``LM.complete`` with the request context applied to every request."""
        ctx = _CALL.get()
        if ctx is None:
            return self.inner.complete(requests, **kwargs)
        from metaskill.lm.base import as_request

        return self.inner.complete([self._apply(as_request(r), ctx) for r in requests],
                                   **kwargs)

    def score(self, context: Any, continuations: Sequence[str], **kwargs: Any) -> Any:
        """``LM.score`` with the request's system prompt / history in front of the context."""
        ctx = _CALL.get()
        if ctx is not None and ctx.prefix:
            if isinstance(context, str):
                context = f"{_transcript(ctx.prefix)}\n\n{context}"
            else:
                msgs = [m if isinstance(m, Message) else Message(**m) for m in context]
                context = list(_merge_messages(ctx.prefix, msgs))
        return self.inner.score(context, continuations, **kwargs)


def with_request_context(solver: Any) -> Any:
    """A copy of ``solver`` whose every LM call carries the current request's context.

    The copy is rebuilt from the Solver's JSON around a :class:`RequestContextLM`, so
    nested Solvers (an inner Solver of self-consistency, a refinement loop) share the
    wrapper too, and the given Solver is left untouched.
    """
    from metaskill.eval.solvers import load_solver

    lm = solver.lm if isinstance(solver.lm, RequestContextLM) else RequestContextLM(solver.lm)
    return load_solver(solver.to_json(), lm=lm)


# ---- the service: one worker thread in front of the Solver --------------------------------------
@dataclass
class Answer:
    """What the Solver answered for one chat request."""

    outputs: list[str]
    finish_reasons: list[str]
    usage: Usage = field(default_factory=Usage)
    latency_s: float = 0.0


def chat_task() -> Any:
    """The task used when none is given: the input as-is, no instructions, generative.

    Example:
        >>> chat_task().render(Example(id="a", input="hello"))
        'hello'
    """
    from metaskill.tasks.base import Task
    from metaskill.tasks.verifiers import ExactVerifier

    return Task(name="chat", description="free chat input (no task template)", splits={},
                template="{input}", instructions="", kind="generative",
                verifier=ExactVerifier())


class SolverService:
    """Runs a Solver for chat inputs, one call at a time on a single worker thread.

    Args:
        solver: a Solver whose LM is a :class:`RequestContextLM` (see
            :func:`with_request_context`).
        task: the Task the Solver answers (its template, instructions, labels).
        limits: the request limits (``max_queue`` bounds the requests in flight).
    """

    def __init__(self, solver: Any, task: Any, limits: ServeLimits) -> None:
        self.solver = solver
        self.task = task
        self.limits = limits
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metaskill-lm")
        self._in_flight = 0  # touched only on the event loop thread
        self.handled = 0

    def solve_sync(self, inp: ChatInput) -> Answer:
        """Solve one chat input (blocking; call on the worker thread)."""
        t0 = time.perf_counter()
        digest = hashlib.sha256(inp.text.encode("utf-8")).hexdigest()[:16]
        example = Example(id=f"chat-{digest}", input=inp.text)
        outputs, reasons, usage = [], [], Usage()
        for i in range(inp.n):
            ctx = _CallContext(prefix=inp.prefix, max_tokens=inp.max_tokens,
                               temperature=inp.temperature, top_p=inp.top_p,
                               seed=(inp.seed or 0) + i,
                               stop=inp.stop)
            token = _CALL.set(ctx)
            try:
                attempts = self.solver.solve(self.task, [example])
            finally:
                _CALL.reset(token)
            if len(attempts) != 1:
                raise RuntimeError(f"the solver returned {len(attempts)} attempts for 1 input")
            a = attempts[0]
            if a.error:
                raise MetaskillError(f"the solver failed on this input: {a.error}")
            outputs.append(a.output)
            fr = str(a.meta.get("finish_reason") or "stop")
            reasons.append("length" if fr == "length" else "stop")
            usage = usage + a.usage
        return Answer(outputs, reasons, usage, time.perf_counter() - t0)

    async def answer(self, inp: ChatInput) -> Answer:
        """Queue one input for the worker thread and await its answer.

        Raises:
            ApiError: 429 when ``max_queue`` requests are already in flight; 400/500/502
                when the Solver or the backend fails.
        """
        if self._in_flight >= self.limits.max_queue:
            raise ApiError(429, f"the server has {self._in_flight} requests in flight "
                           f"(limit {self.limits.max_queue}); retry later.",
                           type="rate_limit_error", code="queue_full")
        self._in_flight += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, self.solve_sync, inp)
        except ContextOverflowError as e:
            raise _bad(str(e), "messages", "context_length_exceeded") from None
        except ServerUnreachableError as e:
            raise ApiError(502, f"the backend is unreachable: {e}", type="server_error",
                           code="backend_unreachable") from None
        except InvalidParameterError as e:
            raise _bad(str(e)) from None
        except MetaskillError as e:
            raise ApiError(500, str(e), type="server_error", code="solver_error") from None
        except Exception as e:  # never a traceback to the client; keep one in the log
            log.exception("solver call failed")
            raise ApiError(500, f"internal error while solving: {type(e).__name__}: {e}",
                           type="server_error", code="internal_error") from None
        finally:
            self._in_flight -= 1
            self.handled += 1

    def close(self) -> None:
        """Stop the worker thread (after the queued calls finish)."""
        self._executor.shutdown(wait=True)


# ---- binding rules ---------------------------------------------------------------------------
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_binding(host: str, token: str | None) -> None:
    """Refuse to bind beyond loopback without a bearer token.

    Raises:
        MetaskillError: ``host`` is not a loopback address and no token is given.

    Example:
        >>> check_binding("127.0.0.1", None)
        >>> check_binding("0.0.0.0", None)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        metaskill.core.errors.MetaskillError: binding to 0.0.0.0 ... needs a bearer token...
    """
    if token is not None and not token.strip():
        raise MetaskillError("--token is empty; give a non-empty bearer token.")
    if host not in LOOPBACK and not host.startswith("127.") and token is None:
        raise MetaskillError(
            f"binding to {host} exposes the server beyond this machine and needs a bearer "
            "token: pass --token TOKEN (or set METASKILL_SERVE_TOKEN), or bind to 127.0.0.1.")

