"""Scale-out on Ray: fan evaluations and searches over workers and machines; launch
multi-process LoRA training.

* :class:`~metaskill.distributed.executor.RayExecutor` -- an ``executor`` for
  :func:`metaskill.eval.harness.evaluate` (and everything built on it: ``eval``, the
  archive search, the main job's evaluations): the Run's batches are solved on N Ray
  actors, each holding one LM replica, and committed on the driver to the one run store.
* :mod:`~metaskill.distributed.train_launch` -- the LoRA SFT of
  :mod:`metaskill.methods.sft` run by ``accelerate launch`` (or ``torchrun``) over several
  processes / GPUs, as a ``trainer`` for the parametric methods.

Nothing here is imported by ``import metaskill``; Ray and accelerate are imported inside
the functions that need them (``pip install 'metaskill[ray]'``, ``'metaskill[train]'``).
"""
