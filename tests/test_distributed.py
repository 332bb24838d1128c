"""metaskill.distributed: a Run fanned over Ray workers equals the Run made in one process;
a worker killed mid-run is replaced and its batches re-queued; a killed driver resumes from
the store; nothing is counted twice. A local Ray cluster on loopback, started by the tests."""

from __future__ import annotations

import functools
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from metaskill.core.errors import MetaskillError
from metaskill.core.types import Example
from metaskill.eval.harness import evaluate
from metaskill.eval.solvers import ZeroShot
from metaskill.eval.store import RunStore
from metaskill.lm.fake import ScriptedLM
from metaskill.tasks.base import Task
from metaskill.tasks.verifiers import ExactVerifier

ray = pytest.importorskip("ray", reason="the ray extra is not installed "
                                        "(pip install 'metaskill[ray]')")

from metaskill.distributed.executor import (  # noqa: E402
    RayExecutor,
    WorkerConfig,
    WorkersLostError,
    make_executor,
)

SCRIPT = {"good": "positive", "bad": "negative", "fine": "positive"}


def make_task(n: int = 40) -> Task:
    words = ["good", "bad", "fine", "odd"]
    exs = [Example(id=f"e{i}", input=f"a {words[i % 4]} film number {i}",
                   answer="negative" if i % 4 == 1 else "positive") for i in range(n)]
    return Task(name="toy_sentiment", splits={"test": exs}, template="Review: {input}",
                kind="classification", labels=["positive", "negative"],
                verifier=ExactVerifier())


def fake_lm() -> functools.partial[ScriptedLM]:
    """An LM factory the workers can unpickle (ScriptedLM is importable there)."""
    return functools.partial(ScriptedLM, SCRIPT, default="unsure")


def same(rec: Any) -> dict[str, Any]:
    """A record without what may differ between two identical runs (timing)."""
    return rec.model_dump(exclude={"latency_s"})


@pytest.fixture(scope="module")
def cluster() -> Any:
    ray.init(num_cpus=2, include_dashboard=False, address="local",
             _node_ip_address="127.0.0.1", log_to_driver=False)
    yield ray
    ray.shutdown()


def test_make_executor_one_worker_is_none_and_no_ray_is_one_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert make_executor(1, lm="fake") is None
    monkeypatch.setitem(sys.modules, "ray", None)  # as if ray were not installed
    with pytest.raises(MetaskillError) as e:
        make_executor(2, lm="fake")
    assert "pip install 'metaskill[ray]'" in str(e.value) and "\n" not in str(e.value)


def test_one_and_two_workers_give_the_local_run(cluster: Any, tmp_path: Path) -> None:
    task = make_task()
    solver = ZeroShot(ScriptedLM(SCRIPT, default="unsure"))
    local = evaluate(solver, task, progress=False, batch_size=4)
    assert 0 < local.accuracy < 1  # the script gets some right, some wrong
    store = RunStore(tmp_path / "runs.sqlite")
    for workers in (1, 2):
        with RayExecutor(WorkerConfig(workers=workers, lm="fake"),
                         lm_factory=fake_lm()) as ex:
            run = evaluate(solver, task, progress=False, batch_size=4, store=store,
                           executor=ex)
            assert len({w["pid"] for w in ex.started}) == workers
        assert [same(r) for r in run.records] == [same(r) for r in local.records]
        stored = store.get(run.id)
        assert stored.status == "done" and stored.totals.n == 40
        assert stored.totals.score == local.totals.score
        assert store.recount(run.id).score == stored.totals.score


def test_a_worker_killed_mid_run_is_replaced_and_nothing_counted_twice(
        cluster: Any, tmp_path: Path) -> None:
    task = make_task()
    solver = ZeroShot(ScriptedLM(SCRIPT, default="unsure"))
    local = evaluate(solver, task, progress=False, batch_size=4)
    store = RunStore(tmp_path / "runs.sqlite")
    lines: list[str] = []
    cfg = WorkerConfig(workers=2, lm="fake", fault={0: 3})  # worker 0 dies on batch 3
    with RayExecutor(cfg, lm_factory=fake_lm(), log=lines.append) as ex:
        run = evaluate(solver, task, progress=False, batch_size=4, store=store, executor=ex)
        assert ex.replaced == 1 and len(ex.started) == 3
    assert any("worker 0 died" in line for line in lines)
    stored = store.get(run.id)
    assert stored.status == "done"
    assert [same(r) for r in stored.records] == [same(r) for r in local.records]
    assert stored.totals.n == 40 == len({r.example_id for r in stored.records})
    assert stored.totals.score == local.totals.score == store.recount(run.id).score


