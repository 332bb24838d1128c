"""`metaskill skills ...` run as a user would, in a subprocess (fake LM, hash embedder)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROWS = [
    ("What is 2 plus 3?", "5", "addition"), ("What is 4 plus 4?", "8", "addition"),
    ("What is 1 plus 6?", "7", "addition"), ("What is 9 plus 1?", "10", "addition"),
    ("What is 2 times 3?", "6", "multiplication"), ("What is 4 times 4?", "16", "multiplication"),
    ("What is 3 times 5?", "15", "multiplication"), ("What is 2 times 8?", "16", "multiplication"),
    ("Sort: pear apple", "apple pear", "sorting"), ("Sort: dog cat", "cat dog", "sorting"),
    ("Sort: zebra ant", "ant zebra", "sorting"), ("Sort: b a", "a b", "sorting"),
]


@pytest.fixture
def env(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"q": q, "a": a, "s": s}) + "\n" for q, a, s in ROWS))
    (tmp_path / "toy.yaml").write_text(
        "name: toy_skills\nkind: generative\n"
        "source:\n  path: data.jsonl\n  fields: {input: q, answer: a, skills: s}\n"
        'template: "{input}"\nverifier: {name: exact}\n'
        "split: {seed: 0, sizes: {train: 6, dev: 4, test: 2}}\n"
    )
    e = dict(os.environ, METASKILL_HOME=str(tmp_path / "home"), COLUMNS="150")
    return tmp_path, e


def ms(env, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    cwd, e = env
    p = subprocess.run([sys.executable, "-m", "metaskill", *args], cwd=cwd, env=e,
                       capture_output=True, text=True, timeout=300)
    if ok:
        assert p.returncode == 0, p.stderr
    return p


def test_discover_ls_show_profile_export_import(env):
    tmp, _ = env
    p = ms(env, "skills", "discover", "--task", "toy.yaml", "--embedder", "hash",
           "--no-progress")
    assert "3 skills from toy_skills/train (labels)" in p.stdout
    assert (tmp / "home" / "skills.sqlite").exists()
    p = ms(env, "skills", "ls")
    assert "multiplication" in p.stdout and "task toy_skills" in p.stdout
    p = ms(env, "skills", "show", "sorting", "--k", "1")
    assert "sorting" in p.stdout and "Sort:" in p.stdout
    p = ms(env, "skills", "profile", "--task", "toy.yaml", "--model", "fake", "--out",
           "profile.json", "--html", "profile.html", "--no-progress")
    assert "Missing-Skill Profile" in p.stdout and "missing rate" in p.stdout
    prof = json.loads((tmp / "profile.json").read_text())
    assert prof["kind"] == "metaskill.profile" and prof["n"] == 4
    assert prof["n_difficult"] == 4  # the fake model answers "" to everything
    assert "<svg" in (tmp / "profile.html").read_text()
    p = ms(env, "skills", "ls")
    assert "0.0%" in p.stdout  # stats written back into the book
    ms(env, "skills", "export", "--out", "book.json", "--vectors")
    p = ms(env, "skills", "import", "book.json", "--book", "copy.sqlite")
    assert "imported 3 skills and 6 examples" in p.stdout
    p = ms(env, "skills", "ls", "--book", "copy.sqlite")
    assert "multiplication" in p.stdout


def test_embedding_source_and_replace_rules(env):
    p = ms(env, "skills", "discover", "--task", "toy.yaml", "--source", "embedding",
           "--n-skills", "3", "--embedder", "hash", "--no-progress")
    assert "(embedding)" in p.stdout
    # rediscovering the same task replaces the book; another task needs --replace
    ms(env, "skills", "discover", "--task", "toy.yaml", "--embedder", "hash", "--no-progress")
    p = ms(env, "skills", "discover", "--task", "trec", "--embedder", "hash",
           "--source", "embedding", "--n-skills", "2", "--limit", "20", "--no-progress",
           ok=False)
    assert p.returncode == 1 and "--replace" in p.stderr


@pytest.mark.parametrize("args, message", [
    (("skills", "show", "algebra"), "no SkillBook at"),
    (("skills", "discover", "--task", "toy.yaml", "--source", "magic"), "unknown --source"),
    (("skills", "discover", "--task", "toy.yaml", "--limit", "0"), "--limit must be >= 1"),
    (("skills", "discover", "--task", "toy.yaml", "--catalog", "nope.yaml"),
     "catalog file not found"),
    (("skills", "discover", "--task", "no_such_task"), "unknown task"),
    (("skills", "discover", "--task", "toy.yaml", "--split", "validation"), "no split"),
    (("skills", "discover", "--task", "toy.yaml", "--embedder", "glove"), "unknown embedder"),
    (("skills", "profile", "--task", "toy.yaml", "--model", "fake", "--solver", "magic"),
     "unknown solver"),
    (("skills", "import", "missing.json"), "not found"),
])
def test_bad_input_is_one_line(env, args, message):
    p = ms(env, *args, ok=False)
    assert p.returncode == 1
    assert message in p.stderr
    assert "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_show_unknown_skill(env):
    ms(env, "skills", "discover", "--task", "toy.yaml", "--embedder", "hash", "--no-progress")
    p = ms(env, "skills", "show", "multiplicaton", ok=False)
    assert "Did you mean: multiplication" in p.stderr and "Traceback" not in p.stderr


def test_catalog_with_fake_teacher_leaves_examples_unlabelled(env):
    tmp, _ = env
    Path(tmp / "cat.yaml").write_text("- name: addition\n- name: sorting\n")
    p = ms(env, "skills", "discover", "--task", "toy.yaml", "--catalog", "cat.yaml",
           "--teacher", "fake", "--embedder", "hash", "--no-progress")
    # the fake teacher answers "" (unparseable, retried once): every example unlabelled
    assert "6 examples, 0 labelled, 6 unlabelled" in p.stdout
