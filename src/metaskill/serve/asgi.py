"""The ASGI (FastAPI) side of ``metaskill serve``; imported only when an app is built.

:func:`create_app` builds the app; :mod:`metaskill.serve.app` (which this module builds on
and which never imports it) describes how a chat request becomes a Solver call.

Example:
    >>> from metaskill.eval.solvers import ZeroShot
    >>> from metaskill.lm.fake import ScriptedLM
    >>> from metaskill.serve.app import chat_task
    >>> app = create_app(ZeroShot(ScriptedLM(default="hi")), chat_task(), model_id="demo")
    >>> from fastapi.testclient import TestClient            # doctest: +SKIP
    >>> TestClient(app).get("/v1/models").json()["data"][0]["id"]  # doctest: +SKIP
    'demo'
"""

from __future__ import annotations

import contextlib
import hmac
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request as HttpRequest

from metaskill.core.types import Usage
from metaskill.serve.app import (
    ApiError,
    ServeLimits,
    SolverService,
    chat_task,
    parse_chat_request,
    with_request_context,
)

_WORD = re.compile(r"\s*\S+|\s+")


def _chunks(text: str) -> list[str]:
    return _WORD.findall(text) or [""]


def _usage_json(u: Usage) -> dict[str, int]:
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens}


def create_app(
    solver: Any,
    task: Any | None = None,
    *,
    model_id: str = "metaskill",
    token: str | None = None,
    limits: ServeLimits | None = None,
    system_prompt: bool = True,
    history: bool = False,
) -> Any:
    """The FastAPI app serving ``solver`` (see :mod:`metaskill.serve.app` for the behaviour).

    The Solver is not modified: the app serves a copy rebuilt from its JSON around a
    :class:`~metaskill.serve.app.RequestContextLM`.

    Args:
        solver: any Solver; its LM is wrapped so each request's context reaches every call.
        task: the Task whose template/instructions the Solver uses; None:
            :func:`~metaskill.serve.app.chat_task`.
        model_id: the id listed by ``/v1/models`` and required in each request's ``model``.
        token: when set, every ``/v1`` request needs ``Authorization: Bearer <token>``.
        limits: request limits (:class:`~metaskill.serve.app.ServeLimits`).
        system_prompt: pass the client's system message to the LM (else drop it).
        history: pass earlier user/assistant turns to the LM (else drop them).

    Returns:
        A FastAPI application; ``app.state.service`` is its
        :class:`~metaskill.serve.app.SolverService`.
    """
    limits = limits or ServeLimits()
    solver = with_request_context(solver)
    service = SolverService(solver, task if task is not None else chat_task(), limits)
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(title="metaskill serve", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.state.service = service

    @app.exception_handler(ApiError)
    async def _api_error(_: HttpRequest, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body, status_code=exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: HttpRequest, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return JSONResponse(ApiError(exc.status_code, str(exc.detail), code=code).body,
                            status_code=exc.status_code)

    @app.middleware("http")
    async def _auth(request: HttpRequest, call_next: Any) -> Any:
        if token is not None and request.url.path.startswith("/v1"):
            given = request.headers.get("authorization", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                    value.strip().encode(), token.encode()):
                err = ApiError(401, "Missing or incorrect API key: send "
                               "'Authorization: Bearer <token>'.", code="invalid_api_key")
                return JSONResponse(err.body, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    def _model_card() -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": created, "owned_by": "metaskill",
                "metaskill": {"solver": getattr(solver, "kind", type(solver).__name__),
                              "backend": getattr(solver.lm, "spec", None),
                              "task": getattr(service.task, "name", None)}}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "handled": service.handled}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str) -> dict[str, Any]:
        if name != model_id:
            raise ApiError(404, f"The model '{name}' does not exist; this server serves "
                           f"'{model_id}'.", param="model", code="model_not_found")
        return _model_card()

    async def _read_body(request: HttpRequest) -> bytes:
        declared = request.headers.get("content-length")
        too_big = ApiError(413, f"the request body is over {limits.max_body_bytes} bytes.",
                           code="request_too_large")
        if declared and declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise too_big
        buf = bytearray()
        async for chunk in request.stream():
            buf += chunk
            if len(buf) > limits.max_body_bytes:
                raise too_big
        return bytes(buf)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HttpRequest) -> Any:
        body = await _read_body(request)
        inp = parse_chat_request(body, limits, model_id=model_id,
                                 system_prompt=system_prompt, history=history)
        answer = await service.answer(inp)
        cid = f"chatcmpl-{uuid.uuid4().hex}"
        now = int(time.time())
        if not inp.stream:
            return {
                "id": cid, "object": "chat.completion", "created": now, "model": model_id,
                "choices": [{"index": i, "message": {"role": "assistant", "content": out},
                             "logprobs": None, "finish_reason": fr}
                            for i, (out, fr) in enumerate(
                                zip(answer.outputs, answer.finish_reasons, strict=True))],
                "usage": _usage_json(answer.usage),
                "system_fingerprint": None,
            }

        def event(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
            chunk: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk",
                                     "created": now, "model": model_id,
                                     "system_fingerprint": None, "choices": choices}
            if inp.include_usage:
                chunk["usage"] = usage
            return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

        async def stream() -> AsyncIterator[str]:
            for i, (out, fr) in enumerate(zip(answer.outputs, answer.finish_reasons,
                                              strict=True)):
                yield event([{"index": i, "delta": {"role": "assistant", "content": ""},
                              "logprobs": None, "finish_reason": None}])
                for piece in _chunks(out):
                    if piece:
                        yield event([{"index": i, "delta": {"content": piece},
                                      "logprobs": None, "finish_reason": None}])
                yield event([{"index": i, "delta": {}, "logprobs": None,
                              "finish_reason": fr}])
            if inp.include_usage:
                yield event([], _usage_json(answer.usage))
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    return app


