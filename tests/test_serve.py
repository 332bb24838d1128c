"""metaskill serve: the OpenAI-compatible Solver server, tested with the official client.

Logic runs on an in-process uvicorn thread with a scripted fake LM; the CLI is run as a
user would (subprocess, stopped by PID); one slow test serves a k-shot Solver on the real
embedded model.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from metaskill.core.types import Example  # noqa: E402
from metaskill.eval.solvers import KShot, ZeroShot, save_solver  # noqa: E402
from metaskill.lm.fake import ScriptedLM  # noqa: E402
from metaskill.serve import ServeLimits, ServerThread, create_app  # noqa: E402
from metaskill.tasks.base import Task  # noqa: E402
from metaskill.tasks.verifiers import ExactVerifier  # noqa: E402

from .conftest import free_port, stop_process  # noqa: E402

MODEL = "metaskill-test"


def sentiment_task() -> Task:
    pool = [Example(id="t1", input="a lovely film", answer="positive"),
            Example(id="t2", input="a dull mess", answer="negative")]
    return Task(name="senti", splits={"train": pool}, template="Review: {input}\nSentiment:",
                instructions="Answer positive or negative.", kind="classification",
                labels=["negative", "positive"], verifier=ExactVerifier())


def _client(srv: ServerThread, key: str = "none", retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.base_url, api_key=key, max_retries=retries, timeout=30)


@pytest.fixture
def lm() -> ScriptedLM:
    return ScriptedLM(lambda p, r: f"echo: {p.splitlines()[-2] if len(p.splitlines()) > 1 else p}")


@pytest.fixture
def server(lm: ScriptedLM) -> Iterator[ServerThread]:
    solver = ZeroShot(lm, format="chat")
    with ServerThread(create_app(solver, model_id=MODEL)) as srv:
        yield srv


# ---- basic protocol ------------------------------------------------------------------------
def test_models_lists_the_served_id(server: ServerThread) -> None:
    models = _client(server).models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert _client(server).models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        _client(server).models.retrieve("gpt-4")


def test_non_streaming_applies_solver_and_reports_usage(lm: ScriptedLM) -> None:
    task = sentiment_task()
    backend = ScriptedLM(default="positive\nbecause I said so")
    solver = KShot.for_task(backend, task, k=2, format="chat")
    with ServerThread(create_app(solver, task, model_id=MODEL)) as srv:
        r = _client(srv).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "what a great movie"}])
    assert solver.lm is backend  # the given Solver is not modified
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    # classification: the Solver keeps the first line of the raw text
    assert r.choices[0].message.content == "positive"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # the Solver built the prompt: instructions, both demos, the task's template
    prompt = backend.calls[-1]
    assert "Answer positive or negative." in prompt
    assert "Review: a lovely film" in prompt and "Review: a dull mess" in prompt
    assert "Review: what a great movie\nSentiment:" in prompt


def test_knn_demos_solver_retrieves_demos_per_request() -> None:
    """A knn_demos Solver, saved and served, picks each request's nearest demonstration."""
    from metaskill.methods.compose import MethodResources
    from metaskill.methods.demos import DemoSolver
    from metaskill.methods.knn_demos import KnnDemos, KnnDemosConfig

    task = sentiment_task()
    pool = [Example(id="a", input="great film", answer="positive"),
            Example(id="b", input="awful plot", answer="negative")]
    lm = ScriptedLM(default="negative")
    method = KnnDemos(KnnDemosConfig(k=1), resources=MethodResources(embedder_spec="hash:64"))
    solver = method.fit(DemoSolver(lm, None, k=0), task, pool)
    with ServerThread(create_app(solver, task, model_id=MODEL)) as srv:
        c = _client(srv)
        c.chat.completions.create(model=MODEL,
                                  messages=[{"role": "user", "content": "awful acting"}])
        first = lm.calls[-1]
        c.chat.completions.create(model=MODEL,
                                  messages=[{"role": "user", "content": "great acting"}])
        second = lm.calls[-1]
    assert "awful plot" in first and "great film" not in first
    assert "great film" in second and "awful plot" not in second


