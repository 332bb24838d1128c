"""Backend for any OpenAI-compatible HTTP server: ``openai:MODEL@BASE_URL``.

Works with vLLM, Ollama, the llama.cpp server (``python -m llama_cpp.server``) and hosted
APIs. Requests run asynchronously (httpx) with bounded concurrency; 429, 5xx and timeouts
are retried with exponential backoff and jitter. ``complete`` stays a plain synchronous
call: it runs its own event loop, in a worker thread when the caller already has one.

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
from collections.abc import Awaitable, Callable
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
        base_url: e.g. ``http://127.0.0.1:8000/v1``; default ``$OPENAI_BASE_URL`` or
            the OpenAI API.
        api_key_env: the environment variable holding the API key (may be unset for
            local servers).
        api_key: the key itself, for programmatic use; kept only in memory.
        concurrency: most requests in flight at once (default 8).
        max_retries: retries after the first attempt on 429, 5xx, timeouts and
            connection errors.
        backoff_s: first retry delay; doubles each retry (with jitter), capped at
            ``max_backoff_s``.
        max_backoff_s: the cap on one retry delay.
        timeout_s: per-request timeout.
        logprobs: ask the server for token log-probabilities in ``complete``.
        context_window: the model's context size, if you know it (used for messages).
        grammar: the server accepts llama.cpp's ``grammar`` field (llama.cpp servers do;
            OpenAI's API does not), so GBNF-constrained requests may be sent.
        cache: optional :class:`Cache`.
        spec: the spec string that loads this LM again.

    JSON-schema requests go out with ``response_format`` of type ``json_schema`` (OpenAI,
    vLLM, the llama.cpp server); a server that refuses that type (``llama_cpp.server``
    takes ``{"type": "json_object", "schema": ...}``) gets the second form from then on.
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
        self.model = model
        self.base_url = normalize_base_url(
            base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        )
        self.spec = spec or f"openai:{model}@{self.base_url}"
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
        self._schema_style = "json_schema"

    def __repr__(self) -> str:
        return f"OpenAICompatLM(model={self.model!r}, base_url={self.base_url!r})"

    @property
    def identity(self) -> dict[str, Any]:
        """Backend, model name and server URL (never the API key)."""
        return {"backend": "openai", "model": self.model, "base_url": self.base_url}

    # ---- HTTP ----------------------------------------------------------------------------
    def _client(self) -> httpx.AsyncClient:
        headers = {"Content-Type": "application/json"}
        if self.__key:
            headers["Authorization"] = f"Bearer {self.__key}"
        return httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(self.timeout_s, connect=min(10.0, self.timeout_s)),
            limits=httpx.Limits(max_connections=self.concurrency,
                                max_keepalive_connections=self.concurrency),
        )

    async def _post(
        self,
        client: httpx.AsyncClient,
        path: str,
        payload: dict[str, Any],
        *,
        retry_if: Callable[[httpx.Response], bool] | None = None,
    ) -> dict[str, Any]:
        """POST with retries; returns the JSON body or raises a one-line MetaskillError."""
        url = f"{self.base_url}{path}"
        last: httpx.Response | Exception | None = None
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            retry_after = 0.0
            try:
                resp = await client.post(url, json=payload)
            except (httpx.TimeoutException, httpx.TransportError) as e:
                last = e
            else:
                code = resp.status_code
                retryable = code == 429 or code >= 500
                if retryable and retry_if is not None and not retry_if(resp):
                    retryable = False
                if code < 400:
                    try:
                        return dict(resp.json())
                    except ValueError as e:
                        raise ServerError(f"{url} answered with invalid JSON") from e
                if not retryable:
                    raise self._http_error(url, resp)
                last = resp
                try:
                    retry_after = float(resp.headers.get("retry-after", 0) or 0)
                except ValueError:
                    retry_after = 0.0
            if attempt + 1 < attempts:
                delay = min(self.max_backoff_s, self.backoff_s * 2**attempt)
                delay = delay / 2 + self._rng.uniform(0, delay / 2)  # "equal jitter"
                await asyncio.sleep(max(delay, min(retry_after, self.max_backoff_s)))
        if isinstance(last, httpx.Response):
            raise ServerError(
                f"{url} answered HTTP {last.status_code} after {attempts} attempts: "
                f"{self._error_text(last)}"
            )
        kind = "timed out" if isinstance(last, httpx.TimeoutException) else "unreachable"
        raise ServerUnreachableError(
            f"server {self.base_url} {kind} after {attempts} attempts "
            f"({type(last).__name__}); is it running, and is the URL right?"
        )

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
    def _payload(self, r: Request, seed: int) -> tuple[str, dict[str, Any]]:
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
                if self._schema_style == "json_schema"
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
        sem = asyncio.Semaphore(self.concurrency)
        async with self._client() as client:

            async def one(r: Request, i: int) -> tuple[Sample, Usage, float, float]:
                async with sem:
                    t0 = time.perf_counter()
                    data = await self._post_request(client, r, r.seed + i)
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

    async def _post_request(self, client: httpx.AsyncClient, r: Request,
                            seed: int) -> dict[str, Any]:
        """POST one request; a server that refuses ``json_schema`` response formats gets
        the ``json_object`` + ``schema`` form (llama_cpp.server's) from then on."""
        path, body = self._payload(r, seed)
        try:
            return await self._post(client, path, body)
        except ServerError as e:
            said = str(e).lower()
            if (r.json_schema is None or self._schema_style != "json_schema"
                    or not ("response_format" in said or "json_schema" in said)):
                raise
        self._schema_style = "json_object"
        path, body = self._payload(r, seed)
        return await self._post(client, path, body)

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
        sem = asyncio.Semaphore(self.concurrency)

        def retry_if(resp: httpx.Response) -> bool:  # "logprobs unsupported" won't heal
            text = resp.text.lower()
            return "logprob" not in text and "echo" not in text

        async with self._client() as client:

            async def one(cont: str) -> float:
                full = prompt + cont
                body = {"model": self.model, "prompt": full, "max_tokens": 1, "echo": True,
                        "logprobs": 0, "temperature": 0.0}
                async with sem:
                    try:
                        data = await self._post(client, "/completions", body,
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
