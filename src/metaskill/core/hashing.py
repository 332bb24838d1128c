"""Content hashes of JSON-able values, for cache keys and stage inputs.

Example:
    >>> stable_hash({"a": 1, "b": 2}) == stable_hash({"b": 2, "a": 1})
    True
    >>> len(stable_hash([1, "x"]))
    64
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def stable_hash(obj: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of ``obj``: sorted keys, no spaces, UTF-8.

    Args:
        obj: any JSON-serialisable value; dict key order does not change the hash.

    Returns:
        64 hex characters.

    Example:
        >>> stable_hash({"k": [1, 2]})[:12]
        'f917c469ead2'
    """
    data = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(data.encode()).hexdigest()


__all__ = ["stable_hash"]