def test_streaming_matches_non_streaming(server: ServerThread) -> None:
    c = _client(server)
    msgs = [{"role": "user", "content": "stream this please"}]
    full = c.chat.completions.create(model=MODEL, messages=msgs).choices[0].message.content
    chunks = list(c.chat.completions.create(model=MODEL, messages=msgs, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == full and "stream this please" in text
    assert len([ch for ch in chunks if ch.choices]) >= 3  # role, words, finish
    finals = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
    assert finals[-1] == "stop" and all(f is None for f in finals[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0


def test_system_prompt_passed_and_history_dropped(lm: ScriptedLM, server: ServerThread
                                                  ) -> None:
    _client(server).chat.completions.create(model=MODEL, messages=[
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "first turn"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "second turn"}])
    prompt = lm.calls[-1]
    assert "You are terse." in prompt and "second turn" in prompt
    assert "first turn" not in prompt and "first answer" not in prompt


def test_history_option_keeps_earlier_turns(lm: ScriptedLM) -> None:
    with ServerThread(create_app(ZeroShot(lm, format="chat"), model_id=MODEL,
                                 history=True, system_prompt=False)) as srv:
        _client(srv).chat.completions.create(model=MODEL, messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "first turn"},
            {"role": "assistant", "content": "first answer"},
            {"role": "user", "content": "second turn"}])
    prompt = lm.calls[-1]
    assert "first turn" in prompt and "first answer" in prompt
    assert prompt.index("first answer") < prompt.index("second turn")
    assert "You are terse." not in prompt


def test_client_parameters_reach_the_backend(lm: ScriptedLM) -> None:
    seen = []
    original = lm._complete

    def spy(reqs):  # type: ignore[no-untyped-def]
        seen.extend(reqs)
        return original(reqs)

    lm._complete = spy  # type: ignore[method-assign]
    with ServerThread(create_app(ZeroShot(lm, format="chat", max_tokens=64),
                                 model_id=MODEL)) as srv:
        r = _client(srv).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=5,
            temperature=0.7, seed=11, n=2, stop=["END"])
    assert len(r.choices) == 2
    assert [q.max_tokens for q in seen] == [5, 5]
    assert [q.temperature for q in seen] == [0.7, 0.7]
    assert [q.seed for q in seen] == [11, 12]
    assert all("END" in q.stop for q in seen)


# ---- errors and auth ------------------------------------------------------------------------
def _err(resp: httpx.Response) -> dict[str, object]:
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_bad_requests_get_openai_errors(server: ServerThread) -> None:
    url = f"{server.base_url}/chat/completions"
    r = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and _err(r)["code"] == "invalid_json"
    r = httpx.post(url, json={"model": MODEL})
    assert r.status_code == 400 and _err(r)["param"] == "messages"
    assert _err(r)["code"] == "missing_required_parameter"
    r = httpx.post(url, json={"messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and _err(r)["param"] == "model"
    r = httpx.post(url, json={"model": MODEL, "messages": [{"role": "assistant",
                                                             "content": "x"}]})
    assert r.status_code == 400 and _err(r)["code"] == "last_message_not_user"
    r = httpx.post(url, json={"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404 and _err(r)["code"] == "model_not_found"
    r = httpx.get(f"{server.base_url}/nothing-here")
    assert r.status_code == 404 and _err(r)["type"] == "invalid_request_error"
    # the official client raises its typed errors with our message
    with pytest.raises(openai.BadRequestError, match="last message must come from the user"):
        _client(server).chat.completions.create(
            model=MODEL, messages=[{"role": "system", "content": "only a system prompt"}])


def test_requests_over_limits(lm: ScriptedLM) -> None:
    limits = ServeLimits(max_tokens=100, max_input_chars=1000, max_n=2, max_body_bytes=50_000)
    with ServerThread(create_app(ZeroShot(lm), model_id=MODEL, limits=limits)) as srv:
        c = _client(srv)
        user = [{"role": "user", "content": "x"}]
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model=MODEL, messages=user, max_tokens=101)
        assert e.value.body["param"] == "max_tokens"  # type: ignore[index]
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model=MODEL, messages=user, n=3)
        assert e.value.body["param"] == "n"  # type: ignore[index]
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model=MODEL, messages=[
                {"role": "user", "content": "y" * 1001}])
        assert e.value.body["code"] == "context_length_exceeded"  # type: ignore[index]
        r = httpx.post(f"{srv.base_url}/chat/completions", json={
            "model": MODEL, "messages": [{"role": "user", "content": "z" * 60_000}]})
        assert r.status_code == 413 and _err(r)["code"] == "request_too_large"
        # within limits still works
        assert c.chat.completions.create(model=MODEL, messages=user, max_tokens=100,
                                         n=2).choices[1].index == 1


def test_bearer_token_required_when_set(lm: ScriptedLM) -> None:
    with ServerThread(create_app(ZeroShot(lm), model_id=MODEL, token="s3cret")) as srv:
        user = [{"role": "user", "content": "x"}]
        with pytest.raises(openai.AuthenticationError):
            _client(srv, key="wrong").chat.completions.create(model=MODEL, messages=user)
        with pytest.raises(openai.AuthenticationError):
            _client(srv, key="wrong").models.list()
        r = httpx.get(f"{srv.base_url}/models")
        assert r.status_code == 401 and _err(r)["code"] == "invalid_api_key"
        ok = _client(srv, key="s3cret").chat.completions.create(model=MODEL, messages=user)
        assert ok.choices[0].message.content
        assert httpx.get(f"http://127.0.0.1:{srv.port}/health").status_code == 200


def test_solver_failure_is_a_500_not_a_hang() -> None:
    def boom(prompt: str, request: object) -> str:
        raise RuntimeError("backend exploded")

    with ServerThread(create_app(ZeroShot(ScriptedLM(boom)), model_id=MODEL)) as srv:
        with pytest.raises(openai.InternalServerError, match="backend exploded"):
            _client(srv).chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "x"}])
        # the worker survives: the next request is answered
        r = httpx.get(f"{srv.base_url}/models")
        assert r.status_code == 200