def test_workers_that_keep_dying_stop_the_run_with_its_records_kept(
        cluster: Any, tmp_path: Path) -> None:
    task = make_task()
    solver = ZeroShot(ScriptedLM(SCRIPT, default="unsure"))
    store = RunStore(tmp_path / "runs.sqlite")
    cfg = WorkerConfig(workers=1, lm="fake", fault={0: 2}, max_replacements=0)
    with RayExecutor(cfg, lm_factory=fake_lm()) as ex, pytest.raises(WorkersLostError):
        evaluate(solver, task, progress=False, batch_size=4, store=store, executor=ex,
                 run_id="r-lost")
    run = store.get("r-lost")
    assert run.status == "failed" and 1 <= run.totals.n < 40
    assert run.totals.n == len(run.records)


DRIVER = textwrap.dedent("""
    import functools, os, sys
    sys.path.insert(0, {tests!r})
    from test_distributed import SCRIPT, make_task
    from metaskill.distributed.executor import RayExecutor, WorkerConfig
    from metaskill.eval.harness import evaluate
    from metaskill.eval.solvers import ZeroShot
    from metaskill.eval.store import RunStore
    from metaskill.lm.fake import ScriptedLM

    class DyingStore(RunStore):
        saves = 0
        def save_batch(self, *a, **k):
            super().save_batch(*a, **k)
            DyingStore.saves += 1
            if DyingStore.saves == 3:
                os._exit(9)  # the driver is killed right after its third commit

    lm = functools.partial(ScriptedLM, SCRIPT, default="unsure")
    with RayExecutor(WorkerConfig(workers=2, lm="fake"), lm_factory=lm) as ex:
        evaluate(ZeroShot(lm()), make_task(), progress=False, batch_size=4,
                 store=DyingStore({store!r}), executor=ex, run_id="r-killed")
""")


def test_a_killed_driver_resumes_from_the_store(cluster: Any, tmp_path: Path) -> None:
    db = tmp_path / "runs.sqlite"
    code = DRIVER.format(tests=str(Path(__file__).parent), store=str(db))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert proc.returncode == 9, proc.stderr.decode()[-2000:]
    store = RunStore(db)
    killed = store.get("r-killed")
    assert killed.status == "interrupted"  # its owner process is gone
    assert killed.totals.n == 12 == len(killed.records)
    task = make_task()
    solver = ZeroShot(ScriptedLM(SCRIPT, default="unsure"))
    with RayExecutor(WorkerConfig(workers=2, lm="fake"), lm_factory=fake_lm()) as ex:
        run = evaluate(solver, task, progress=False, batch_size=4, store=store,
                       resume="r-killed", executor=ex)
    local = evaluate(solver, task, progress=False, batch_size=4)
    stored = store.get("r-killed")
    assert run.status == stored.status == "done"
    assert [same(r) for r in stored.records] == [same(r) for r in local.records]
    assert stored.totals.n == 40 and stored.totals.score == local.totals.score


def test_the_fit_guard_reaches_the_workers(cluster: Any) -> None:
    from metaskill.core.guard import TestDataLeakError, guard_fit

    task = make_task(8)
    solver = ZeroShot(ScriptedLM(SCRIPT, default="unsure"))
    secret = task.splits["test"][0]
    dev = [Example(id="d1", input=secret.text, answer="positive")]  # a test input, new id
    with guard_fit("m", [secret]):
        local = evaluate(solver, task, "dev", examples=dev, progress=False)
    assert TestDataLeakError.__name__ in str(local.records[0].error)
    with RayExecutor(WorkerConfig(workers=1, lm="fake"), lm_factory=fake_lm()) as ex:
        with guard_fit("m", [secret]):
            run = evaluate(solver, task, "dev", examples=dev, progress=False, executor=ex)
        assert run.records[0].error == local.records[0].error
        unguarded = evaluate(solver, task, "dev", examples=dev, progress=False, executor=ex)
        assert unguarded.records[0].error is None  # the guard travelled with the batch


def test_an_unpicklable_task_is_a_one_line_error(cluster: Any) -> None:
    import threading

    task = make_task(4)
    task.metadata["lock"] = threading.Lock()
    solver = ZeroShot(ScriptedLM(SCRIPT, default="unsure"))
    with RayExecutor(WorkerConfig(workers=1, lm="fake"), lm_factory=fake_lm()) as ex, \
            pytest.raises(MetaskillError, match="cannot be sent to Ray workers"):
        evaluate(solver, task, progress=False, executor=ex)


