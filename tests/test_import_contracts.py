"""The import contracts of ``pyproject.toml`` ([tool.importlinter]) hold, and they bite.

``make test`` runs ``lint-imports`` too; these tests keep the check inside pytest and
show, on a copy of the package with bad imports added, that each kind of contract fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which(
    "lint-imports")

pytestmark = pytest.mark.skipif(
    LINT is None, reason="lint-imports is not installed (it comes with pip install -e '.[dev]')")


def lint(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pythonpath is not None:  # the copy, ahead of the installed package
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_the_import_contracts_hold() -> None:
    out = lint(ROOT)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def test_each_contract_breaks_on_a_bad_import(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "src" / "metaskill", tmp_path / "src" / "metaskill",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    pkg = tmp_path / "src" / "metaskill"

    def add_line(rel: str, line: str) -> None:
        p = pkg / rel
        p.write_text(p.read_text() + f"\n{line}\n")

    add_line("eval/store.py", "from metaskill.methods import METHODS")  # upward
    add_line("core/types.py", "import torch")  # heavy library in core
    add_line("__init__.py", "import sentence_transformers")  # heavy library at the top
    add_line("tasks/sources.py", "from metaskill.tasks import taskfile")  # a cycle
    out = lint(tmp_path, pythonpath=tmp_path / "src")
    text = out.stdout
    assert out.returncode != 0, text
    assert "metaskill.eval.store -> metaskill.methods" in text
    assert "metaskill.core.types -> torch" in text
    assert "metaskill -> sentence_transformers" in text
    assert "No cycles are allowed in metaskill.tasks" in text
