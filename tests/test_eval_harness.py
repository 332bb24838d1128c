"""Harness logic with ScriptedLM: accuracy, per-skill, Wilson, resume, errors, limit, store."""

from __future__ import annotations

import math
import re
import sqlite3

import pytest

from metaskill.core.errors import MetaskillError, NotFoundError, ServerUnreachableError, TaskError
from metaskill.core.types import Example
from metaskill.eval.harness import EvaluationError, evaluate, select
from metaskill.eval.run import Record, Run, Totals
from metaskill.eval.solvers import KShot, ZeroShot
from metaskill.eval.stats import wilson
from metaskill.eval.store import RunStore
from metaskill.lm.fake import ScriptedLM
from metaskill.tasks.base import Task, Verdict, Verifier


class Exact(Verifier):
    name = "exact-test"

    def verify(self, output: str, example: Example) -> Verdict:
        ok = output.strip().lower() == (example.answer or "").lower()
        return Verdict(score=float(ok), reason="match" if ok else "mismatch",
                       parsed=output.strip().lower())


class Crashy(Exact):
    """Crashes on outputs containing 'boom'."""

    def verify(self, output: str, example: Example) -> Verdict:
        if "boom" in output:
            raise ZeroDivisionError("boom in verifier")
        return super().verify(output, example)


def make_task(n: int = 40, verifier: Verifier | None = None) -> Task:
    """Parity task: 'even'/'odd'; skill 'small' for i < 10, 'big' otherwise, 'x3' for i%3==0."""
    def ex(i: int, prefix: str) -> Example:
        skills = ["small" if i < 10 else "big"] + (["x3"] if i % 3 == 0 else [])
        return Example(id=f"{prefix}{i}", input=f"number {i}",
                       answer="even" if i % 2 == 0 else "odd", skills=skills)

    return Task(
        name="parity", version="2", kind="classification", labels=["even", "odd"],
        template="Is {input} even or odd?\nAnswer:", instructions="Answer even or odd.",
        splits={"train": [ex(i, "tr") for i in range(20)],
                "test": [ex(i, "te") for i in range(n)], "empty": []},
        verifier=verifier or Exact(),
    )


def parity_lm(wrong: set[int] = frozenset(), crash: set[int] = frozenset()) -> ScriptedLM:
    """Answers parity correctly except for numbers in ``wrong``; raises for ``crash``."""
    def answer(prompt: str, request) -> str:
        i = int(re.findall(r"number (\d+)", prompt)[-1])
        if i in crash:
            raise RuntimeError(f"backend crashed on {i}")
        right = "even" if i % 2 == 0 else "odd"
        if i in wrong:
            return "odd" if right == "even" else "even"
        return right + "\nsome trailing text"
    return ScriptedLM(answer)


