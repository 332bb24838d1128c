"""LM backends behind one interface: ``complete(requests)`` and ``score(context, conts)``.

Load one with :func:`load_lm` from a spec string: ``local``, ``local:gemma3-270m``,
``gguf:PATH``, ``openai:MODEL@BASE_URL``, ``fake``; ``openai:MODEL@URL1,URL2`` spreads requests
over a pool of servers holding the same model.
"""

from metaskill.lm.base import LM
from metaskill.lm.cache import Cache

__all__ = ["LM", "Cache", "load_lm"]


def load_lm(spec: str = "local", **kwargs):
    """Load an LM from a spec string; see :func:`metaskill.lm.spec.load_lm`."""
    from metaskill.lm.spec import load_lm as _load

    return _load(spec, **kwargs)
