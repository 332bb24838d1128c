"""`metaskill adapt --method memory` and `metaskill memory ls|show|clear`, run as a user
would (subprocess, fake model, hash embedder)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROWS = [(f"What is {i} plus {i + 1}?", str(2 * i + 1)) for i in range(12)]


@pytest.fixture
def env(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"q": q, "a": a}) + "\n" for q, a in ROWS))
    (tmp_path / "toy.yaml").write_text(
        "name: toy_sums\nkind: generative\n"
        "source:\n  path: data.jsonl\n  fields: {input: q, answer: a}\n"
        'template: "{input}"\ninstructions: "Add the numbers."\nverifier: {name: exact}\n'
        "split: {seed: 0, sizes: {train: 4, dev: 5, test: 3}}\n")
    return tmp_path, dict(os.environ, METASKILL_HOME=str(tmp_path / "home"), COLUMNS="200")


def ms(env: tuple[Path, dict[str, str]], *args: str, ok: bool = True,
       stdin: str | None = None) -> subprocess.CompletedProcess:
    cwd, e = env
    p = subprocess.run([sys.executable, "-m", "metaskill", *args], cwd=cwd, env=e, input=stdin,
                       capture_output=True, text=True, timeout=300)
    if ok:
        assert p.returncode == 0, p.stderr
    return p


def test_adapt_writes_notes_that_memory_ls_show_clear_manage(env) -> None:
    tmp, _ = env
    p = ms(env, "memory", "ls", ok=False)
    assert p.returncode == 1 and "no knowledge base" in p.stderr and "Traceback" not in p.stderr

    ms(env, "adapt", "--task", "toy.yaml", "--model", "fake", "--method", "memory",
       "--embedder", "hash:64", "--out", "mem.json", "--no-progress")
    assert (tmp / "home" / "memory.sqlite").is_file()
    saved = json.loads((tmp / "mem.json").read_text())
    assert saved["kind"] == "memory" and saved["state"]["path"].endswith("memory.sqlite")

    # the fake model replies "" -> every LM note breaks the schema -> template notes
    p = ms(env, "memory", "ls")
    assert "5 notes, 0 demoted (0 by LM, 5 by template)" in p.stdout
    assert p.stdout.count("template") >= 5 and "toy_sums" in p.stdout
    assert "For toy_sums questions like" in p.stdout

    p = ms(env, "memory", "show", "1")
    assert "source:" in p.stdout and "LM note not used" in p.stdout
    assert "task: toy_sums" in p.stdout and "status: active" in p.stdout
    p = ms(env, "memory", "show", "99", ok=False)
    assert p.returncode == 1 and "no note 99" in p.stderr

    # the saved Solver answers test with the notes in its prompts
    p = ms(env, "eval", "--task", "toy.yaml", "--model", "fake", "--solver", "mem.json",
           "--split", "test", "--no-progress")
    assert p.returncode == 0

    p = ms(env, "memory", "clear", "--id", "1", "--yes")
    assert "deleted 1 note from" in p.stdout
    p = ms(env, "memory", "clear", "--task", "other", "--yes")
    assert "deleted 0 notes" in p.stdout
    p = ms(env, "memory", "clear", stdin="n\n", ok=False)  # asks first; "n" keeps them
    assert p.returncode == 1
    assert "4 notes" in ms(env, "memory", "ls").stdout
    p = ms(env, "memory", "clear", "--task", "toy_sums", "--yes")
    assert "deleted 4 notes" in p.stdout
    assert "no notes" in ms(env, "memory", "ls").stdout


def test_memory_ls_all_shows_demoted_notes(env) -> None:
    tmp, _ = env
    code = (
        "import sys\n"
        "from metaskill.skills.embed import HashEmbedder\n"
        "from metaskill.skills.knowledge import KnowledgeBase, NoteDraft, DemotionRule\n"
        "kb = KnowledgeBase(sys.argv[1], embedder=HashEmbedder(64),"
        " rule=DemotionRule(after=2, below=0.5))\n"
        "a, b = kb.add_many([NoteDraft(skill='s', text='keeps failing', key='q', task='t'),"
        " NoteDraft(skill='s', text='keeps helping', key='q', task='t')])\n"
        "kb.record_use([a.id, b.id], helped=False); kb.record_use([a.id], helped=False)\n"
        "kb.record_use([b.id], helped=True); kb.record_use([b.id], helped=True)\n")
    kb = tmp / "kb.sqlite"
    subprocess.run([sys.executable, "-c", code, str(kb)], check=True, timeout=120)
    p = ms(env, "memory", "ls", "--kb", str(kb))
    assert "keeps helping" in p.stdout and "keeps failing" not in p.stdout
    assert "2 notes, 1 demoted" in p.stdout
    p = ms(env, "memory", "ls", "--kb", str(kb), "--all")
    assert "keeps failing" in p.stdout and "demoted" in p.stdout
    assert "2 (67%)" in p.stdout  # helped 2 of 3 retrievals
