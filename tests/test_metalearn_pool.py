"""metalearn pool: what loads offline, what is skipped and why, the leave-tasks-out protocol."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metaskill.core.errors import MethodError
from metaskill.metalearn.pool import (
    LeaveOut,
    PoolEntry,
    bigbench_folders,
    load_pool,
    pool_specs,
)


def _bigbench(root: Path, name: str, choices: list[str], n: int = 40) -> Path:
    """A small multiple-choice BIG-bench task at root/bigbench/tasks/<name>/task.json."""
    d = root / "bigbench" / "tasks" / name
    d.mkdir(parents=True)
    exs = [{"input": f"{name} question {i}",
            "target_scores": {c: int(j == i % len(choices)) for j, c in enumerate(choices)}}
           for i in range(n)]
    (d / "task.json").write_text(json.dumps({"name": name, "description": name,
                                             "keywords": ["test"], "examples": exs}))
    return d


def test_specs_cover_builtins_bigbench_and_rgym(tmp_path: Path) -> None:
    _bigbench(tmp_path, "plausible", ["plausible", "implausible"])
    (tmp_path / "bigbench" / "tasks" / "empty_folder").mkdir()  # no task.json: not a task
    specs = pool_specs(tmp_path, rgym=["basic_arithmetic"])
    labels = [e.label for e in specs]
    for name in ("sst2", "trec", "ag_news", "word_reversal", "compose"):
        assert name in labels
    assert "bigbench:plausible" in labels and "bigbench:empty_folder" not in labels
    assert "reasoning_gym:basic_arithmetic" in labels
    assert "file" not in labels  # needs a path: never pooled
    assert [p.name for p in bigbench_folders(tmp_path)] == ["plausible"]


def test_specs_read_metaskill_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _bigbench(tmp_path, "odd", ["a", "b", "c"])
    monkeypatch.setenv("METASKILL_DATA", str(tmp_path))
    assert "bigbench:odd" in [e.label for e in pool_specs(rgym=())]
    monkeypatch.delenv("METASKILL_DATA")
    assert "bigbench:odd" not in [e.label for e in pool_specs(rgym=())]


def test_load_pool_kinds_and_skips(tmp_path: Path) -> None:
    _bigbench(tmp_path, "plausible", ["plausible", "implausible"])
    broken = tmp_path / "bigbench" / "tasks" / "broken"
    broken.mkdir()
    (broken / "task.json").write_text("{not json")
    entries = [e for e in pool_specs(tmp_path, rgym=())
               if e.loader in ("sst2", "trec", "word_reversal", "bigbench")]
    pool = load_pool(entries, kinds=["classification", "multiple_choice"])
    assert pool.names() == ["bigbench_plausible", "sst2", "trec"]
    assert pool.skipped["word_reversal"].startswith("kind generative")
    assert "malformed JSON" in pool.skipped["bigbench:broken"]
    summary = pool.summary()
    assert summary["tasks"]["sst2"]["labels"] == 2
    assert summary["tasks"]["bigbench_plausible"]["kind"] == "multiple_choice"
    assert json.loads(json.dumps(summary)) == summary  # plain JSON
    folder = tmp_path / "bigbench" / "tasks" / "plausible"
    assert summary["tasks"]["bigbench_plausible"]["source"] == {
        "loader": "bigbench", "options": {"path": str(folder)}}
    assert pool.sources["bigbench_plausible"].task_args() == f"--task bigbench -T path={folder}"
    assert pool.sources["sst2"].task_args() == "--task sst2"


def test_load_pool_names_filter_and_unknown_name() -> None:
    entries = [PoolEntry(loader="sst2"), PoolEntry(loader="trec")]
    assert load_pool(entries, names=["trec"]).names() == ["trec"]
    with pytest.raises(MethodError, match="ag_news"):
        load_pool(entries, names=["trec", "ag_news"])


def test_duplicate_task_names_keep_the_first() -> None:
    pool = load_pool([PoolEntry(loader="sst2"), PoolEntry(loader="sst2", options={"n_test": 5})])
    assert len(pool.tasks["sst2"].splits["test"]) == 300
    assert "already loaded" in pool.skipped["sst2"]


def test_leave_out_protocol() -> None:
    pool = load_pool([PoolEntry(loader="sst2"), PoolEntry(loader="trec"),
                      PoolEntry(loader="ag_news")])
    proto = LeaveOut.of(pool, ["trec", "trec"])
    assert proto.held_out == ["trec"]
    assert proto.train_tasks == ["ag_news", "sst2"]
    assert not set(proto.train_tasks) & set(proto.held_out)
    data = proto.to_json()
    assert data["schema_version"] == 1 and data["versions"]["trec"] == "1"
    assert LeaveOut.model_validate(data) == proto


def test_leave_out_refuses_typos_and_empty_training() -> None:
    pool = load_pool([PoolEntry(loader="sst2"), PoolEntry(loader="trec")])
    with pytest.raises(MethodError, match="not in the pool"):
        LeaveOut.of(pool, ["sst"])  # a typo would otherwise leave sst2 in training
    assert LeaveOut.of(pool, ["sst2", "mine"], outside_ok=["mine"]).held_out == ["sst2", "mine"]
    with pytest.raises(MethodError, match="nothing is left"):
        LeaveOut.of(pool, ["sst2", "trec"])
