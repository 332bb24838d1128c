"""METASKILL_PARALLEL: read by Settings.from_env, passed by load_lm to the llama.cpp backend."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from metaskill.core.errors import InvalidParameterError
from metaskill.core.settings import Settings
from metaskill.lm.spec import load_lm


def test_from_env_parses_parallel(tmp_path):
    env = {"METASKILL_HOME": str(tmp_path)}
    assert Settings.from_env(env).parallel is None
    assert Settings.from_env({**env, "METASKILL_PARALLEL": " 3 "}).parallel == 3
    assert Settings.from_env({**env, "METASKILL_PARALLEL": ""}).parallel is None


@pytest.mark.parametrize("raw", ["0", "-2", "two", "1.5"])
def test_from_env_rejects_a_bad_parallel_in_one_line(tmp_path, raw):
    with pytest.raises(InvalidParameterError) as e:
        Settings.from_env({"METASKILL_HOME": str(tmp_path), "METASKILL_PARALLEL": raw})
    assert str(e.value) == f"METASKILL_PARALLEL must be a whole number >= 1, got '{raw}'."


def _gguf(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"x")  # LlamaLM loads the weights lazily: a placeholder file will do
    return f


def test_load_lm_passes_parallel_and_threads_to_llama(tmp_path):
    settings = Settings(home=tmp_path, threads=1, parallel=3)
    lm = load_lm(f"gguf:{_gguf(tmp_path)}", cache=False, settings=settings)
    assert (lm.n_parallel, lm.n_threads) == (3, 1)
    # an explicit keyword wins over the setting, as for threads
    lm = load_lm(f"gguf:{_gguf(tmp_path)}", cache=False, settings=settings, n_parallel=2)
    assert lm.n_parallel == 2
    # unset: the backend's default
    lm = load_lm(f"gguf:{_gguf(tmp_path)}", cache=False, settings=Settings(home=tmp_path))
    assert lm.n_parallel == 8


def test_load_lm_parallel_through_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("METASKILL_HOME", str(tmp_path))
    monkeypatch.setenv("METASKILL_PARALLEL", "1")
    assert load_lm(f"gguf:{_gguf(tmp_path)}", cache=False).n_parallel == 1


def test_other_backends_ignore_parallel(tmp_path):
    settings = Settings(home=tmp_path, parallel=3)
    assert load_lm("fake", cache=False, settings=settings).spec == "fake"
    lm = load_lm("openai:m@http://127.0.0.1:9", cache=False, settings=settings)
    assert lm.base_url == "http://127.0.0.1:9/v1"


def test_cli_reports_a_bad_parallel_in_one_line(tmp_path):
    env = {**os.environ, "METASKILL_HOME": str(tmp_path), "METASKILL_PARALLEL": "x"}
    p = subprocess.run([sys.executable, "-m", "metaskill", "ask", "hi", "--model", "fake"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [
        "error: METASKILL_PARALLEL must be a whole number >= 1, got 'x'."]
