"""Settings passed explicitly to whatever needs them (no process-wide mutable state).

Example:
    >>> s = Settings.from_env({"METASKILL_HOME": "/tmp/ms"})
    >>> str(s.cache_path)
    '/tmp/ms/cache.sqlite'
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    """Where metaskill keeps its state.

    Attributes:
        home: root folder for the cache, run store and SkillBook
            (``METASKILL_HOME``, default ``~/.cache/metaskill``).
        threads: CPU threads for llama.cpp and torch (``METASKILL_THREADS``; None: the
            backends' default, all cores). On a loaded machine 1 thread can beat 2.
        parallel: sequences llama.cpp decodes together in one context (``METASKILL_PARALLEL``;
            None: the backend's default, 8; 1: one sample after another).
    """

    home: Path
    threads: int | None = None
    parallel: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None,
                 threads: int | None = None) -> Settings:
        """Read settings from an environment mapping (``os.environ`` by default).

        ``threads`` (a ``--threads`` option) overrides ``METASKILL_THREADS``;
        ``METASKILL_PARALLEL`` sets :attr:`parallel`.

        Example:
            >>> Settings.from_env({"METASKILL_THREADS": "1"}).threads
            1
            >>> Settings.from_env({"METASKILL_THREADS": "1"}, threads=2).threads
            2
            >>> Settings.from_env({"METASKILL_PARALLEL": "4"}).parallel
            4
        """
        from metaskill.core.errors import InvalidParameterError

        env = os.environ if env is None else env
        home = env.get("METASKILL_HOME") or str(Path("~/.cache/metaskill").expanduser())
        raw = env.get("METASKILL_THREADS", "").strip()
        if threads is None and raw:
            if not raw.isdigit() or int(raw) < 1:
                raise InvalidParameterError(
                    f"METASKILL_THREADS must be a whole number >= 1, got '{raw}'.")
            threads = int(raw)
        if threads is not None and threads < 1:
            raise InvalidParameterError(f"--threads must be >= 1, got {threads}.")
        raw = env.get("METASKILL_PARALLEL", "").strip()
        if raw and (not raw.isdigit() or int(raw) < 1):
            raise InvalidParameterError(
                f"METASKILL_PARALLEL must be a whole number >= 1, got '{raw}'.")
        parallel = int(raw) if raw else None
        return cls(home=Path(home).expanduser(), threads=threads, parallel=parallel)

    @property
    def cache_path(self) -> Path:
        """SQLite file of the LM cache."""
        return self.home / "cache.sqlite"

    @property
    def runs_path(self) -> Path:
        """SQLite file of the run store."""
        return self.home / "runs.sqlite"

    @property
    def skills_path(self) -> Path:
        """SQLite file of the default SkillBook."""
        return self.home / "skills.sqlite"
