"""metaskill: make a language model better at your tasks by itself.

``import metaskill`` is cheap: heavy libraries (torch, transformers, llama_cpp,
sentence_transformers, ray) are imported only inside the functions that need them.

Example:
    >>> import metaskill
    >>> lm = metaskill.load_lm("fake")            # doctest: +SKIP
    >>> lm.complete([metaskill.Request(prompt="2+2=")])[0].text  # doctest: +SKIP
"""

from __future__ import annotations

from metaskill.core.errors import MetaskillError
from metaskill.core.types import Completion, Example, Message, Request, Sample, Usage

__version__ = "0.1.0"

__all__ = [
    "Completion",
    "Example",
    "Message",
    "MetaskillError",
    "Request",
    "Sample",
    "Usage",
    "__version__",
    "load_lm",
]


def load_lm(spec: str = "local", **kwargs):
    """Load an LM backend from a spec string (see :func:`metaskill.lm.load_lm`)."""
    from metaskill.lm.spec import load_lm as _load

    return _load(spec, **kwargs)
