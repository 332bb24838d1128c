"""Small statistics for evaluation: the Wilson score interval and the paired bootstrap.

Example:
    >>> lo, hi = wilson(8, 10)
    >>> round(lo, 3), round(hi, 3)
    (0.49, 0.943)
    >>> wilson(0, 0)
    (0.0, 1.0)
    >>> paired_gain([1, 1, 0, 1], [0, 1, 0, 0], seed=0)[0]
    0.5
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson(k: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion of ``k`` successes in ``n`` trials.

    Unlike the normal ("Wald") interval it stays inside [0, 1] and is sensible at
    k = 0, k = n and small n (Wilson, 1927). ``k`` may be fractional (a sum of scores in
    [0, 1]); it is treated as a count of successes.

    Args:
        k: successes (0 <= k <= n).
        n: trials; with n = 0 the interval is the uninformative (0, 1).
        z: the normal quantile (1.96 for 95%).

    Returns:
        (low, high) bounds of the interval.

    Raises:
        ValueError: if n < 0 or k is outside [0, n].

    Example:
        >>> wilson(5, 5)[1]
        1.0
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}.")
    if n == 0:
        return (0.0, 1.0)
    if not -1e-9 <= k <= n + 1e-9:
        raise ValueError(f"k must be in [0, n={n}], got {k}.")
    k = min(max(k, 0.0), float(n))
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n)) / denom
    lo, hi = centre - half, centre + half
    # Exact at the edges (floating error would otherwise give 1e-17 instead of 0).
    if k == 0:
        lo = 0.0
    if k == n:
        hi = 1.0
    return (max(0.0, lo), min(1.0, hi))


def paired_gain(
    after: Sequence[float], before: Sequence[float], *, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean paired difference ``after - before`` and its percentile-bootstrap 95% interval.

    Both score lists are over the same examples in the same order; resampling examples
    (not runs) keeps the pairing, so the interval is much tighter than comparing two
    independent proportions.

    Args:
        after: per-example scores of the new Solver.
        before: per-example scores of the old Solver, on the same examples, same order.
        n_boot: bootstrap resamples.
        seed: seed of the resampling (the interval is deterministic given it).

    Returns:
        (mean gain, low, high) of the 95% interval.

    Raises:
        ValueError: if the lists differ in length or are empty.

    Example:
        >>> paired_gain([1, 0], [1, 0])
        (0.0, 0.0, 0.0)
    """
    import numpy as np

    a = np.asarray(after, dtype=float)
    b = np.asarray(before, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("paired_gain needs two equally long, non-empty score lists")
    d = a - b
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(n_boot, d.size))
    boots = d[idx].mean(axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return float(d.mean()), float(lo), float(hi)
