"""Hostile or broken files end in one line, never a traceback (issue 19).

The crash classes a probe found (a JSONL line nested 100,000 deep, a Solver JSON whose
``state`` is a list, a binary Solver JSON, a corrupt ``cache.sqlite``) run through the CLI as
a user would; their siblings in every reader (task files, Solver JSON, profiles, SkillBook
exports, adapters, caches, stage files) run in-process. Also: ``runs ls`` shows a run whose
process is gone as ``interrupted``, and a model that cannot load leaves no run behind.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from metaskill.core.errors import MetaskillError, TaskError

_SCRIPT = Path(sys.executable).parent / "metaskill"
METASKILL = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "metaskill"]
BINARY = bytes(range(256)) * 4  # not UTF-8, holds NUL bytes
DEEP = "[" * 100_000 + "]" * 100_000


def cli(*args: str, home: Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "METASKILL_HOME": str(home), "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([*METASKILL, *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=cwd)


def one_line_error(res: subprocess.CompletedProcess, *needles: str) -> str:
    assert res.returncode == 1, res.stdout + res.stderr
    err = res.stderr.strip()
    assert "Traceback" not in res.stderr and len(err.splitlines()) == 1, res.stderr
    assert err.startswith("error:"), err
    for n in needles:
        assert n in err, err
    return err


def corrupt_sqlite(path: Path) -> None:
    """A real SQLite file with its pages overwritten (the header survives)."""
    import sqlite3

    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x TEXT)")
    conn.executemany("INSERT INTO t VALUES (?)", [("x" * 200,)] * 200)
    conn.commit()
    conn.close()
    data = path.read_bytes()
    path.write_bytes(data[:100] + b"\xde\xad" * ((len(data) - 100) // 2))


# ---- the crash classes, through the CLI --------------------------------------------------
def test_cli_jsonl_line_nested_100000_deep(tmp_path: Path) -> None:
    (tmp_path / "deep.jsonl").write_text('{"input": ' + DEEP + ', "answer": "a"}\n')
    (tmp_path / "deep.yaml").write_text("name: deep\nsource:\n  path: deep.jsonl\n")
    res = cli("tasks", "validate", str(tmp_path / "deep.yaml"), home=tmp_path / "home")
    one_line_error(res, "deep.jsonl:1", "nest deeper than 100 levels")


@pytest.mark.parametrize(("content", "needles"), [
    (json.dumps({"schema_version": 1, "kind": "zero-shot", "state": [1, 2]}),
     ("'state' must be an object (mapping), got a list",)),
    (BINARY, ("cannot read solver file", "not UTF-8 text")),
    ("[" * 5000 + "]" * 5000, ("nest deeper than 100 levels",)),
], ids=["state-list", "binary", "deep"])
def test_cli_bad_solver_json(tmp_path: Path, content: str | bytes, needles: tuple[str, ...]
                             ) -> None:
    p = tmp_path / "s.json"
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content)
    res = cli("eval", "--task", "sst2", "--model", "fake", "--solver", str(p), "--limit", "2",
              "--no-progress", home=tmp_path / "home")
    one_line_error(res, *needles)


def test_cli_corrupt_cache_sqlite(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    corrupt_sqlite(home / "cache.sqlite")
    for args in (("cache", "stats"), ("ask", "--model", "fake", "hi")):
        res = cli(*args, home=home)
        one_line_error(res, "cannot open LM cache", "cache.sqlite")
    (home / "cache.sqlite").write_bytes(BINARY)  # not SQLite at all
    one_line_error(cli("cache", "stats", home=home), "file is not a database")


def test_cli_binary_task_file_and_skillbook_export(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (tmp_path / "t.yaml").write_bytes(BINARY)
    one_line_error(cli("tasks", "validate", str(tmp_path / "t.yaml"), home=home),
                   "cannot read task file", "not UTF-8 text")
    (tmp_path / "x.json").write_bytes(BINARY)
    one_line_error(cli("skills", "import", str(tmp_path / "x.json"), home=home),
                   "cannot read SkillBook export", "not UTF-8 text")


# ---- runs: interrupted, and no run for a model that cannot load -----------------------------
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_runs_ls_shows_interrupted_when_owner_is_gone(tmp_path: Path) -> None:
    from metaskill.eval.run import Run
    from metaskill.eval.store import RunStore

    home = tmp_path / "home"
    store = RunStore(home / "runs.sqlite")
    host = socket.gethostname()
    owners = {"20260101-000000-dead": f"{host}:{_dead_pid()}",
              "20260101-000001-live": f"{host}:{os.getpid()}",  # this test: alive
              "20260101-000002-away": "some-other-host:1"}      # cannot be checked
    for rid, owner in owners.items():
        store.create(Run(id=rid, task="sst2", split="test", selection=["a"], model="fake"))
        store._db.get().execute("UPDATE runs SET owner=? WHERE id=?", (owner, rid))
    res = cli("runs", "ls", "--json", home=home)
    assert res.returncode == 0, res.stderr
    status = {r["id"]: r["status"] for r in map(json.loads, res.stdout.splitlines())}
    assert status == {"20260101-000000-dead": "interrupted",
                      "20260101-000001-live": "running",
                      "20260101-000002-away": "running"}
    dead = store.get("20260101-000000-dead")
    assert "is gone" in dead.note and "--resume 20260101-000000-dead" in dead.note
    store.claim("20260101-000000-dead")  # resuming takes it over: running again
    assert store.get("20260101-000000-dead").status == "running"


def test_model_that_fails_to_load_leaves_no_run(tmp_path: Path) -> None:
    home = tmp_path / "home"
    bad = tmp_path / "bad.gguf"
    bad.write_text("this is not a GGUF model\n")
    one_line_error(cli("eval", "--task", "sst2", "--model", f"gguf:{bad}", "--limit", "2",
                       "--no-progress", home=home))
    res = cli("runs", "ls", "--json", home=home)
    assert res.returncode == 0 and res.stdout.strip() == "", res.stdout + res.stderr


# ---- siblings, in-process ------------------------------------------------------------------
def _task_file(tmp_path: Path, data_name: str) -> Path:
    p = tmp_path / "t.yaml"
    p.write_text(f"name: t\nsource:\n  path: {data_name}\n")
    return p


@pytest.mark.parametrize(("name", "content", "match"), [
    ("b.jsonl", BINARY, "not UTF-8 text"),
    ("b.csv", BINARY, "not UTF-8 text"),
    ("dir.jsonl", None, "Is a directory"),
    ("dir.csv", None, "Is a directory"),
    ("long.jsonl", '{"input": ' + "1" * 5000 + "}\n", r"long.jsonl:1: malformed JSON"),
    ("trunc.jsonl", '{"input": "x", "ans', r"trunc.jsonl:1: malformed JSON"),
    ("d150.jsonl", '{"input": ' + "[" * 150 + "]" * 150 + "}\n", "nest deeper than 100"),
])
def test_data_file_siblings(tmp_path: Path, name: str, content: str | bytes | None,
                            match: str) -> None:
    from metaskill.tasks.registry import load_task_file

    p = tmp_path / name
    if content is None:
        p.mkdir()
    elif isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content)
    with pytest.raises(TaskError, match=match):
        load_task_file(_task_file(tmp_path, name))


def test_data_nested_within_limit_loads(tmp_path: Path) -> None:
    from metaskill.tasks.registry import load_task_file

    lines = ['{"input": ' + "[" * 50 + "]" * 50 + ', "answer": "a"}']
    lines += [json.dumps({"input": f"q{i}", "answer": "a"}) for i in range(30)]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    task = load_task_file(_task_file(tmp_path, "d.jsonl"))
    assert sum(len(v) for v in task.splits.values()) == 31


@pytest.mark.parametrize(("content", "match"), [
    ("a: " + DEEP + "\n", "nest deeper than 100"),
    (None, "is a folder"),
    ("- 1\n", "a task file is a YAML mapping"),
])
def test_task_yaml_siblings(tmp_path: Path, content: str | None, match: str) -> None:
    from metaskill.tasks.taskfile import read_task_file

    p = tmp_path / "t.yaml"
    if content is None:
        p.mkdir()
    else:
        p.write_text(content)
    with pytest.raises(TaskError, match=match):
        read_task_file(p)


def test_bigbench_binary_and_deep_task_json(tmp_path: Path) -> None:
    from metaskill.tasks.registry import get_task

    (tmp_path / "task.json").write_bytes(BINARY)
    with pytest.raises(TaskError, match="not UTF-8 text"):
        get_task("bigbench", path=str(tmp_path))
    (tmp_path / "task.json").write_text('{"examples": ' + DEEP + "}")
    with pytest.raises(TaskError, match="nest deeper than 100"):
        get_task("bigbench", path=str(tmp_path))


@pytest.mark.parametrize(("data", "match"), [
    ("", "the file is empty"),
    ("[1, 2]", "top level must be an object"),
    ({"kind": ["zero-shot"]}, "no 'kind' field"),
    ({"kind": "zero-shot", "model": 5}, "'model' must be a model spec string"),
    ({"kind": "raml", "state": {"x": 1}}, "does not fit solver kind 'raml'"),
    ({"kind": "self_refine", "state": {"inner": [1]}}, "does not fit solver kind"),
])
def test_solver_json_siblings(tmp_path: Path, data: str | dict, match: str) -> None:
    from metaskill.eval.solvers import load_solver
    from metaskill.lm.fake import ScriptedLM

    p = tmp_path / "s.json"
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    with pytest.raises(MetaskillError, match=match):
        load_solver(p, lm=ScriptedLM())


def test_solver_json_folder_and_save_to_folder(tmp_path: Path) -> None:
    from metaskill.eval.solvers import ZeroShot, load_solver, save_solver
    from metaskill.lm.fake import ScriptedLM

    with pytest.raises(MetaskillError, match="is a folder"):
        load_solver(tmp_path, lm=ScriptedLM())
    with pytest.raises(MetaskillError, match=r"cannot write solver file .*folder"):
        save_solver(ZeroShot(ScriptedLM()), tmp_path)


def test_served_solver_binary(tmp_path: Path) -> None:
    from metaskill.serve.server import load_served_solver

    (tmp_path / "s.json").write_bytes(BINARY)
    with pytest.raises(MetaskillError, match="not UTF-8 text"):
        load_served_solver(tmp_path / "s.json")


@pytest.mark.parametrize(("content", "match"), [
    (BINARY, "not UTF-8 text"),
    ("[]", "top level must be an object"),
    (json.dumps({"kind": "metaskill.profile", "schema_version": "1"}), "whole number"),
    ("{" * 3000, "nest deeper than 100|malformed JSON"),
])
def test_profile_siblings(tmp_path: Path, content: str | bytes, match: str) -> None:
    from metaskill.skills.profile import Profile

    p = tmp_path / "p.json"
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content)
    with pytest.raises(MetaskillError, match=match):
        Profile.load(p)


def test_skillbook_export_siblings_leave_existing_book(tmp_path: Path) -> None:
    from metaskill.skills.book import SCHEMA_VERSION, SkillBook, make_skill
    from metaskill.skills.embed import HashEmbedder

    emb = HashEmbedder(dim=8)
    path = tmp_path / "book.sqlite"
    book = SkillBook(path, embedder=emb)
    book.add_skills([make_skill(name="addition", description="adds numbers")])
    book.close()
    p = tmp_path / "x.json"
    p.write_text('{"kind": "metaskill.skillbook", "x": ' + DEEP + "}")
    with pytest.raises(MetaskillError, match="nest deeper than 100"):
        SkillBook.from_json(p, path, embedder=emb, replace=True)
    p.write_text(json.dumps({"kind": "metaskill.skillbook", "schema_version": "1"}))
    with pytest.raises(MetaskillError, match="schema version"):
        SkillBook.from_json(p, path, embedder=emb, replace=True)
    p.write_text(json.dumps({"kind": "metaskill.skillbook", "schema_version": SCHEMA_VERSION,
                             "examples": [["not", "an", "object"]]}))
    with pytest.raises(MetaskillError, match="malformed SkillBook export"):
        SkillBook.from_json(p, path, embedder=emb, replace=True)
    assert len(SkillBook(path, embedder=emb)) == 1  # the malformed exports replaced nothing


def test_adapter_notes_and_config_siblings(tmp_path: Path) -> None:
    from metaskill.lm.adapters import adapter_meta, export_gguf

    (tmp_path / "metaskill_train.json").write_bytes(BINARY)
    with pytest.raises(MetaskillError, match=r"cannot read adapter notes .*not UTF-8 text"):
        adapter_meta(tmp_path)
    (tmp_path / "metaskill_train.json").write_text("[1]")
    with pytest.raises(MetaskillError, match="top level must be an object"):
        adapter_meta(tmp_path)
    pytest.importorskip("gguf")
    pytest.importorskip("safetensors")
    (tmp_path / "adapter_config.json").write_text(DEEP)
    with pytest.raises(MetaskillError, match=r"cannot read adapter config .*nest deeper"):
        export_gguf(tmp_path)


def test_corrupt_embedding_cache(tmp_path: Path) -> None:
    from metaskill.skills.embed import EmbeddingCache

    corrupt_sqlite(tmp_path / "e.sqlite")
    with pytest.raises(MetaskillError, match="cannot open embedding cache"):
        EmbeddingCache(tmp_path / "e.sqlite")


def test_stage_file_that_is_binary_or_a_list_is_recomputed(tmp_path: Path) -> None:
    from metaskill.core.stages import StageRunner

    runner = StageRunner(tmp_path)
    for content in (BINARY, b"[1, 2]", ("[" * 5000).encode()):
        runner.path("s").write_bytes(content)
        assert runner.run("s", {"x": 1}, lambda: {"y": 2}) == {"y": 2}
