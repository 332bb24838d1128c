"""The LM verbs, run as a user runs them: ``python -m metaskill ...`` in a subprocess."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import pytest


def run(*args: str, home, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "METASKILL_HOME": str(home), "COLUMNS": "160"}
    return subprocess.run([sys.executable, "-m", "metaskill", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def assert_one_line_error(p: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_version_and_models(tmp_path):
    p = run("--version", home=tmp_path)
    assert p.returncode == 0 and p.stdout.startswith("metaskill ")
    p = run("models", home=tmp_path)
    assert p.returncode == 0
    for spec in ("local", "local:gemma3-270m", "gguf:PATH", "openai:MODEL@BASE_URL"):
        assert spec in p.stdout


def test_unknown_spec(tmp_path):
    assert_one_line_error(run("ask", "hi", "--model", "gpt-4", home=tmp_path),
                          "unknown model spec", "local", "gguf:PATH", "openai:MODEL@BASE_URL")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--temperature", "-1"), "temperature"),
        (("--top-p", "0"), "top_p"),
        (("--max-tokens", "0"), "max_tokens"),
    ],
)
def test_invalid_sampling_parameters(tmp_path, args, needle):
    assert_one_line_error(run("ask", "hi", *args, home=tmp_path), needle)


def test_missing_model_file(tmp_path):
    missing = tmp_path / "no-such-model.gguf"
    assert_one_line_error(run("ask", "hi", "--model", f"gguf:{missing}", home=tmp_path),
                          str(missing), "pip install 'metaskill[local]'")


def test_unreachable_server(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    line = assert_one_line_error(
        run("ask", "hi", "--model", f"openai:m@{url}", "--retries", "1", home=tmp_path), url)
    assert "after 2 attempts" in line


def test_cache_verbs_with_fake_model(tmp_path):
    p = run("ask", "hi", "--model", "fake", home=tmp_path)
    assert p.returncode == 0, p.stderr
    p = run("ask", "hi", "--model", "fake", home=tmp_path)
    assert "cached" in p.stderr
    p = run("cache", "stats", home=tmp_path)
    assert p.returncode == 0 and "fake" in p.stdout and "1" in p.stdout
    p = run("cache", "clear", "--model", "fake", home=tmp_path)
    assert p.returncode == 0 and "deleted 1 cached entry" in p.stdout


@pytest.mark.slow
def test_prompt_over_context_window(tmp_path):
    long = "word " * 2100
    line = assert_one_line_error(
        run("ask", long, "--model", "local", "--plain", home=tmp_path),
        "context window", "2048 tokens")
    assert re.search(r"prompt is 2\d{3} tokens", line), line


@pytest.mark.slow
def test_ask_and_demo_with_embedded_model(tmp_path):
    p = run("ask", "What is 2+2?", "--max-tokens", "12", home=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "4" in p.stdout and "completion tokens" in p.stderr
    p = run("demo", "--max-tokens", "4", home=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "5/5" in p.stdout and "0/5" in p.stdout  # pass 2 all cached, pass 1 none


@pytest.mark.slow
def test_ask_json_schema_and_grammar(tmp_path):
    """`ask --json-schema FILE`: the embedded model's reply is JSON under the schema;
    `--grammar FILE` holds it to the grammar; bad files are one-line errors."""
    import json

    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "required": ["sentiment"], "properties": {
        "sentiment": {"enum": ["positive", "negative"]}}}))
    p = run("ask", "Review: a dull, lifeless film. Sentiment?", "--json-schema", str(schema),
            home=tmp_path)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["sentiment"] in ("positive", "negative")
    gbnf = tmp_path / "g.gbnf"
    gbnf.write_text('root ::= "yes" | "no"')
    p = run("ask", "Is the sky green?", "--grammar", str(gbnf), home=tmp_path)
    assert p.returncode == 0 and p.stdout.strip() in ("yes", "no"), (p.stdout, p.stderr)
    assert_one_line_error(run("ask", "x", "--json-schema", str(tmp_path / "none.json"),
                              home=tmp_path), "cannot read the JSON schema file")
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert_one_line_error(run("ask", "x", "--json-schema", str(tmp_path / "bad.json"),
                              home=tmp_path), "json_schema: must be a JSON object")
    gbnf.write_text("root ::= (")
    assert_one_line_error(run("ask", "x", "--grammar", str(gbnf), home=tmp_path),
                          "cannot compile the grammar")


def test_ask_schema_with_a_server_that_ignores_it_exits_1(tmp_path):
    """The fake model answers free text: one retry, then finish=invalid and exit 1."""
    import json

    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "required": ["a"]}))
    p = run("ask", "hi", "--model", "fake", "--json-schema", str(schema), home=tmp_path)
    assert p.returncode == 1 and "finish=invalid" in p.stderr and "1 retry" in p.stderr
