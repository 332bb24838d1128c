"""Resumable stages: each stage's result is stored as JSON under the run folder, keyed by
a hash of its inputs, so a killed run continues where it stopped and a finished stage is
never recomputed unless its inputs changed.

Example:
    >>> import tempfile
    >>> runner = StageRunner(tempfile.mkdtemp())
    >>> runner.run("double", {"x": 2}, lambda: {"y": 4})
    {'y': 4}
    >>> runner.run("double", {"x": 2}, lambda: 1 / 0)   # cached: not recomputed
    {'y': 4}
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metaskill.core.hashing import stable_hash

SCHEMA_VERSION = 1


class StageRunner:
    """Runs named stages once per distinct input, persisting results atomically.

    Args:
        root: the run folder (``--out``); stage files go to ``root/stages/NAME.json``.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        (self.root / "stages").mkdir(parents=True, exist_ok=True)
        self.log: list[dict[str, Any]] = []

    def path(self, name: str) -> Path:
        """File that holds stage ``name``'s result."""
        return self.root / "stages" / f"{name}.json"

    def done(self, name: str, inputs: Any) -> bool:
        """Whether stage ``name`` already finished with these inputs."""
        p = self.path(name)
        if not p.exists():
            return False
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):  # unreadable, binary, malformed: redo
            return False
        return isinstance(data, dict) and data.get("inputs_hash") == stable_hash(inputs)

    def run(self, name: str, inputs: Any, fn: Callable[[], Any]) -> Any:
        """Return stage ``name``'s stored result if its inputs match, else compute and store it.

        Args:
            name: stage name (a file name).
            inputs: JSON-able description of everything the stage depends on.
            fn: computes the JSON-able result.
        """
        h = stable_hash(inputs)
        p = self.path(name)
        if self.done(name, inputs):
            data = json.loads(p.read_text())
            self.log.append({"stage": name, "cached": True, "seconds": 0.0})
            return data["result"]
        t0 = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t0
        payload = {
            "schema_version": SCHEMA_VERSION,
            "stage": name,
            "inputs_hash": h,
            "seconds": seconds,
            "finished": time.time(),
            "result": result,
        }
        tmp = p.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(payload, indent=1, ensure_ascii=False))
        os.replace(tmp, p)
        self.log.append({"stage": name, "cached": False, "seconds": seconds})
        return result


__all__ = ["SCHEMA_VERSION", "StageRunner"]
