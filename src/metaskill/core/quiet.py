"""Quiet loading of transformers models.

transformers prints a "Loading weights" progress bar for every model it loads; the main job
loads the embedder and the training copy of the model several times, and those bars bury
the lines a user reads. :func:`no_load_bars` turns transformers' bars off for one block and
restores the previous setting after it (no lasting change to the library's state).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def no_load_bars() -> Iterator[None]:
    """Turn transformers' own progress bars off inside the block.

    Example:
        >>> with no_load_bars():
        ...     pass
    """
    try:
        from transformers.utils import logging as tl
    except ImportError:  # transformers not installed: nothing to quiet
        yield
        return
    was = tl.is_progress_bar_enabled()
    tl.disable_progress_bar()
    # The GGUF conversion draws a plain tqdm bar that the switch above does not reach; its
    # module's tqdm is swapped for a silent one inside the block only.
    gguf = sys.modules.get("transformers.modeling_gguf_pytorch_utils")
    if gguf is None:
        try:
            import transformers.modeling_gguf_pytorch_utils as gguf
        except ImportError:
            gguf = None
    bar = getattr(gguf, "tqdm", None)
    if bar is not None:
        gguf.tqdm = functools.partial(bar, disable=True)  # type: ignore[union-attr]
    try:
        yield
    finally:
        if bar is not None:
            gguf.tqdm = bar  # type: ignore[union-attr]
        if was:
            tl.enable_progress_bar()
