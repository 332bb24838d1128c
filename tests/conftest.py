"""Shared fixtures: an isolated METASKILL_HOME, the embedded model, a local llama.cpp server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked ``sandbox`` run code under bubblewrap: skip them, saying why, where it
    cannot run (``.ci/run`` and ``make test`` install the Debian package)."""
    if item.get_closest_marker("sandbox") is not None:
        from metaskill.tasks.sandbox import bwrap_problem

        why = bwrap_problem()
        if why is not None:
            pytest.skip(why)


@pytest.fixture
def tmp_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh METASKILL_HOME for this test (cache, runs, skills live under it)."""
    home = tmp_path / "metaskill_home"
    monkeypatch.setenv("METASKILL_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def local_lm() -> Iterator[object]:
    """The embedded default model (SmolLM2-135M-Instruct), loaded once, without a cache."""
    pytest.importorskip("llama_cpp")
    from metaskill.lm.llama import LlamaLM, builtin_model_path

    lm = LlamaLM(builtin_model_path("local"), spec="local")
    yield lm
    lm.close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_llama_server(model: Path, log: Path, port: int | None = None,
                       timeout_s: float = 180.0) -> tuple[subprocess.Popen[bytes], str]:
    """Start llama_cpp.server on 127.0.0.1 (via ``python -m metaskill.lm.llama``, which
    runs ``llama_cpp.server`` with AMX-safe loading); returns (process, base URL)."""
    import httpx

    port = port or free_port()
    cmd = [sys.executable, "-m", "metaskill.lm.llama", "--model", str(model),
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"]
    with log.open("wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited ({proc.returncode}): "
                               f"{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/models", timeout=1.0).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    stop_process(proc.pid)
    raise RuntimeError(f"llama_cpp.server did not start in {timeout_s} s")


def stop_process(pid: int) -> None:
    """SIGTERM the process by PID, SIGKILL it if it lingers."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL (``http://127.0.0.1:PORT/v1``) of a llama_cpp.server serving SmolLM2."""
    pytest.importorskip("llama_cpp.server.app")
    from metaskill.lm.llama import builtin_model_path

    log = tmp_path_factory.mktemp("llama_server") / "server.log"
    proc, url = start_llama_server(builtin_model_path("local"), log)
    try:
        yield url
    finally:
        stop_process(proc.pid)


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-extensions",
                  "--disable-default-apps", "--proxy-server=127.0.0.1:9",
                  "--proxy-bypass-list=<-loopback>"]


@pytest.fixture
def chromium(tmp_path: Path):
    """Run headless Chromium (fresh profile, no network) with extra args; skip if absent.

    Returns a function ``run(args, timeout=90) -> CompletedProcess`` (stdout as bytes).
    """
    import shutil

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    counter = iter(range(1000))

    def run(args: list[str], timeout: int = 90) -> subprocess.CompletedProcess[bytes]:
        profile = tmp_path / f"chromium-profile-{next(counter)}"
        cmd = [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"chromium timed out: {err[-2000:]!r}")
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)

    return run
