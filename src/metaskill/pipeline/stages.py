"""Moved to :mod:`metaskill.core.stages`; this re-export goes once its last importers move.

Example:
    >>> from metaskill.core.stages import StageRunner as Core
    >>> StageRunner is Core
    True
"""

from metaskill.core.stages import SCHEMA_VERSION, StageRunner

__all__ = ["SCHEMA_VERSION", "StageRunner"]
