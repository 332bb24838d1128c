"""What bubblewrap adds to each sandboxed execution, and how the attacks end under it.

Runs a trivial program (``print(1)``) through :func:`metaskill.tasks.sandbox.run_code`
``--runs`` times in each mode, interleaved (hook-only, bwrap, hook-only, ...) so that
machine load hits both alike, after two warm-up runs of each. Reports the median and p90
wall time per execution of each mode and their ratio, plus a one-line outcome of each
attack of ``tests/test_sandbox_attacks.py`` with the audit hook disarmed (bubblewrap
alone). Writes ``benchmarks/results/sandbox.md``.

Usage::

    .venv/bin/python benchmarks/sandbox.py --runs 30
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from metaskill.tasks.sandbox import CodeResult, bwrap_problem, run_code

OUT = Path(__file__).resolve().parent / "results" / "sandbox.md"
TESTS = Path(__file__).resolve().parents[1] / "tests" / "test_sandbox_attacks.py"


def percentile(xs: list[float], q: float) -> float:
    """The ``q`` quantile of ``xs`` (nearest rank)."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def cpu_model() -> str:
    """The model name line of ``lscpu``."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((ln.split(":", 1)[1].strip() for ln in out.splitlines()
                 if ln.startswith("Model name")), "unknown")


def attack_code(name: str) -> str:
    """A raw-string constant of the attack tests (``DISARM``: the gc attack on the hook;
    ``DIRFD``: the dir_fd plus symlink set-up)."""
    src = TESTS.read_text()
    start = src.index(f"{name} = r'''") + len(name) + 7
    return src[start:src.index("'''\n", start)]


def disarm_code() -> str:
    """The gc attack on the audit hook, taken from the attack tests."""
    return attack_code("DISARM")


def attacks(outside: Path) -> list[tuple[str, str, dict[str, object]]]:
    """(name, code, run_code options) of each attack, run after disarming the hook."""
    return [
        ("read /etc/shadow", "print(open('/etc/shadow').read())", {}),
        ("dir_fd + symlink: read /etc/shadow",
         attack_code("DIRFD") + "print(os.read(outside('/etc/shadow'), 100))", {}),
        ("dir_fd + symlink: write outside", attack_code("DIRFD")
         + f"os.write(outside({str(outside / 'owned')!r}, os.O_WRONLY | os.O_CREAT), b'x')", {}),
        ("write the project folder",
         f"open({str(Path(__file__).resolve().parents[1] / '.owned')!r}, 'w')", {}),
        ("write outside (tmp)", f"open({str(outside / 'owned')!r}, 'w')", {}),
        ("os.system", f"import os\nprint('status', os.system('touch {outside}/m'))\n"
                      "raise SystemExit(1)", {}),
        ("socket to 127.0.0.1", "import socket\nsocket.create_connection(('127.0.0.1', 22), 2)",
         {}),
        ("fork loop", "import os\nwhile True:\n    os.fork()", {}),
        ("8 GB allocation", "bytearray(8 * 1024 ** 3)", {}),
        ("endless loop", "while True:\n    pass", {"timeout_s": 1}),
    ]


def outcome(r: CodeResult) -> str:
    """How the run ended, in one line."""
    if r.timed_out or r.memory_exceeded:
        return r.summary()
    lines = [ln for ln in (r.stdout + r.stderr).splitlines()
             if ln.strip() and "hook disarmed" not in ln]
    return f"exit {r.returncode}: {lines[-1][:110] if lines else ''}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    if bwrap_problem():
        sys.exit(f"cannot measure: {bwrap_problem()}")
    times: dict[str, list[float]] = {"hook-only": [], "bwrap": []}
    for i in range(args.runs + 2):
        for mode in times:
            r = run_code("print(1)", timeout_s=10, mode=mode)
            assert r.ok, r.stderr
            if i >= 2:
                times[mode].append(r.duration_s * 1000)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, code, kw in attacks(Path(tmp)):
            r = run_code(disarm_code() + code, mode="bwrap", **{"timeout_s": 10, **kw})
            assert not r.ok, f"{name} succeeded: {r.stdout}"
            assert "hook disarmed" in r.stdout, f"{name}: the gc attack did not run: {r.stderr}"
            rows.append(f"| {name} | {outcome(r).replace('|', '/')} |")
        assert not list(Path(tmp).iterdir())
    med = {m: statistics.median(t) for m, t in times.items()}
    p90 = {m: percentile(t, 0.9) for m, t in times.items()}
    ratio_med, ratio_p90 = med["bwrap"] / med["hook-only"], p90["bwrap"] / p90["hook-only"]
    layers = run_code("pass", timeout_s=10).isolation
    text = f"""# Sandbox start-up overhead: bubblewrap vs hook-only

- command: `.venv/bin/python benchmarks/sandbox.py --runs {args.runs}`
- date: {dt.date.today().isoformat()}
- machine: {os.cpu_count()} cores, {cpu_model()} (shared with other jobs while measured)
- program: `print(1)`, {args.runs} runs per mode, interleaved, after 2 warm-up runs each;
  wall time of `run_code` (temp folder, spawn, interpreter start-up, exit, clean-up)
- bwrap layers: {", ".join(layers)}

| mode | median ms | p90 ms |
| --- | ---: | ---: |
| hook-only (before) | {med["hook-only"]:.1f} | {p90["hook-only"]:.1f} |
| bwrap (after) | {med["bwrap"]:.1f} | {p90["bwrap"]:.1f} |
| ratio bwrap / hook-only | {ratio_med:.2f}x | {ratio_p90:.2f}x |

Added per execution: {med["bwrap"] - med["hook-only"]:+.1f} ms at the median. The hook-only
mode still uses `unshare -rn` for its network namespace where it can, as before.

## Attacks under bubblewrap alone (audit hook disarmed through `gc` first)

The gc attack (the tests' `DISARM`: find the hook's closure with `gc.get_objects`, empty
its deny sets, point its root cell at `/`) runs first in every row, so these are the OS
layers alone. Each must fail; the reason is the last line the sandboxed program printed
(`status 32512` is glibc's `system()` saying the shell's process could not be created).

| attack | outcome |
| --- | --- |
""" + "\n".join(rows) + "\n"
    OUT.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
