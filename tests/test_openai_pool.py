"""The openai backend over a pool of servers: tiny scripted loopback servers (127.0.0.1,
started and stopped by each test) that answer deterministically, so any server's answer
is the same and the tests can check spreading, failover and order."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from metaskill.core.errors import InvalidParameterError, ServerUnreachableError, UnknownSpecError
from metaskill.core.types import Request
from metaskill.lm.cache import Cache
from metaskill.lm.openai_compat import OpenAICompatLM
from metaskill.lm.spec import load_lm

FAST = dict(max_retries=2, backoff_s=0.01, max_backoff_s=0.02, timeout_s=5)
SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}


class Fake:
    """One loopback server: what it answered, how it misbehaves."""

    def __init__(self) -> None:
        self.served: list[dict] = []  # bodies answered with 200
        self.hits = 0  # every request received
        self.in_flight = 0
        self.max_in_flight = 0
        self.delay_s = 0.0
        self.status = 200  # answer every request with this status
        self.refuse_json_schema = False  # 400 on response_format type json_schema
        self.die_after: int | None = None  # after N requests: drop the rest, stop
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._stopped = False
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        with self.lock:
            if self._stopped:
                return
            self._stopped = True
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.hits += 1
                    dead = fake.die_after is not None and fake.hits > fake.die_after
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                if dead:  # die: no answer, then the port closes
                    self.close_connection = True
                    threading.Thread(target=fake.stop, daemon=True).start()
                    return
                time.sleep(fake.delay_s)
                status = fake.status
                rf = (body.get("response_format") or {}).get("type")
                if fake.refuse_json_schema and rf == "json_schema":
                    status = 400
                if status != 200:
                    payload = {"error": {"message": "response_format.type: Input should be "
                                         "'text' or 'json_object'" if status == 400
                                         else f"scripted {status}"}}
                elif self.path.endswith("/chat/completions"):
                    payload = {"choices": [{"message": {"content": '{"ok": true}'},
                                            "finish_reason": "stop"}]}
                else:
                    payload = {"choices": [{"text": body["prompt"][::-1],
                                            "finish_reason": "length"}],
                               "usage": {"prompt_tokens": 5, "completion_tokens": 4}}
                with fake.lock:
                    fake.in_flight -= 1
                    if status == 200:
                        fake.served.append(body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


@pytest.fixture
def fakes() -> Iterator[list[Fake]]:
    made = [Fake(), Fake()]
    yield made
    for f in made:
        f.stop()


def _closed_port_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"  # nothing listens there any more


def _prompts(n: int) -> list[Request]:
    return [Request(prompt=f"prompt {i}") for i in range(n)]


def _texts(n: int) -> list[str]:
    return [f"prompt {i}"[::-1] for i in range(n)]


def test_requests_spread_over_both_servers_in_order(fakes):
    a, b = fakes
    a.delay_s = b.delay_s = 0.03
    lm = OpenAICompatLM("m", [a.url, b.url], concurrency=2, **FAST)
    out = lm.complete(_prompts(16))
    assert [c.text for c in out] == _texts(16)  # order kept whoever answered
    assert len(a.served) + len(b.served) == 16
    assert len(a.served) >= 4 and len(b.served) >= 4
    assert a.max_in_flight <= 2 and b.max_in_flight <= 2  # concurrency is per server
    single = OpenAICompatLM("m", a.url, **FAST).complete(_prompts(16))
    assert [c.text for c in single] == [c.text for c in out]


def test_least_outstanding_splits_a_small_batch_evenly(fakes):
    """Fewer requests than slots: a first-free policy would send them all to one server."""
    a, b = fakes
    a.delay_s = b.delay_s = 0.05
    lm = OpenAICompatLM("m", [a.url, b.url], concurrency=8, **FAST)
    assert [c.text for c in lm.complete(_prompts(6))] == _texts(6)
    assert len(a.served) == len(b.served) == 3


def test_least_outstanding_gives_the_faster_server_more(fakes):
    slow, quick = fakes
    slow.delay_s, quick.delay_s = 0.3, 0.01
    lm = OpenAICompatLM("m", [slow.url, quick.url], concurrency=1, **FAST)
    assert [c.text for c in lm.complete(_prompts(12))] == _texts(12)
    assert len(quick.served) > len(slow.served) >= 1


def test_one_server_down_from_the_start(fakes):
    live = fakes[0]
    lm = OpenAICompatLM("m", [_closed_port_url(), live.url], max_retries=0, backoff_s=0.01,
                        timeout_s=5, down_after=2, down_s=60)
    out = lm.complete(_prompts(10))
    assert [c.text for c in out] == _texts(10)
    assert len(live.served) == 10
    assert lm._servers[0].down_until > time.monotonic()  # marked down for a while
    assert lm._servers[1].failures == 0


def test_a_failing_server_is_marked_down_and_skipped(fakes):
    bad, good = fakes
    bad.status = 503
    lm = OpenAICompatLM("m", [bad.url, good.url], concurrency=1, down_after=2, down_s=60,
                        **FAST)
    assert [c.text for c in lm.complete(_prompts(12))] == _texts(12)
    assert bad.hits <= 2 + 1  # down after two failures (one more may be in flight)
    seen = bad.hits
    assert [c.text for c in lm.complete(_prompts(5))] == _texts(5)
    assert bad.hits == seen  # still down: not asked again
    assert len(good.served) == 17


def test_a_server_that_dies_mid_run(fakes):
    a, b = fakes
    a.delay_s = b.delay_s = 0.02
    b.die_after = 3
    lm = OpenAICompatLM("m", [a.url, b.url], concurrency=2, **FAST)
    out = lm.complete(_prompts(20))
    assert [c.text for c in out] == _texts(20)
    assert len(b.served) == 3 and len(a.served) == 17
    # later calls go to the survivor alone
    assert [c.text for c in lm.complete(_prompts(4))] == _texts(4)


def test_all_servers_down_is_one_line_naming_them():
    urls = [_closed_port_url(), _closed_port_url()]
    lm = OpenAICompatLM("m", urls, **FAST)
    with pytest.raises(ServerUnreachableError) as e:
        lm.complete([Request(prompt="x")])
    msg = str(e.value)
    assert "\n" not in msg and all(u in msg for u in urls) and "after 4 attempts" in msg


def test_response_format_fallback_is_per_server(fakes):
    old, new = fakes
    old.refuse_json_schema = True  # llama_cpp.server's form only
    old.delay_s = new.delay_s = 0.02
    lm = OpenAICompatLM("m", [old.url, new.url], concurrency=1, **FAST)
    reqs = [Request(messages=[{"role": "user", "content": f"ok {i}?"}], json_schema=SCHEMA)
            for i in range(8)]
    out = lm.complete(reqs)
    assert all(c.text == '{"ok": true}' and c.finish_reason == "stop" for c in out)
    assert old.served and new.served
    assert {b["response_format"]["type"] for b in old.served} == {"json_object"}
    assert {b["response_format"]["type"] for b in new.served} == {"json_schema"}
    assert [s.schema_style for s in lm._servers] == ["json_object", "json_schema"]


def test_cache_key_does_not_depend_on_the_server(fakes):
    a, b = fakes
    cache = Cache(":memory:")
    pool = OpenAICompatLM("m", [a.url, b.url], cache=cache, **FAST)
    alone = OpenAICompatLM("m", a.url, cache=cache, **FAST)
    req = Request(prompt="cached")
    assert pool.request_key(req) == alone.request_key(req)
    pool.complete(_prompts(6))
    asked = len(a.served) + len(b.served)
    assert asked == 6
    assert [c.text for c in alone.complete(_prompts(6))] == _texts(6)  # all from the cache
    assert len(a.served) + len(b.served) == asked


def test_spec_parses_a_pool():
    lm = load_lm("openai:org/m@http://127.0.0.1:1, http://127.0.0.1:2/v1", cache=False)
    assert lm.base_urls == ("http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1")
    assert lm.model == "org/m" and lm.identity["base_url"] == "http://127.0.0.1:1/v1"
    one = load_lm("openai:a@b@http://127.0.0.1:1", cache=False)  # '@' in a model name
    assert one.model == "a@b" and one.base_urls == ("http://127.0.0.1:1/v1",)


@pytest.mark.parametrize(("spec", "error", "says"), [
    ("openai:m@http://127.0.0.1:1,,http://127.0.0.1:2", UnknownSpecError, "empty base URL"),
    ("openai:m@http://127.0.0.1:1,", UnknownSpecError, "empty base URL"),
    ("openai:m@http://127.0.0.1:1,http://127.0.0.1:1/v1", UnknownSpecError, "twice"),
    ("openai:m@http://127.0.0.1:1,127.0.0.1:2", InvalidParameterError, "must look like"),
    ("openai:@http://127.0.0.1:1,http://127.0.0.1:2", UnknownSpecError, "no model name"),
])
def test_spec_errors_are_one_line(spec, error, says):
    with pytest.raises(error) as e:
        load_lm(spec, cache=False)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_constructor_rejects_bad_pool_settings():
    with pytest.raises(InvalidParameterError, match="twice"):
        OpenAICompatLM("m", ["http://127.0.0.1:1", "http://127.0.0.1:1/v1"])
    with pytest.raises(InvalidParameterError, match="down_after"):
        OpenAICompatLM("m", "http://127.0.0.1:1", down_after=0)
