"""The OpenAI-compatible backend: against a real llama_cpp.server, and a scripted loopback
server for behaviours a real server won't show on demand (429s, 5xx, concurrency)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from metaskill.core.errors import MethodError, ServerUnreachableError
from metaskill.core.types import Request
from metaskill.lm.cache import Cache
from metaskill.lm.openai_compat import OpenAICompatLM, ServerError

FAST = dict(max_retries=2, backoff_s=0.01, max_backoff_s=0.02, timeout_s=5)


class Scripted:
    """State shared with the handler: failures to serve first, what it saw."""

    def __init__(self) -> None:
        self.fail_first: list[int] = []  # status codes to answer before succeeding
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.delay_s = 0.0
        self.error_message: str | None = None  # the error text of a scripted failure
        self.lock = threading.Lock()


@pytest.fixture
def scripted():
    state = Scripted()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output quiet
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with state.lock:
                state.bodies.append(body)
                state.headers.append(dict(self.headers))
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
                status = state.fail_first.pop(0) if state.fail_first else 200
            time.sleep(state.delay_s)
            with state.lock:
                state.in_flight -= 1
            if status != 200:
                payload = {"error": {"message": state.error_message or f"scripted {status}"}}
            elif self.path.endswith("/chat/completions"):
                payload = {"choices": [{"message": {"content": "hi " + str(body["seed"])},
                                        "finish_reason": "stop"}],
                           "usage": {"prompt_tokens": 3, "completion_tokens": 2}}
            elif body.get("echo"):
                # OpenAI semantics: token_logprobs[i] = log P(token_i | tokens before it)
                text = body["prompt"]
                toks = [text[i : i + 4] for i in range(0, len(text), 4)] + ["!"]
                offs = [4 * i for i in range(len(toks))]
                lps = [None] + [-0.5] * (len(toks) - 1)
                payload = {"choices": [{"text": text + "!", "logprobs": {
                    "tokens": toks, "text_offset": offs, "token_logprobs": lps}}]}
            else:
                payload = {"choices": [{"text": body["prompt"][::-1], "finish_reason": "length"}],
                           "usage": {"prompt_tokens": 5, "completion_tokens": 4}}
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield state
    server.shutdown()
    server.server_close()


def test_routes_payloads_and_seeds(scripted):
    lm = OpenAICompatLM("m", scripted.url, **FAST)
    chat, plain = lm.complete([
        Request(messages=[{"role": "user", "content": "x"}], n=3, seed=10, temperature=0.5),
        Request(prompt="abc", max_tokens=4, stop=["\n"]),
    ])
    assert chat.texts == ["hi 10", "hi 11", "hi 12"]  # sample i uses seed + i
    assert chat.usage.prompt_tokens == 9 and chat.usage.completion_tokens == 6
    assert plain.text == "cba" and plain.finish_reason == "length"
    sent = {json.dumps(b, sort_keys=True) for b in scripted.bodies}
    assert any('"prompt": "abc"' in s and '"stop": ["\\n"]' in s for s in sent)


def test_retries_429_and_5xx_then_succeeds(scripted):
    scripted.fail_first = [429, 503]
    lm = OpenAICompatLM("m", scripted.url, **FAST)
    assert lm.complete([Request(prompt="ab")])[0].text == "ba"
    assert len(scripted.bodies) == 3


def test_gives_up_after_retries_and_does_not_retry_400(scripted):
    scripted.fail_first = [500, 500, 500, 500]
    lm = OpenAICompatLM("m", scripted.url, **FAST)
    with pytest.raises(ServerError, match="HTTP 500 after 3 attempts"):
        lm.complete([Request(prompt="ab")])
    scripted.bodies.clear()
    scripted.fail_first = [400]
    with pytest.raises(ServerError, match="HTTP 400"):
        lm.complete([Request(prompt="ab")])
    assert len(scripted.bodies) == 1


def test_concurrency_is_bounded(scripted):
    scripted.delay_s = 0.1
    reqs = [Request(prompt=f"p{i}") for i in range(12)]
    for limit in (1, 4):
        scripted.max_in_flight = 0
        lm = OpenAICompatLM("m", scripted.url, concurrency=limit, **FAST)
        out = lm.complete(reqs)
        assert [c.text for c in out] == [f"p{i}"[::-1] for i in range(12)]
        assert scripted.max_in_flight == limit


def test_works_inside_a_running_event_loop(scripted):
    lm = OpenAICompatLM("m", scripted.url, **FAST)

    async def main():
        return lm.complete([Request(prompt="xy")])[0].text

    assert asyncio.run(main()) == "yx"


def test_api_key_is_sent_but_never_stored(scripted, tmp_path, monkeypatch):
    secret = "sk-test-very-secret-123"
    monkeypatch.setenv("MY_KEY", secret)
    cache = Cache(tmp_path / "c.sqlite")
    lm = OpenAICompatLM("m", scripted.url, api_key_env="MY_KEY", cache=cache, **FAST)
    lm.complete([Request(prompt="ab")])
    assert scripted.headers[-1]["Authorization"] == f"Bearer {secret}"
    assert secret not in json.dumps(lm.identity) and secret not in repr(lm)
    assert secret not in (tmp_path / "c.sqlite").read_bytes().decode("latin-1")
    scripted.fail_first = [401]
    with pytest.raises(ServerError) as e:
        lm.complete([Request(prompt="cd")])
    assert "MY_KEY" in str(e.value) and secret not in str(e.value)


def test_score_sums_continuation_token_logprobs(scripted):
    lm = OpenAICompatLM("m", scripted.url, **FAST)
    # prompt "abcd" is token 0; continuation "efghij" covers tokens 1-2; "!" is generated
    assert lm.score("abcd", ["efghij"]) == [-1.0]
    # a token that straddles the boundary counts for the continuation
    assert lm.score("abcdef", ["gh"]) == [-0.5]


def test_score_unsupported_is_a_method_error(scripted):
    scripted.fail_first = [500]
    lm = OpenAICompatLM("m", scripted.url, max_retries=0, timeout_s=5)
    with pytest.raises(MethodError, match="cannot score"):
        lm.score("abcd", ["efgh"])


def _closed_port_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"  # nothing listens there any more


def test_unreachable_server_names_url_after_retries():
    url = _closed_port_url()
    lm = OpenAICompatLM("m", url, **FAST)
    t0 = time.perf_counter()
    with pytest.raises(ServerUnreachableError) as e:
        lm.complete([Request(prompt="x")])
    assert url in str(e.value) and "after 3 attempts" in str(e.value)
    assert time.perf_counter() - t0 < 5


# ---- a real llama_cpp.server ---------------------------------------------------------------
@pytest.mark.slow
def test_real_server_complete_and_concurrency(llama_server, local_lm):
    lm = OpenAICompatLM("smollm2", llama_server, concurrency=3, **{**FAST, "timeout_s": 120})
    prompts = ["The capital of France is", "1, 2, 3,", "Water is", "The sky is"]
    out = lm.complete([Request(prompt=p, max_tokens=5) for p in prompts])
    assert "Paris" in out[0].text
    assert all(c.usage.completion_tokens == 5 for c in out)
    # same greedy answers one at a time, in the same order
    one = OpenAICompatLM("smollm2", llama_server, concurrency=1, timeout_s=120)
    assert [c.text for c in one.complete([Request(prompt=p, max_tokens=5) for p in prompts])] \
        == [c.text for c in out]
    chat = lm.complete([Request(messages=[{"role": "user", "content": "Say hello."}],
                                max_tokens=8)])[0]
    assert chat.text.strip() and chat.usage.prompt_tokens > 5
    # the server renders the same chat template as the embedded backend
    rendered = local_lm.render_chat(
        [Request(messages=[{"role": "user", "content": "Say hello."}]).messages[0]])
    assert chat.usage.prompt_tokens == local_lm.count_tokens(rendered)


# ---- structured outputs ------------------------------------------------------------------
SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}


def test_schema_goes_out_as_response_format_and_a_violating_reply_is_retried_once(scripted):
    """The scripted server ignores response_format (it answers "hi <seed>"): one retry at
    the next seed, then a recorded ``invalid`` reply -- never a crash, never cached."""
    lm = OpenAICompatLM("m", scripted.url, cache=Cache(":memory:"), **FAST)
    req = Request(messages=[{"role": "user", "content": "ok?"}], json_schema=SCHEMA, seed=4)
    c = lm.complete([req])[0]
    assert [b["seed"] for b in scripted.bodies] == [4, 5]
    rf = scripted.bodies[0]["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["schema"] == SCHEMA
    assert scripted.bodies[1]["temperature"] >= 0.7
    assert c.finish_reason == "invalid" and c.retries == 1 and c.text == "hi 5"
    assert c.usage.prompt_tokens == 6  # both tries are paid for
    lm.complete([req])
    assert len(scripted.bodies) == 4  # an invalid reply is not cached: asked again


def test_server_refusing_json_schema_type_gets_json_object_form(scripted):
    """llama_cpp.server takes {"type": "json_object", "schema": ...}; a 400 naming
    response_format switches the form once and for all."""
    scripted.fail_first = [400]
    scripted.error_message = "response_format.type: Input should be 'text' or 'json_object'"
    lm = OpenAICompatLM("m", scripted.url, **FAST)
    req = Request(messages=[{"role": "user", "content": "ok?"}], json_schema=SCHEMA)
    lm.complete([req])
    forms = [b["response_format"]["type"] for b in scripted.bodies]
    assert forms[0] == "json_schema" and set(forms[1:]) == {"json_object"}
    assert scripted.bodies[1]["response_format"]["schema"] == SCHEMA


def test_grammar_needs_the_servers_opt_in(scripted):
    with pytest.raises(MethodError, match="cannot enforce a grammar"):
        OpenAICompatLM("m", scripted.url, **FAST).complete(
            [Request(prompt="x", grammar='root ::= "a"')])
    OpenAICompatLM("m", scripted.url, grammar=True, **FAST).complete(
        [Request(prompt="x", grammar='root ::= "a"')])
    assert scripted.bodies[-1]["grammar"] == 'root ::= "a"'


@pytest.mark.slow
def test_real_server_enforces_the_schema(llama_server):
    """Against the real llama_cpp.server on loopback: the reply is valid JSON under the
    schema (the server takes the json_object form), parsed into the model."""
    from pydantic import BaseModel

    from metaskill.lm.structured import complete_structured

    class Answer(BaseModel):
        sentiment: str
        confident: bool

    lm = OpenAICompatLM("smollm2", llama_server, **FAST)
    out = complete_structured(lm, [Request(
        messages=[{"role": "user", "content": "Review: 'a dull, lifeless film.' Give the "
                   "sentiment and whether you are confident, as JSON."}],
        max_tokens=48)], Answer)
    assert out[0].error is None, out[0].text
    assert isinstance(out[0].value, Answer) and out[0].completion.retries == 0