def test_queue_full_is_429_not_a_lost_request() -> None:
    import threading

    release = threading.Event()

    def blocked(prompt: str, request: object) -> str:
        release.wait(10)
        return "done"

    app = create_app(ZeroShot(ScriptedLM(blocked)), model_id=MODEL,
                     limits=ServeLimits(max_queue=1))

    async def run(base_url: str) -> list[object]:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
        user = [{"role": "user", "content": "x"}]
        first = asyncio.create_task(client.chat.completions.create(model=MODEL, messages=user))
        await asyncio.sleep(0.3)  # the first one holds the only slot
        try:
            await client.chat.completions.create(model=MODEL, messages=user)
            second: object = "accepted"
        except openai.RateLimitError as e:
            second = e.body
        release.set()
        out = [await first, second]
        await client.close()
        return out

    with ServerThread(app) as srv:
        first, second = asyncio.run(run(srv.base_url))
    assert first.choices[0].message.content == "done"  # type: ignore[attr-defined]
    assert second["code"] == "queue_full"  # type: ignore[index]


def test_context_reaches_completion_prompts_and_scores() -> None:
    """Base-model (completion) prompts and likelihood scoring also get the system prompt."""
    from metaskill.eval.solvers import LikelihoodClassifier

    task = sentiment_task()
    lm = ScriptedLM(default="positive")
    with ServerThread(create_app(ZeroShot(lm, format="completion"), task,
                                 model_id=MODEL)) as srv:
        _client(srv).chat.completions.create(model=MODEL, messages=[
            {"role": "system", "content": "SYSTEM-NOTE"}, {"role": "user", "content": "meh"}])
    assert lm.calls[-1].startswith("SYSTEM-NOTE\n\nAnswer positive or negative.")
    assert lm.calls[-1].endswith("Review: meh\nSentiment:")
    lm2 = ScriptedLM(default="negative")
    with ServerThread(create_app(LikelihoodClassifier(lm2, format="chat"), task,
                                 model_id=MODEL)) as srv:
        r = _client(srv).chat.completions.create(model=MODEL, messages=[
            {"role": "developer", "content": "SYSTEM-NOTE"},
            {"role": "user", "content": "meh"}])
    assert r.choices[0].message.content == "negative"
    assert lm2.calls[-1].startswith("system: SYSTEM-NOTE")


# ---- concurrency ----------------------------------------------------------------------------
def test_load_200_requests_concurrency_8_nothing_lost() -> None:
    """200 requests, 8 at a time: every one answered, with its own answer, no error, and the
    backend (not thread-safe) never entered by two threads at once."""
    import threading

    state = {"inside": 0, "max_inside": 0}
    guard = threading.Lock()

    def slow_echo(prompt: str, request: object) -> str:
        with guard:
            state["inside"] += 1
            state["max_inside"] = max(state["max_inside"], state["inside"])
        time.sleep(0.002)
        with guard:
            state["inside"] -= 1
        return "re: " + prompt.splitlines()[-2]  # the fake's transcript: "user: <input>"

    lm = ScriptedLM(slow_echo)
    app = create_app(ZeroShot(lm, format="chat"), model_id=MODEL)

    async def run(base_url: str) -> list[tuple[int, str]]:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=60)
        sem = asyncio.Semaphore(8)

        async def one(i: int) -> tuple[int, str]:
            async with sem:
                if i % 4 == 0:  # a quarter streamed
                    stream = await client.chat.completions.create(
                        model=MODEL, stream=True,
                        messages=[{"role": "user", "content": f"request number {i}"}])
                    parts = [ch.choices[0].delta.content or "" async for ch in stream
                             if ch.choices]
                    return i, "".join(parts)
                r = await client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": f"request number {i}"}])
                return i, r.choices[0].message.content or ""

        try:
            return await asyncio.gather(*(one(i) for i in range(200)))
        finally:
            await client.close()

    with ServerThread(app) as srv:
        results = asyncio.run(run(srv.base_url))
        handled = app.state.service.handled
    assert len(results) == 200
    for i, text in results:
        assert text == f"re: user: request number {i}", (i, text)
    assert handled == 200 and len(lm.calls) == 200
    assert state["max_inside"] == 1