def test_methods_and_the_archive_score_on_the_workers(cluster: Any, tmp_path: Path) -> None:
    """The driver's LM knows nothing; the workers' LM knows the answers: every dev score
    above zero was made on a worker."""
    from metaskill.evolve.archive import EvolveConfig, evolve
    from metaskill.methods.base import MethodResources
    from metaskill.methods.compose import fit_chain

    task = make_task(24)
    train, dev = task.splits["test"][:16], task.splits["test"][16:]
    task = task.model_copy(update={"splits": {"train": train, "dev": dev}})
    blank = ZeroShot(ScriptedLM(default="unsure"))
    with RayExecutor(WorkerConfig(workers=2, lm="fake"), lm_factory=fake_lm()) as ex:
        res = MethodResources(embedder_spec="hash:64", executor=ex)
        out = fit_chain(blank, task, train, dev, [("knn_demos", {"k": 2})], resources=res)
        assert out.reports[0].notes["dev_accuracy"] > 0.5
        here = fit_chain(blank, task, train, dev, [("knn_demos", {"k": 2})],
                         resources=MethodResources(embedder_spec="hash:64"))
        assert here.reports[0].notes["dev_accuracy"] == 0.0
        arch = evolve(blank, task, train, dev, EvolveConfig(
            mutations=("prompt_format",), max_children=1), out=tmp_path / "arch",
            resources=MethodResources(embedder_spec="hash:64"), executor=ex)
        assert arch.node(0).score is not None and arch.node(0).score > 0.5


# ---- the command line (as a user runs it) ---------------------------------------------------
_SCRIPT = Path(sys.executable).parent / "metaskill"
METASKILL = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "metaskill"]


