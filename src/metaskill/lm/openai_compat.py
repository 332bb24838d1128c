"""Backend for any OpenAI-compatible HTTP server: ``openai:MODEL@BASE_URL``.

Works with vLLM, Ollama, the llama.cpp server (``python -m llama_cpp.server``) and hosted
APIs. Requests run asynchronously (httpx) with bounded concurrency; 429, 5xx and timeouts
are retried with exponential backoff and jitter. ``complete`` stays a plain synchronous
call: it runs its own event loop, in a worker thread when the caller already has one.

A pool of servers holding the same model (``openai:MODEL@URL1,URL2``, or a list of base
URLs) shares the work: each attempt goes to the server with the fewest requests in flight
(ties: the one picked least recently), up to ``concurrency`` per server. Least-outstanding
rather than round-robin, because it gives a faster (or less loaded) server more of the work
and routes around a slow one. A failed attempt (connection error, timeout, 429, 5xx) moves
the request to a server it has not tried yet; once it has tried them all it backs off as a
single server would. A server failing ``down_after`` times in a row is skipped for
``down_s`` seconds. The answer never depends on which server gave it: the cache identity
names the first URL only, and results come back in request order.

The API key is read from the environment (``OPENAI_API_KEY``, or the variable named by
``api_key_env``). It is sent in the Authorization header and nowhere else: it is not part
of the cache identity, not in ``repr`` and not in any error message.

Chat requests go to ``/v1/chat/completions``, plain prompts to ``/v1/completions``; sample
``i`` of a request is its own HTTP request with seed ``seed + i``. ``score`` uses
``/v1/completions`` with ``echo`` and ``logprobs`` (vLLM and the llama.cpp server support
it; hosted chat-only APIs do not, and get a clear :class:`MethodError`). Caveat, measured
with llama-cpp-python 0.3.36: its server pairs each echoed prompt token with the logits
*after* that token (off by one) for models that add no BOS token -- SmolLM2 is one -- so
its prompt log-probabilities, and scores computed from them, are wrong for such models.
Score with the embedded backend (``local``/``gguf:``) or a vLLM server instead.

Example:
    >>> lm = OpenAICompatLM("qwen2.5:0.5b", "http://127.0.0.1:11434/v1")  # Ollama
    >>> lm.identity["base_url"]
    'http://127.0.0.1:11434/v1'
    >>> lm.complete([Request(prompt="2+2=", max_tokens=2)])  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from metaskill.core.errors import (
    ContextOverflowError,
    InvalidParameterError,
    MetaskillError,
    MethodError,
    ServerUnreachableError,
)
from metaskill.core.types import Completion, Request, Sample, Usage
from metaskill.lm.base import LM
from metaskill.lm.cache import Cache

T = TypeVar("T")

DEFAULT_BASE_URL = "https://api.openai.com/v1"


class ServerError(MetaskillError, RuntimeError):
    """An OpenAI-compatible server answered with an error (after retries, if retryable)."""


def normalize_base_url(url: str) -> str:
    """``http://host:port`` -> ``http://host:port/v1``; other paths are kept as given.

    Example:
        >>> normalize_base_url("http://127.0.0.1:8000/")
        'http://127.0.0.1:8000/v1'
        >>> normalize_base_url("https://api.example.com/openai/v1")
        'https://api.example.com/openai/v1'
    """
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidParameterError(
            f"base URL {url!r} must look like http://HOST:PORT/v1 or https://HOST/v1."
        )
    if parts.path in ("", "/"):
        url += "/v1"
    return url


def split_base_urls(urls: str | Sequence[str]) -> tuple[str, ...]:
    """Comma-separated base URLs (or a list of them) -> normalized, distinct URLs, in order.

    Example:
        >>> split_base_urls("http://a:8000, http://b:8000/v1")
        ('http://a:8000/v1', 'http://b:8000/v1')
        >>> split_base_urls("http://a:8000,,http://b:8000")
        Traceback (most recent call last):
        ...
        metaskill.core.errors.InvalidParameterError: base URL list 'http://a:8000,,http://b:8000' has an empty entry.
    """  # noqa: E501
    parts = urls.split(",") if isinstance(urls, str) else list(urls)
    shown = urls if isinstance(urls, str) else ",".join(urls)
    if any(not str(u).strip() for u in parts):
        raise InvalidParameterError(f"base URL list {shown!r} has an empty entry.")
    out = tuple(normalize_base_url(str(u)) for u in parts)
    if len(set(out)) != len(out):
        raise InvalidParameterError(f"base URL list {shown!r} names a server twice.")
    return out


@dataclass
class _Server:
    """One server of the pool; its state lasts across calls."""

    url: str
    schema_style: str = "json_schema"  # this server's response_format form
    failures: int = 0  # consecutive failed attempts
    down_until: float = 0.0  # time.monotonic() before which it is skipped


class _Dispatch:
    """Per-call (per event loop) slot accounting: least-outstanding choice of a server."""

    def __init__(self, servers: list[_Server], per_server: int) -> None:
        self.servers = servers
        self.per_server = per_server
        self.outstanding = [0] * len(servers)
        self.last_pick = [0] * len(servers)
        self.ticks = 0
        self.cond = asyncio.Condition()

    def _up(self) -> list[int]:
        """Servers not marked down; all of them when every one is."""
        now = time.monotonic()
        up = [i for i, s in enumerate(self.servers) if s.down_until <= now]
        return up or list(range(len(self.servers)))

    def has_untried(self, tried: set[int]) -> bool:
        """Whether a server that is up remains outside ``tried``."""
        return any(i not in tried for i in self._up())

    def _choose(self, avoid: set[int]) -> int | None:
        up = self._up()
        tier = [i for i in up if i not in avoid] or up
        free = [i for i in tier if self.outstanding[i] < self.per_server]
        if not free:
            return None  # wait for a slot in the preferred tier
        return min(free, key=lambda i: (self.outstanding[i], self.last_pick[i]))

    async def acquire(self, avoid: set[int]) -> int:
        async with self.cond:
            while (i := self._choose(avoid)) is None:
                await self.cond.wait()
            self.outstanding[i] += 1
            self.ticks += 1
            self.last_pick[i] = self.ticks
            return i

    async def release(self, i: int) -> None:
        async with self.cond:
            self.outstanding[i] -= 1
            self.cond.notify_all()


def _run_sync(fn: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine function to completion from sync code, even inside a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(fn())  # type: ignore[arg-type]
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(fn())).result()  # type: ignore[arg-type]


class OpenAICompatLM(LM):
    """An LM behind an OpenAI-compatible HTTP API.

    Args:
        model: the model name the server knows (``gpt-4o-mini``, ``qwen2.5:0.5b`` ...).
        base_url: e.g. ``http://127.0.0.1:8000/v1``; several (a list, or one string
            separated by commas) make a pool of servers holding the same model; default
            ``$OPENAI_BASE_URL`` or the OpenAI API.
        api_key_env: the environment variable holding the API key (may be unset for
            local servers).
        api_key: the key itself, for programmatic use; kept only in memory.
        concurrency: most requests in flight at once per server (default 8).
        max_retries: retries after the first attempt on 429, 5xx, timeouts and
            connection errors; a pool adds one attempt per extra server.
        backoff_s: first retry delay; doubles each retry (with jitter), capped at
            ``max_backoff_s``.
        max_backoff_s: the cap on one retry delay.
        timeout_s: per-request timeout.
        logprobs: ask the server for token log-probabilities in ``complete``.
        context_window: the model's context size, if you know it (used for messages).
        grammar: the server accepts llama.cpp's ``grammar`` field (llama.cpp servers do;
            OpenAI's API does not), so GBNF-constrained requests may be sent.
        down_after: consecutive failed attempts (connection error, timeout, 5xx) after
            which a server of a pool is skipped ...
        down_s: ... for this many seconds (unless every server is down).
        cache: optional :class:`Cache`.
        spec: the spec string that loads this LM again.

    JSON-schema requests go out with ``response_format`` of type ``json_schema`` (OpenAI,
    vLLM, the llama.cpp server); a server that refuses that type (``llama_cpp.server``
    takes ``{"type": "json_object", "schema": ...}``) gets the second form from then on
    (decided per server of a pool).
    Whatever comes back is validated by :meth:`LM.complete`.
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        api_key: str | None = None,
        concurrency: int = 8,
        max_retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 20.0,
        timeout_s: float = 120.0,
        logprobs: bool = False,
        context_window: int | None = None,
        grammar: bool = False,
        down_after: int = 3,
        down_s: float = 30.0,
        cache: Cache | None = None,
        spec: str | None = None,
    ) -> None:
        super().__init__(cache=cache)
        if not model:
            raise InvalidParameterError("openai backend: the model name is empty.")
        if concurrency < 1:
            raise InvalidParameterError(f"concurrency must be >= 1, got {concurrency}.")
        if max_retries < 0 or backoff_s < 0 or timeout_s <= 0:
            raise InvalidParameterError(
                "max_retries and backoff_s must be >= 0 and timeout_s > 0."
            )
        if down_after < 1 or down_s < 0:
            raise InvalidParameterError("down_after must be >= 1 and down_s >= 0.")
        self.model = model
        self.base_urls = split_base_urls(
            base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        )
        self.base_url = self.base_urls[0]  # names the pool in the cache identity
        self.spec = spec or f"openai:{model}@{','.join(self.base_urls)}"
        self.concurrency = int(concurrency)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.timeout_s = float(timeout_s)
        self.logprobs = logprobs
        self.context_window = context_window
        self.api_key_env = api_key_env
        self.__key = api_key if api_key is not None else os.environ.get(api_key_env)
        self._rng = random.Random()
        self.constraints = frozenset({"json_schema", "grammar"} if grammar else {"json_schema"})
        self.down_after = int(down_after)
        self.down_s = float(down_s)
        self._servers = [_Server(u) for u in self.base_urls]

    def __repr__(self) -> str:
        if len(self.base_urls) > 1:
            return f"OpenAICompatLM(model={self.model!r}, base_urls={list(self.base_urls)!r})"
        return f"OpenAICompatLM(model={self.model!r}, base_url={self.base_url!r})"

    @property
    def identity(self) -> dict[str, Any]:
        """Backend, model name and server URL (never the API key).

        A pool is named by its first URL alone: its servers hold the same model, so which
        one answered (or how many there are) does not change the answer.
        """
        return {"backend": "openai", "model": self.model, "base_url": self.base_url}

    # ---- HTTP ----------------------------------------------------------------------------
    def _client(self) -> httpx.AsyncClient:
        headers = {"Content-Type": "application/json"}
        if self.__key:
            headers["Authorization"] = f"Bearer {self.__key}"
        return httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(self.timeout_s, connect=min(10.0, self.timeout_s)),
            limits=httpx.Limits(max_connections=self.concurrency * len(self._servers),
                                max_keepalive_connections=self.concurrency
                                * len(self._servers)),
        )

    def _dispatch(self) -> _Dispatch:
        return _Dispatch(self._servers, self.concurrency)

    def _note(self, server: _Server, failed: bool) -> None:
        """Count a server's consecutive failures; mark it down after ``down_after``."""
        if not failed:
            server.failures, server.down_until = 0, 0.0
            return
        server.failures += 1
        if server.failures >= self.down_after and len(self._servers) > 1:
            server.down_until = time.monotonic() + self.down_s

    async def _post(
        self,
        client: httpx.AsyncClient,
        slots: _Dispatch,
        make: Callable[[_Server], tuple[str, dict[str, Any]]],
        *,
        retry_if: Callable[[httpx.Response], bool] | None = None,
        on_error: Callable[[_Server, httpx.Response], bool] | None = None,
    ) -> tuple[dict[str, Any], float]:
        """POST with retries over the pool; returns (JSON body, start time of the first
        attempt) or raises a one-line MetaskillError.

        ``make(server)`` builds (path, payload) for a server; ``on_error(server, resp)``
        may adapt the server's state to an error answer and return True to resend at once.
        """
        last: httpx.Response | Exception | None = None
        last_url = self.base_url
        attempts = self.max_retries + len(self._servers)
        tried: set[int] = set()
        backoffs = 0
        t_start: float | None = None
        for attempt in range(attempts):
            i = await slots.acquire(tried)
            server = self._servers[i]
            tried.add(i)
            t_start = time.perf_counter() if t_start is None else t_start
            retry_after = 0.0
            try:
                resp = await self._send(client, server, make, on_error)
            except (httpx.TimeoutException, httpx.TransportError) as e:
                self._note(server, failed=True)
                last, last_url = e, server.url
            else:
                code = resp.status_code
                self._note(server, failed=code >= 500)
                retryable = code == 429 or code >= 500
                if retryable and retry_if is not None and not retry_if(resp):
                    retryable = False
                url = resp.request.url
                if code < 400:
                    try:
                        return dict(resp.json()), t_start
                    except ValueError as e:
                        raise ServerError(f"{url} answered with invalid JSON") from e
                if not retryable:
                    raise self._http_error(str(url), resp)
                last, last_url = resp, server.url
                try:
                    retry_after = float(resp.headers.get("retry-after", 0) or 0)
                except ValueError:
                    retry_after = 0.0
            finally:
                await slots.release(i)
            if attempt + 1 < attempts and not slots.has_untried(tried):
                # every server has had a go: back off, then start over away from this one
                delay = min(self.max_backoff_s, self.backoff_s * 2**backoffs)
                delay = delay / 2 + self._rng.uniform(0, delay / 2)  # "equal jitter"
                await asyncio.sleep(max(delay, min(retry_after, self.max_backoff_s)))
                backoffs += 1
                tried = {i}
        if isinstance(last, httpx.Response):
            raise ServerError(
                f"{last.request.url} answered HTTP {last.status_code} after {attempts} "
                f"attempts: {self._error_text(last)}"
            )
        kind = "timed out" if isinstance(last, httpx.TimeoutException) else "unreachable"
        where = (f"server {last_url}" if len(self._servers) == 1
                 else f"servers {', '.join(self.base_urls)}")
        raise ServerUnreachableError(
            f"{where} {kind} after {attempts} attempts "
            f"({type(last).__name__}); is it running, and is the URL right?"
        )

    @staticmethod
    async def _send(
        client: httpx.AsyncClient,
        server: _Server,
        make: Callable[[_Server], tuple[str, dict[str, Any]]],
        on_error: Callable[[_Server, httpx.Response], bool] | None,
    ) -> httpx.Response:
        """One attempt on one server (sent twice if ``on_error`` adapts to the error)."""
        path, body = make(server)
        resp = await client.post(f"{server.url}{path}", json=body)
        if resp.status_code >= 400 and on_error is not None and on_error(server, resp):
            path, body = make(server)
            resp = await client.post(f"{server.url}{path}", json=body)
        return resp

    @staticmethod
    def _error_text(resp: httpx.Response) -> str:
        try:
            body = resp.json()
            err = body.get("error", body) if isinstance(body, dict) else body
            msg = err.get("message", err) if isinstance(err, dict) else err
            if isinstance(msg, dict | list):
                msg = msg.get("detail", msg) if isinstance(msg, dict) else msg
            text = str(msg)
        except ValueError:
            text = resp.text
        return " ".join(text.split())[:300]

    def _http_error(self, url: str, resp: httpx.Response) -> MetaskillError:
        text = self._error_text(resp)
        if resp.status_code in (401, 403):
            return ServerError(
                f"{url} refused the request (HTTP {resp.status_code}): set the API key in "
                f"${self.api_key_env}. Server said: {text}"
            )
        if resp.status_code == 404:
            return ServerError(f"{url}: not found (HTTP 404); check the model name "
                               f"{self.model!r} and the base URL. Server said: {text}")
        if "context" in text.lower() and ("length" in text.lower() or "token" in text.lower()):
            return ContextOverflowError(f"{self.spec}: the prompt is too long for the "
                                        f"model's context window. Server said: {text}")
        return ServerError(f"{url} answered HTTP {resp.status_code}: {text}")

    # ---- complete --------------------------------------------------------------------------
    def _payload(self, r: Request, seed: int,
                 schema_style: str = "json_schema") -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": r.max_tokens,
            "temperature": r.temperature,
            "top_p": r.top_p,
            "seed": seed,
            "n": 1,
        }
        if r.stop:
            body["stop"] = list(r.stop)
        if r.grammar is not None:
            body["grammar"] = r.grammar
        if r.json_schema is not None:
            schema = json.loads(r.json_schema)
            body["response_format"] = (
                {"type": "json_schema",
                 "json_schema": {"name": "reply", "schema": schema, "strict": True}}
                if schema_style == "json_schema"
                else {"type": "json_object", "schema": schema})
        if r.messages is not None:
            body["messages"] = [m.model_dump() for m in r.messages]
            if self.logprobs:
                body["logprobs"] = True
            return "/chat/completions", body
        body["prompt"] = r.prompt
        if self.logprobs:
            body["logprobs"] = 1
        return "/completions", body

    @staticmethod
    def _parse(data: dict[str, Any], chat: bool) -> tuple[Sample, Usage]:
        try:
            choice = data["choices"][0]
        except (KeyError, IndexError, TypeError) as e:
            raise ServerError(f"unexpected response without choices: {str(data)[:200]}") from e
        if chat:
            text = (choice.get("message") or {}).get("content") or ""
        else:
            text = choice.get("text") or ""
        lps: list[float] | None = None
        lp = choice.get("logprobs")
        if isinstance(lp, dict):
            if chat and isinstance(lp.get("content"), list):
                lps = [float(t["logprob"]) for t in lp["content"] if t.get("logprob") is not None]
            elif isinstance(lp.get("token_logprobs"), list):
                lps = [float(x) for x in lp["token_logprobs"] if x is not None]
        finish = choice.get("finish_reason") or "stop"
        u = data.get("usage") or {}
        usage = Usage(prompt_tokens=int(u.get("prompt_tokens") or 0),
                      completion_tokens=int(u.get("completion_tokens") or 0))
        return Sample(text=text, finish_reason=str(finish), logprobs=lps), usage

    def _complete(self, requests: list[Request]) -> list[Completion]:
        return _run_sync(lambda: self._acomplete(requests))

    async def _acomplete(self, requests: list[Request]) -> list[Completion]:
        slots = self._dispatch()
        async with self._client() as client:

            async def one(r: Request, i: int) -> tuple[Sample, Usage, float, float]:
                data, t0 = await self._post_request(client, slots, r, r.seed + i)
                t1 = time.perf_counter()
                sample, usage = self._parse(data, chat=r.messages is not None)
                return sample, usage, t0, t1

            jobs = [one(r, i) for r in requests for i in range(r.n)]
            results = await asyncio.gather(*jobs)
        out: list[Completion] = []
        pos = 0
        for r in requests:
            part = results[pos : pos + r.n]
            pos += r.n
            usage = Usage()
            for _, u, _, _ in part:
                usage = usage + u
            out.append(
                Completion(
                    samples=[s for s, _, _, _ in part],
                    usage=usage,
                    latency_s=max(t1 for *_, t1 in part) - min(t0 for *_, t0, _ in part),
                )
            )
        return out

    async def _post_request(self, client: httpx.AsyncClient, slots: _Dispatch, r: Request,
                            seed: int) -> tuple[dict[str, Any], float]:
        """POST one request; a server that refuses ``json_schema`` response formats gets
        the ``json_object`` + ``schema`` form (llama_cpp.server's) from then on."""

        def refused_schema(server: _Server, resp: httpx.Response) -> bool:
            said = self._error_text(resp).lower()
            if (r.json_schema is None or server.schema_style != "json_schema"
                    or not ("response_format" in said or "json_schema" in said)):
                return False
            server.schema_style = "json_object"
            return True

        return await self._post(
            client, slots, lambda server: self._payload(r, seed, server.schema_style),
            on_error=refused_schema)

    # ---- score -------------------------------------------------------------------------------
    def _score(self, prompt: str, continuations: list[str]) -> list[float]:
        return _run_sync(lambda: self._ascore(prompt, continuations))

    def _no_score(self, why: str) -> MethodError:
        return MethodError(
            f"{self.spec} cannot score continuations: {why}. score() needs /v1/completions "
            "with echo and logprobs (vLLM, or the llama.cpp server with logits_all); use a "
            "local backend for scoring."
        )

    async def _ascore(self, prompt: str, continuations: list[str]) -> list[float]:
        slots = self._dispatch()

        def retry_if(resp: httpx.Response) -> bool:  # "logprobs unsupported" won't heal
            text = resp.text.lower()
            return "logprob" not in text and "echo" not in text

        async with self._client() as client:

            async def one(cont: str) -> float:
                full = prompt + cont
                body = {"model": self.model, "prompt": full, "max_tokens": 1, "echo": True,
                        "logprobs": 0, "temperature": 0.0}
                try:
                    data, _ = await self._post(client, slots, lambda _s: ("/completions", body),
                                               retry_if=retry_if)
                except ServerError as e:
                    raise self._no_score(str(e)) from e
                try:
                    lp = data["choices"][0]["logprobs"]
                    offsets = [int(x) for x in lp["text_offset"]]
                    tokens = [str(t) for t in lp["tokens"]]
                    values = lp["token_logprobs"]
                except (KeyError, IndexError, TypeError) as e:
                    raise self._no_score("the server returned no prompt log-probabilities") \
                        from e
                total, n = 0.0, 0
                for off, tok, v in zip(offsets, tokens, values, strict=False):
                    # tokens that cover continuation text (a token merging the prompt's
                    # tail with the continuation counts), not the one generated after it
                    if off + len(tok) > len(prompt) and off < len(full) and v is not None:
                        total += float(v)
                        n += 1
                if n == 0 and cont:
                    raise self._no_score("the server did not echo the prompt's tokens")
                return total

            return list(await asyncio.gather(*(one(c) for c in continuations)))
