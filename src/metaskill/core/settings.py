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
    """

    home: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read settings from an environment mapping (``os.environ`` by default)."""
        env = os.environ if env is None else env
        home = env.get("METASKILL_HOME") or str(Path("~/.cache/metaskill").expanduser())
        return cls(home=Path(home).expanduser())

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