def cli(*args: str, home: Path, argv0: list[str] | None = None) -> Any:
    import os

    env = {**os.environ, "METASKILL_HOME": str(home), "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([*(argv0 or METASKILL), *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_cli_workers_without_ray_is_one_line(tmp_path: Path) -> None:
    no_ray = [sys.executable, "-c", "import sys; sys.modules['ray'] = None; "
              "from metaskill.cli import main; main(sys.argv[1:])"]
    for verb in (["eval", "--task", "sst2", "--model", "fake"],
                 ["adapt", "--task", "sst2", "--model", "fake", "--method", "knn_demos",
                  "--out", str(tmp_path / "s.json")],
                 ["evolve", "archive", "--task", "sst2", "--model", "fake", "--out",
                  str(tmp_path / "arch")],
                 ["run", "--task", "sst2", "--out", str(tmp_path / "run")]):
        res = cli(*verb, "--workers", "2", home=tmp_path, argv0=no_ray)
        err = res.stderr.strip()
        assert res.returncode == 1 and len(err.splitlines()) == 1, err
        assert "pip install 'metaskill[ray]'" in err and "Traceback" not in err
    # one worker (the default) never imports Ray
    res = cli("eval", "--task", "sst2", "--model", "fake", "--limit", "3", "--no-progress",
              "--workers", "1", home=tmp_path, argv0=no_ray)
    assert res.returncode == 0, res.stderr


def test_cli_eval_and_adapt_with_two_workers_match_one(tmp_path: Path) -> None:
    from metaskill.eval.store import RunStore

    runs = []
    for workers in ("1", "2"):
        res = cli("eval", "--task", "sst2", "--model", "fake", "--solver", "k-shot", "--k", "2",
                  "--limit", "20", "--batch-size", "4", "--no-progress", "--no-cache",
                  "--workers", workers, home=tmp_path)
        assert res.returncode == 0, res.stdout + res.stderr
        runs.append(next(w for w in res.stdout.split() if w[:8].isdigit() and "-" in w))
    store = RunStore(tmp_path / "runs.sqlite")
    one, two = (store.get(r) for r in runs)
    assert two.status == "done" and two.totals.n == 20
    assert [same(r) for r in one.records] == [same(r) for r in two.records]
    saved = []
    for workers in ("1", "2"):
        out = tmp_path / f"knn{workers}.json"
        rep = tmp_path / f"fit{workers}.json"
        res = cli("adapt", "--task", "sst2", "--model", "fake", "--method", "knn_demos",
                  "--k", "2", "--embedder", "hash:64", "--limit-train", "40", "--limit-dev",
                  "8", "--no-progress", "--out", str(out), "--report-json", str(rep),
                  "--workers", workers, home=tmp_path)
        assert res.returncode == 0, res.stdout + res.stderr
        assert ("2 Ray workers ready" in res.stderr) == (workers == "2")
        import json

        fit = json.loads(rep.read_text())
        saved.append((json.loads(out.read_text()), fit["reports"][0]["lm_calls"],
                      fit["reports"][0]["usage"], fit["check"]["adapted_accuracy"]))
    assert saved[0] == saved[1] and saved[0][1] == 16  # 8 dev x 2 formats, on the workers


@pytest.mark.slow
def test_real_model_one_process_and_two_workers_give_the_same_run(
        cluster: Any, tmp_path: Path) -> None:
    """The embedded model: 20 sst2 examples, k-shot, in this process and on 2 Ray workers
    (each its own llama.cpp model, 1 thread): the same records."""
    pytest.importorskip("llama_cpp")
    from metaskill.eval.solvers import solver_from_name
    from metaskill.lm.llama import LlamaLM, builtin_model_path
    from metaskill.tasks import get_task

    task = get_task("sst2")
    lm = LlamaLM(builtin_model_path("local"), spec="local", n_threads=1)
    try:
        solver = solver_from_name("k-shot", lm, task=task, k=2, seed=0)
        here = evaluate(solver, task, limit=20, batch_size=4, progress=False)
    finally:
        lm.close()
    store = RunStore(tmp_path / "runs.sqlite")
    cfg = WorkerConfig(workers=2, lm="local", threads=1, cache=False)
    with RayExecutor(cfg) as ex:
        run = evaluate(solver, task, limit=20, batch_size=4, progress=False, store=store,
                       executor=ex)
        assert len({w["pid"] for w in ex.started}) == 2
    stored = store.get(run.id)
    assert stored.totals.n == 20 and stored.totals.completion_tokens > 0
    assert [same(r) for r in stored.records] == [same(r) for r in here.records]
    assert stored.accuracy == here.accuracy


def test_cli_run_with_two_workers(tmp_path: Path) -> None:
    from metaskill.eval.store import RunStore

    res = cli("run", "--task", "sst2", "--model", "fake", "--no-train", "--methods",
              "knn_demos", "--n-dev", "8", "--n-test", "12", "--embedder", "hash:64",
              "--workers", "2", "--no-progress", "--out", str(tmp_path / "job"),
              home=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 Ray workers ready" in res.stderr
    runs = RunStore(tmp_path / "job" / "runs.sqlite").list()
    tests = [r for r in runs if r.split == "test"]
    assert tests and all(r.status == "done" and r.totals.n == 12 for r in tests)


def test_cli_eval_joins_a_running_cluster_with_ray_address(cluster: Any, tmp_path: Path) -> None:
    """--ray-address: a second driver joins the cluster this test process started (and
    leaves it running)."""
    from metaskill.eval.store import RunStore

    address = cluster.get_runtime_context().gcs_address
    res = cli("eval", "--task", "sst2", "--model", "fake", "--limit", "8", "--no-progress",
              "--no-cache", "--workers", "2", "--ray-address", address, home=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 Ray workers ready" in res.stderr
    (run,) = RunStore(tmp_path / "runs.sqlite").list()
    assert run.status == "done" and run.totals.n == 8
    assert cluster.is_initialized() and cluster.cluster_resources().get("CPU") == 2


SERVER = textwrap.dedent("""
    import json, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    SCRIPT = json.loads(sys.argv[1])
    hits = [0]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, payload):
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self.reply({"hits": hits[0]})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            hits[0] += 1
            text = next((v for k, v in SCRIPT.items() if k in body["prompt"]), "unsure")
            self.reply({"choices": [{"text": text, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 7, "completion_tokens": 1}})

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(httpd.server_address[1], flush=True)
    httpd.serve_forever()
""")


class _Server:
    """A loopback OpenAI-compatible /completions server answering from SCRIPT, in its own
    process (so it answers while this process waits on Ray); GET /hits counts requests."""

    def __init__(self) -> None:
        import json

        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, json.dumps(SCRIPT)],
                                     stdout=subprocess.PIPE, text=True)
        port = int(self.proc.stdout.readline())  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/v1"

    @property
    def hits(self) -> int:
        import httpx

        return int(httpx.get(self.url + "/hits", timeout=10).json()["hits"])

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def test_each_worker_an_openai_client_to_its_own_server(cluster: Any) -> None:
    from metaskill.lm.spec import load_lm

    servers = [_Server(), _Server()]
    try:
        task = make_task(16)
        pool = f"openai:m@{servers[0].url},{servers[1].url}"
        solver = ZeroShot(load_lm(pool, cache=False), format="completion")
        here = evaluate(solver, task, progress=False, batch_size=4)
        assert here.accuracy > 0.5
        before = [s.hits for s in servers]
        cfg = WorkerConfig(workers=2, lm=pool, cache=False,
                           specs=[f"openai:m@{s.url}" for s in servers])
        with RayExecutor(cfg) as ex:
            run = evaluate(solver, task, progress=False, batch_size=4, executor=ex)
            assert sorted(w["lm"] for w in ex.started) == sorted(cfg.specs or [])
        assert [same(r) for r in run.records] == [same(r) for r in here.records]
        assert all(s.hits > b for s, b in zip(servers, before, strict=True))
    finally:
        for s in servers:
            s.stop()
