"""Table cells the benchmark reports share: percentages, accuracy with its Wilson interval,
and a paired-bootstrap gain.

Example:
    >>> pct(0.5), acc_cell([1.0, 0.0, 1.0, 1.0]), gain_cell([1.0, 1.0], [0.0, 1.0])[:5]
    ('50.0', '75.0 [30.1, 95.4]', '+50.0')
"""

from __future__ import annotations

import platform
import subprocess


def pct(x: float | None) -> str:
    """A share as a percentage with one decimal ('-' for None)."""
    return "-" if x is None else f"{100 * x:.1f}"


def mean(xs: list[float]) -> float:
    """The mean (0.0 for no values)."""
    return sum(xs) / len(xs) if xs else 0.0


def acc_cell(scores: list[float]) -> str:
    """Accuracy in % with its Wilson 95% interval."""
    from metaskill.eval.stats import wilson

    lo, hi = wilson(sum(scores), len(scores))
    return f"{pct(mean(scores))} [{pct(lo)}, {pct(hi)}]"


def gain_cell(after: list[float], before: list[float]) -> str:
    """``after - before`` in points with its paired-bootstrap 95% interval."""
    from metaskill.eval.stats import paired_gain

    d, lo, hi = paired_gain(after, before)
    return f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def cpu_model() -> str:
    """lscpu's model name (or the platform's processor string), for every results header."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"