def test_wilson_known_values():
    lo, hi = wilson(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    lo, hi = wilson(1, 3)
    assert (round(lo, 4), round(hi, 4)) == (0.0615, 0.7923)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0
    assert wilson(0, 0) == (0.0, 1.0)
    # symmetric, narrows with n, contains the point estimate
    a = wilson(30, 100)
    b = wilson(70, 100)
    assert math.isclose(a[0], 1 - b[1]) and math.isclose(a[1], 1 - b[0])
    assert wilson(300, 1000)[1] - wilson(300, 1000)[0] < a[1] - a[0]
    assert a[0] < 0.3 < a[1]
    with pytest.raises(ValueError):
        wilson(11, 10)


def test_accuracy_per_skill_and_records():
    task = make_task(40)
    wrong = {1, 2, 12, 15}
    run = evaluate(ZeroShot(parity_lm(wrong)), task, progress=False, batch_size=7)
    assert run.totals.n == 40 and run.status == "done"
    assert run.accuracy == pytest.approx(36 / 40)
    assert run.interval == wilson(36, 40)
    stats = {s.skill: s for s in run.per_skill}
    assert set(stats) == {"small", "big", "x3"}
    assert stats["small"].n == 10 and stats["small"].accuracy == pytest.approx(8 / 10)
    assert stats["big"].n == 30 and stats["big"].accuracy == pytest.approx(28 / 30)
    x3 = [i for i in range(40) if i % 3 == 0]
    assert stats["x3"].n == len(x3)
    assert stats["x3"].accuracy == pytest.approx(sum(i not in wrong for i in x3) / len(x3))
    assert (stats["small"].low, stats["small"].high) == wilson(8, 10)
    r = run.records[3]
    assert r.example_id == "te3" and r.index == 3
    assert r.raw == "odd\nsome trailing text" and r.output == "odd" and r.parsed == "odd"
    assert r.reference == "odd" and r.score == 1.0 and r.reason == "match"
    assert "number 3" in r.prompt and "Answer even or odd." in r.prompt
    assert r.usage.prompt_tokens > 0 and r.skills == ["small", "x3"]
    assert run.totals.prompt_tokens == sum(x.usage.prompt_tokens for x in run.records)
    assert run.totals.wall_s > 0


def test_one_lm_call_per_batch():
    task = make_task(40)
    calls = []

    class Counting(ScriptedLM):
        def _complete(self, requests):
            calls.append(len(requests))
            return super()._complete(requests)

    lm = Counting(parity_lm().script)
    evaluate(ZeroShot(lm), task, progress=False, batch_size=16)
    assert calls == [16, 16, 8]


def test_store_round_trip(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    task = make_task(30)
    run = evaluate(KShot(parity_lm({4}), k=2, seed=3), task, store=store, progress=False,
                   batch_size=8)
    got = store.get(run.id)
    assert got.model_dump() == run.model_dump()
    assert got.solver["kind"] == "k-shot" and got.solver["state"]["k"] == 2
    assert got.task == "parity" and got.task_version == "2" and got.status == "done"
    assert [r.id for r in store.list()] == [run.id]
    assert store.list()[0].records == []  # listing leaves the records out
    assert store.get(run.id[:-2]).id == run.id  # unique prefix
    with pytest.raises(NotFoundError, match="unknown run"):
        store.get("nope")


def test_limit_is_seeded_and_deterministic():
    task = make_task(50)
    a = evaluate(ZeroShot(parity_lm()), task, limit=10, seed=1, progress=False)
    b = evaluate(ZeroShot(parity_lm()), task, limit=10, seed=1, progress=False)
    c = evaluate(ZeroShot(parity_lm()), task, limit=10, seed=2, progress=False)
    assert a.selection == b.selection and len(a.selection) == 10
    assert a.selection != c.selection
    ids = [e.id for e in task.splits["test"]]
    assert a.selection == sorted(a.selection, key=ids.index)  # split order kept
    assert [r.example_id for r in a.records] == a.selection
    assert [e.id for e in select(task.splits["test"], 100)] == ids


def test_resume_after_crash_loses_at_most_one_batch(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    task = make_task(40)
    seen: list[int] = []

    class Killed(BaseException):
        """Stands in for SIGKILL: nothing catches it."""

    def dying(prompt, request):
        i = int(re.findall(r"number (\d+)", prompt)[-1])
        seen.append(i)
        if len(seen) == 27:  # in the 4th batch of 8
            raise Killed()
        return "even" if i % 2 == 0 else "odd"

    with pytest.raises(Killed):
        evaluate(ZeroShot(ScriptedLM(dying)), task, store=store, progress=False, batch_size=8,
                 run_id="crash")
    partial = store.get("crash")
    assert partial.totals.n == 24 and len(partial.records) == 24  # 3 full batches kept
    assert partial.status == "failed"
    lost = len(seen) - 24
    assert 0 < lost <= 8

    seen2: list[str] = []

    def counting(prompt, request):
        i = int(re.findall(r"number (\d+)", prompt)[-1])
        seen2.append(f"te{i}")
        return "even" if i % 2 == 0 else "odd"

    done = evaluate(ZeroShot(ScriptedLM(counting)), task, store=store, progress=False,
                    batch_size=8, resume="crash")
    assert len(seen2) == 16 and not set(seen2) & {r.example_id for r in partial.records}
    assert done.id == "crash" and done.totals.n == 40 and done.accuracy == 1.0
    again = store.get("crash")
    assert again.status == "done" and len(again.records) == 40 and again.totals.n == 40
    assert [r.index for r in again.records] == list(range(40))


def test_resume_of_sqlite_kill_mid_batch(tmp_path):
    """A crash inside the store transaction leaves the batch out entirely (atomic)."""
    store = RunStore(tmp_path / "runs.sqlite")
    task = make_task(20)
    real = store.save_batch
    n = {"calls": 0}

    def flaky(run_id, records, totals, status=None):
        n["calls"] += 1
        if n["calls"] == 2:
            conn = store._db.get()
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO records(run_id, example_id, idx, score, error, data) "
                "VALUES (?,?,?,?,?,?)",
                [(run_id, r.example_id, r.index, 0, 0, r.model_dump_json()) for r in records])
            conn.execute("ROLLBACK")  # the process died before COMMIT
            raise KeyboardInterrupt
        return real(run_id, records, totals, status)

    store.save_batch = flaky  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        evaluate(ZeroShot(parity_lm()), task, store=store, progress=False, batch_size=8,
                 run_id="r")
    store.save_batch = real  # type: ignore[method-assign]
    run = store.get("r")
    assert run.status == "interrupted" and run.totals.n == 8 and len(run.records) == 8
    run = evaluate(ZeroShot(parity_lm()), task, store=store, progress=False, resume="r")
    assert run.totals.n == 20 and run.accuracy == 1.0


def test_resume_refuses_other_solver_or_task(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    task = make_task(10)
    run = evaluate(ZeroShot(parity_lm()), task, store=store, progress=False, limit=5)
    with pytest.raises(MetaskillError, match="different solver"):
        evaluate(KShot(parity_lm(), k=2), task, store=store, progress=False, resume=run.id)
    with pytest.raises(MetaskillError, match="same task"):
        evaluate(ZeroShot(parity_lm()), task, "train", store=store, progress=False,
                 resume=run.id)
    with pytest.raises(MetaskillError, match="needs a run store"):
        evaluate(ZeroShot(parity_lm()), task, progress=False, resume=run.id)
    # resuming a finished run does nothing and returns it whole
    again = evaluate(ZeroShot(parity_lm()), task, store=store, progress=False, resume=run.id)
    assert again.totals.n == 5 and len(again.records) == 5


def test_solver_exception_recorded_and_run_goes_on():
    task = make_task(20)
    run = evaluate(ZeroShot(parity_lm(crash={3, 11})), task, progress=False, batch_size=8)
    assert run.status == "done" and run.totals.n == 20 and run.totals.errors == 2
    bad = {r.example_id: r for r in run.records if r.error}
    assert set(bad) == {"te3", "te11"}
    assert "backend crashed on 3" in bad["te3"].error and bad["te3"].score == 0.0
    assert bad["te3"].reason == bad["te3"].error
    assert run.accuracy == pytest.approx(18 / 20)
    assert run.failures[0].error is not None


def test_verifier_crash_recorded_and_counted():
    task = make_task(12, verifier=Crashy())

    def lm(prompt, request):
        i = int(re.findall(r"number (\d+)", prompt)[-1])
        return "boom" if i == 5 else ("even" if i % 2 == 0 else "odd")

    run = evaluate(ZeroShot(ScriptedLM(lm)), task, progress=False, batch_size=4)
    assert run.totals.errors == 1 and run.totals.n == 12
    r = run.records[5]
    assert r.error.startswith("verifier: ZeroDivisionError: boom") and r.score == 0
    assert r.output == "boom"
    assert run.accuracy == pytest.approx(11 / 12)


def test_max_errors_stops_and_keeps_records(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    task = make_task(40)
    with pytest.raises(EvaluationError, match=r"max_errors=1") as ei:
        evaluate(ZeroShot(parity_lm(crash={2, 9, 20, 30})), task, store=store,
                 progress=False, batch_size=8, max_errors=1, run_id="m")
    assert "--resume m" in str(ei.value)
    run = store.get("m")
    assert run.status == "failed" and "max_errors=1" in run.note
    assert run.totals.n == 16 and run.totals.errors == 2  # stopped after the 2nd batch
    # under the limit the run completes
    ok = evaluate(ZeroShot(parity_lm(crash={2, 9})), task, progress=False, max_errors=2)
    assert ok.status == "done" and ok.totals.errors == 2


def test_systematic_failure_stops_early():
    task = make_task(40)
    with pytest.raises(EvaluationError, match="every example of the first batch failed"):
        evaluate(ZeroShot(parity_lm(crash=set(range(40)))), task, progress=False)


def test_fatal_environment_errors_propagate(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")

    def down(prompt, request):
        raise ServerUnreachableError("server at 127.0.0.1:9 unreachable")

    with pytest.raises(ServerUnreachableError):
        evaluate(ZeroShot(ScriptedLM(down)), make_task(10), store=store, progress=False,
                 run_id="s")
    assert store.get("s").status == "failed"


def test_empty_and_missing_split():
    task = make_task(5)
    with pytest.raises(TaskError, match="empty"):
        evaluate(ZeroShot(parity_lm()), task, "empty", progress=False)
    with pytest.raises(TaskError, match="no split 'dev'"):
        evaluate(ZeroShot(parity_lm()), task, "dev", progress=False)


def test_duplicate_ids_rejected():
    task = make_task(5)
    task.splits["test"].append(task.splits["test"][0])
    with pytest.raises(TaskError, match="duplicate example id"):
        evaluate(ZeroShot(parity_lm()), task, progress=False)


def test_progress_bar_runs(capsys):
    run = evaluate(ZeroShot(parity_lm()), make_task(10), progress=True)
    assert run.totals.n == 10


def test_store_is_wal_and_compare(tmp_path):
    path = tmp_path / "runs.sqlite"
    store = RunStore(path)
    task = make_task(40)
    a = evaluate(ZeroShot(parity_lm({1, 2, 3})), task, store=store, progress=False)
    b = evaluate(ZeroShot(parity_lm({12})), task, store=store, progress=False)
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    cmp = store.compare([a.id, b.id])
    assert cmp.overall.delta[1] == pytest.approx(b.accuracy - a.accuracy)
    small = next(s for s in cmp.skills if s.skill == "small")
    assert small.accuracy == [pytest.approx(0.7), 1.0]
    assert small.delta[1] == pytest.approx(0.3)
    big = next(s for s in cmp.skills if s.skill == "big")
    assert big.delta[1] == pytest.approx(-1 / 30)
    assert cmp.shared_examples == 40
    with pytest.raises(MetaskillError, match="at least two"):
        store.compare([a.id])


def test_run_model_from_records():
    recs = [Record(index=i, example_id=str(i), score=float(i % 2)) for i in range(4)]
    run = Run(id="x", task="t", records=recs)
    assert run.totals == Totals().add(recs) and run.accuracy == 0.5
    assert run.per_skill == []


def test_max_new_slices_a_run_and_resume_finishes_it(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    task = make_task(40)
    run = evaluate(ZeroShot(parity_lm()), task, store=store, progress=False, batch_size=8,
                   max_new=12, run_id="slice")
    assert run.status == "interrupted" and run.totals.n == 12 and "28 examples left" in run.note
    assert [r.index for r in run.records] == list(range(12))
    run = evaluate(ZeroShot(parity_lm()), task, store=store, progress=False, resume="slice",
                   max_new=20)
    assert run.status == "interrupted" and run.totals.n == 32
    run = evaluate(ZeroShot(parity_lm()), task, store=store, progress=False, resume="slice",
                   max_new=20)
    assert run.status == "done" and run.totals.n == 40 and store.get("slice").status == "done"
    with pytest.raises(MetaskillError, match="max_new"):
        evaluate(ZeroShot(parity_lm()), task, progress=False, max_new=0)


def test_resume_refused_while_another_live_process_owns_the_run(tmp_path):
    import subprocess
    import sys

    store = RunStore(tmp_path / "runs.sqlite")
    task = make_task(20)
    evaluate(ZeroShot(parity_lm()), task, store=store, progress=False, max_new=8, run_id="own")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        import socket

        conn = store._db.get()
        conn.execute("UPDATE runs SET status='running', owner=? WHERE id='own'",
                     (f"{socket.gethostname()}:{other.pid}",))
        with pytest.raises(MetaskillError, match="being evaluated right now"):
            evaluate(ZeroShot(parity_lm()), task, store=store, progress=False, resume="own")
    finally:
        other.kill()
        other.wait()
    # the owner is gone: resuming works, and totals are recounted from the records
    conn.execute("UPDATE progress SET totals=? WHERE run_id='own'",
                 (Totals(n=99).model_dump_json(),))
    assert store.get("own").totals.n == 99
    run = evaluate(ZeroShot(parity_lm()), task, store=store, progress=False, resume="own")
    assert run.status == "done" and run.totals.n == 20 and store.get("own").totals.n == 20