# ---- the CLI as a user runs it --------------------------------------------------------------
def _serve(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    f = log.open("wb")
    return subprocess.Popen([sys.executable, "-m", "metaskill", "serve", *args],
                            stdout=f, stderr=subprocess.STDOUT)


def _wait_ready(proc: subprocess.Popen[bytes], base: str, log: Path, timeout: float = 120
                ) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {log.read_text()}")
        try:
            if httpx.get(base.replace("/v1", "/health"), timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError(f"server did not start: {log.read_text()}")


def test_cli_refuses_open_bind_without_token(tmp_path: Path, tmp_home: Path) -> None:
    path = save_solver(ZeroShot(ScriptedLM()), tmp_path / "s.json")
    r = subprocess.run([sys.executable, "-m", "metaskill", "serve", "--solver", str(path),
                        "--model", "fake", "--host", "0.0.0.0"], capture_output=True,
                       text=True, timeout=60, env={**__import__("os").environ,
                                                   "METASKILL_SERVE_TOKEN": ""})
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs a bearer token" in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_cli_bad_inputs_are_one_line(tmp_path: Path, tmp_home: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    for args, needle in ([["--solver", str(tmp_path / "missing.json")], "does not exist"],
                         [["--solver", str(bad)], "cannot read solver file"]):
        r = subprocess.run([sys.executable, "-m", "metaskill", "serve", *args, "--model",
                            "fake"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and needle in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    # a port already taken: one line, before any model loads
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ok = save_solver(ZeroShot(ScriptedLM()), tmp_path / "ok.json")
        r = subprocess.run([sys.executable, "-m", "metaskill", "serve", "--solver", str(ok),
                            "--model", "fake", "--port", str(port)], capture_output=True,
                           text=True, timeout=60)
    assert r.returncode == 1 and "cannot bind" in r.stderr and "Traceback" not in r.stderr
    # a k-shot solver without stored demos cannot answer the plain chat task
    path = tmp_path / "k.json"
    path.write_text(json.dumps({"schema_version": 1, "kind": "k-shot", "model": "fake",
                                "state": {"k": 2}}))
    r = subprocess.run([sys.executable, "-m", "metaskill", "serve", "--solver", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "--task" in r.stderr and "Traceback" not in r.stderr


def test_cli_serves_with_fake_model_and_token(tmp_path: Path, tmp_home: Path) -> None:
    path = save_solver(ZeroShot(ScriptedLM(), format="chat"), tmp_path / "zs.json")
    port = free_port()
    log = tmp_path / "serve.log"
    proc = _serve(["--solver", str(path), "--model", "fake", "--port", str(port),
                   "--token", "tok"], log)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_ready(proc, base, log)
        client = openai.OpenAI(base_url=base, api_key="tok", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["metaskill-zs"]
        r = client.chat.completions.create(model="metaskill-zs",
                                           messages=[{"role": "user", "content": "hello"}])
        assert r.choices[0].finish_reason == "stop" and r.usage.prompt_tokens > 0
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base, api_key="nope", max_retries=0).models.list()
    finally:
        stop_process(proc.pid)
    assert "serving solver zero-shot" in log.read_text()


@pytest.mark.slow
def test_real_model_kshot_sst2(tmp_path: Path, tmp_home: Path) -> None:
    """A 4-shot SST-2 Solver on the embedded SmolLM2, served by the CLI, answers a review."""
    pytest.importorskip("llama_cpp")
    from metaskill.lm import load_lm
    from metaskill.tasks import get_task

    task = get_task("sst2")
    solver = KShot.for_task(load_lm("fake", cache=False), task, k=4, seed=0)
    data = solver.to_json()
    data["model"], data["task"] = "local", "sst2"  # served with the JSON's model and task
    path = tmp_path / "sst2_4shot.json"
    path.write_text(json.dumps(data))
    port = free_port()
    log = tmp_path / "serve.log"
    proc = _serve(["--solver", str(path), "--port", str(port), "--no-cache", "--threads", "2"],
                  log)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_ready(proc, base, log, timeout=180)
        client = openai.OpenAI(base_url=base, api_key="x", max_retries=0, timeout=120)
        r = client.chat.completions.create(
            model="metaskill-sst2_4shot",
            messages=[{"role": "user", "content": "an utterly delightful, moving film"}])
        assert r.choices[0].message.content.strip().lower() in task.labels
        assert r.usage.prompt_tokens > 50  # the four demonstrations are in the prompt
        stream = client.chat.completions.create(
            model="metaskill-sst2_4shot", stream=True,
            messages=[{"role": "user", "content": "a boring, painfully stupid film"}])
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text.strip().lower() in task.labels
    finally:
        stop_process(proc.pid)
    assert "task sst2 (from the solver JSON)" in log.read_text()
