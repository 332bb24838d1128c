"""Fan a Run's batches over Ray workers, each holding one LM replica.

The harness (:func:`metaskill.eval.harness.evaluate`) decides what to evaluate and commits
every batch's records, with the running totals, to the one run store; a
:class:`RayExecutor` only decides *where* each batch is solved. Each worker is a Ray actor
that loads one LM from its spec string (a llama.cpp model with its own threads, an hf
model, an openai client to its own endpoint) and, for every batch it is sent, rebuilds the
Solver from its JSON (once per distinct Solver), solves and verifies the batch exactly as
:func:`~metaskill.eval.harness.solve_batch` does in one process, and returns the records.
So a Run is the same whether it ran in 1 or N workers: the same records, in the same
store, committed by the driver.

Faults:

* a worker that dies mid-run (its process exits, its machine goes away) is replaced by a
  new actor in its slot and the batches it held are sent again; a batch whose records have
  reached the driver is never sent again, so no example is counted twice;
* a driver killed mid-run leaves a run whose committed batches are in the store:
  ``evaluate(..., resume=RUN_ID, executor=...)`` (``metaskill eval --resume RUN --workers
  N``) finishes it;
* an error about the environment (server unreachable, model missing) stops the run, as it
  does in one process;
* a worker that hangs without dying is not detected (there is no per-batch timeout): the
  LM backends' own timeouts (the openai client's) are what bounds a batch.

Ray is imported inside the functions that need it (the ``ray`` extra).

Example:
    >>> cfg = WorkerConfig(workers=2, lm="local", threads=1)
    >>> cfg.workers, cfg.cpus
    (2, 1.0)
    >>> with RayExecutor(cfg) as ex:                      # doctest: +SKIP
    ...     run = evaluate(solver, task, "test", store=store, executor=ex)
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from metaskill.core.errors import MetaskillError
from metaskill.core.hashing import stable_hash
from metaskill.core.types import Example
from metaskill.eval.run import Record

INSTALL_HINT = "pip install 'metaskill[ray]'"


class RayUnavailableError(MetaskillError):
    """Ray is not installed, or its cluster cannot be reached."""


class WorkersLostError(MetaskillError):
    """Workers kept dying; the run stops with what it has committed (resume it later)."""


def require_ray() -> Any:
    """The ``ray`` module, or a one-line error saying how to install it.

    Example:
        >>> require_ray()  # doctest: +SKIP
        <module 'ray' ...>
    """
    try:
        import ray
    except ImportError:
        raise RayUnavailableError(
            f"--workers N > 1 and --ray-address need Ray: {INSTALL_HINT}") from None
    return ray


class WorkerConfig(BaseModel):
    """The worker pool.

    Attributes:
        workers: Ray actors, each holding one LM replica (>= 1).
        lm: the model spec each worker loads (``local``, ``gguf:PATH``, ``hf:PATH``,
            ``openai:MODEL@URL``, ``fake``); a Solver whose JSON names an adapter
            (``local+adapter:PATH``) gets it on top, as :func:`load_solver` does.
        specs: one model spec per worker slot instead (slot i loads ``specs[i % len]``),
            e.g. each worker an ``openai:MODEL@URL`` client to its own vLLM server; they
            must serve the same model (the Run names ``lm``). A pool spec
            (``openai:MODEL@URL1,URL2``) in ``lm`` instead spreads every worker's requests
            over all the servers.
        threads: CPU threads of each worker's model (llama.cpp, torch); None: the
            backend's default.
        cpus: CPUs Ray reserves per worker (default: ``threads``, else 1).
        gpus: GPUs Ray reserves per worker (0 on CPU machines).
        address: a running Ray cluster (``ray://HOST:10001`` or ``HOST:6379``); None starts
            a local one on this machine (or joins the one this process already started).
        cache: whether each worker reads and writes the LM cache of its own
            ``METASKILL_HOME`` (on one machine: the shared SQLite file).
        inflight: batches queued on each worker at a time (2 keeps it busy while the
            driver commits the previous one).
        max_replacements: dead workers replaced per executor before the run stops.
        env: ``METASKILL_*`` settings the workers use (default: the driver's).
        fault: test-only fault injection: ``{slot: k}`` makes the first actor of worker
            ``slot`` exit (``os._exit``) when its k-th batch arrives.
    """

    model_config = ConfigDict(extra="forbid")

    workers: int = Field(2, ge=1)
    lm: str = "local"
    specs: list[str] | None = None
    threads: int | None = Field(None, ge=1)
    cpus: float = Field(0.0, ge=0)
    gpus: float = Field(0.0, ge=0)
    address: str | None = None
    cache: bool = True
    inflight: int = Field(2, ge=1)
    max_replacements: int = Field(8, ge=0)
    env: dict[str, str] | None = None
    fault: dict[int, int] = Field(default_factory=dict)

    def model_post_init(self, __context: Any) -> None:
        """``cpus`` defaults to ``threads`` (else 1)."""
        if not self.cpus:
            self.cpus = float(self.threads or 1)


class Worker:
    """One worker: an LM replica and the Solvers rebuilt on it (runs inside a Ray actor).

    Args:
        slot: the worker's slot in the pool (named in errors).
        config: the pool's :class:`WorkerConfig`.
        lm_factory: builds the LM instead of ``config.lm`` (tests: a scripted fake LM);
            pickled to the worker, so it must be importable there.
        exit_on_batch: exit the process when this batch (1-based) arrives (fault tests).
    """

    def __init__(self, slot: int, config: WorkerConfig,
                 lm_factory: Callable[[], Any] | None = None,
                 exit_on_batch: int | None = None) -> None:
        self.slot = slot
        self.config = config
        self.lm_factory = lm_factory
        self.exit_on_batch = exit_on_batch
        self.batches = 0
        self._lm: Any = None
        self._solvers: dict[str, Any] = {}
        self._tasks: dict[str, Any] = {}

    def lm(self) -> Any:
        """The LM replica, loaded on first use."""
        if self._lm is None:
            if self.lm_factory is not None:
                self._lm = self.lm_factory()
            else:
                from metaskill.core.settings import Settings
                from metaskill.lm import load_lm

                settings = Settings.from_env(self.config.env or os.environ,
                                             threads=self.config.threads)
                specs = self.config.specs or [self.config.lm]
                self._lm = load_lm(specs[self.slot % len(specs)], cache=self.config.cache,
                                   settings=settings)
            getattr(self._lm, "llm", None)  # llama.cpp: load the weights now
        return self._lm

    def ready(self) -> dict[str, Any]:
        """Load the LM; where the worker runs (host, pid) and what it holds."""
        import socket

        lm = self.lm()
        return {"slot": self.slot, "host": socket.gethostname(), "pid": os.getpid(),
                "lm": getattr(lm, "spec", None)}

    def _solver(self, key: str, box: list[Any]) -> Any:
        """The Solver whose JSON ``box`` holds (by object reference), rebuilt once."""
        import ray

        from metaskill.eval.solvers import load_solver

        if key not in self._solvers:
            if len(self._solvers) >= 8:  # an archive search sends many children
                self._solvers.pop(next(iter(self._solvers)))
            self._solvers[key] = load_solver(ray.get(box[0]), lm=self.lm())
        return self._solvers[key]

    def solve(self, solver: tuple[str, list[Any]], task: tuple[str, list[Any]],
              batch: list[Example], index: dict[str, int], guard: Any) -> list[Record]:
        """The records of one batch (see :func:`metaskill.eval.harness.solve_batch`).

        ``solver`` and ``task`` are ``(key, [object reference])``: the Solver JSON and the
        Task travel once through Ray's object store and are unwrapped once per key.
        """
        self.batches += 1
        if self.exit_on_batch is not None and self.batches >= self.exit_on_batch:
            os._exit(17)  # fault injection: the process dies, as on a lost machine
        import ray

        from metaskill.core.guard import use_guard
        from metaskill.eval.harness import solve_batch

        if task[0] not in self._tasks:
            self._tasks = {task[0]: ray.get(task[1][0])}
        with use_guard(guard):
            return solve_batch(self._solver(*solver), self._tasks[task[0]], batch, index)


class RayExecutor:
    """A pool of Ray workers that solves a Run's batches (an ``executor`` for evaluate).

    The pool starts on first use and lives until :meth:`close` (use it as a context
    manager), so the many evaluations of a search reuse the loaded models.

    Args:
        config: the pool (:class:`WorkerConfig`).
        lm_factory: builds each worker's LM instead of loading ``config.lm`` (tests).
        log: called with one line per notable event (a worker replaced).

    Attributes:
        replaced: workers replaced so far (after dying).
        started: the ``ready()`` answers of the workers started, replacements included.
    """

    def __init__(self, config: WorkerConfig, *, lm_factory: Callable[[], Any] | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.lm_factory = lm_factory
        self.log = log or (lambda line: None)
        self.replaced = 0
        self.started: list[dict[str, Any]] = []
        self._ray: Any = None
        self._connected_here = False
        self._actors: list[Any] = []
        self._faulted: set[int] = set()
        self._task: tuple[Any, str, Any] | None = None
        self._puts = 0
        self._actor_cls: Any = None

    # ---- the pool ----------------------------------------------------------------------
    def start(self) -> RayExecutor:
        """Connect to (or start) the cluster and start every worker (idempotent)."""
        if self._actors:
            return self
        ray = self._ray = require_ray()
        if not ray.is_initialized():
            if self.config.address:
                try:
                    ray.init(address=self.config.address, log_to_driver=False,
                             logging_level=logging.ERROR)
                except (ConnectionError, RuntimeError) as e:
                    raise RayUnavailableError(f"cannot reach the Ray cluster at "
                                              f"{self.config.address}: {e}") from None
            else:  # a fresh cluster of this machine, on loopback only
                ray.init(address="local", _node_ip_address="127.0.0.1",
                         num_cpus=max(1, int(self.config.workers * self.config.cpus + 0.999)),
                         include_dashboard=False, log_to_driver=False,
                         logging_level=logging.ERROR)
            self._connected_here = True
        self._actors = [self._new_actor(i) for i in range(self.config.workers)]
        self._wait_ready(list(range(self.config.workers)))
        hosts = sorted({w["host"] for w in self.started})
        lms = sorted({str(w["lm"]) for w in self.started})
        self.log(f"{self.config.workers} Ray workers ready ({', '.join(lms)} on "
                 f"{', '.join(hosts)})")
        return self

    def _new_actor(self, slot: int) -> Any:
        ray = self._ray
        fault = self.config.fault.get(slot) if slot not in self._faulted else None
        self._faulted.add(slot)
        env = self.config.env or {k: v for k, v in os.environ.items()
                                  if k.startswith("METASKILL_")}
        cfg = self.config.model_copy(update={"env": env})
        if self._actor_cls is None:
            self._actor_cls = ray.remote(num_cpus=self.config.cpus, num_gpus=self.config.gpus,
                                         max_restarts=0)(Worker)
        return self._actor_cls.remote(slot, cfg, self.lm_factory, fault)

    def _wait_ready(self, slots: list[int]) -> None:
        ray = self._ray
        for slot in slots:
            try:
                info = ray.get(self._actors[slot].ready.remote())
            except Exception as e:
                self.close()
                raise _cause(e, f"worker {slot} could not start") from None
            self.started.append(info)

    def _replace(self, slot: int, why: str) -> None:
        if self.replaced >= self.config.max_replacements:
            raise WorkersLostError(
                f"{self.replaced + 1} workers died (max_replacements="
                f"{self.config.max_replacements}); last: worker {slot}: {why}. The records "
                "committed so far are kept; resume the run.")
        self.replaced += 1
        self.log(f"worker {slot} died ({why}); replacing it and re-queueing its batches")
        self._ray.kill(self._actors[slot], no_restart=True)
        self._actors[slot] = self._new_actor(slot)
        self._wait_ready([slot])

    def close(self) -> None:
        """Stop the workers, and disconnect from Ray if this executor connected (which
        also stops a local cluster it started; a cluster at ``address`` keeps running)."""
        ray = self._ray
        if ray is None:
            return
        for a in self._actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:  # already gone
                pass
        self._actors, self._task = [], None
        if self._connected_here and ray.is_initialized():
            ray.shutdown()
        self._connected_here = False

    @property
    def width(self) -> int:
        """Batches in flight at once when every worker is busy."""
        return self.config.workers * self.config.inflight

    def __enter__(self) -> RayExecutor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the executor verb -------------------------------------------------------------
    def _task_ref(self, task: Any) -> tuple[str, Any]:
        """``(key, object reference)`` of ``task`` in the object store, put once per task
        object (the object is held, so its identity stays its own)."""
        if self._task is None or self._task[0] is not task:
            try:
                ref = self._ray.put(task)
            except Exception as e:
                raise MetaskillError(
                    f"task '{getattr(task, 'name', '?')}' cannot be sent to Ray workers "
                    f"({type(e).__name__}: {str(e)[:200]}); evaluate it with --workers 1."
                ) from None
            self._puts += 1
            self._task = (task, f"{getattr(task, 'name', '?')}#{self._puts}", ref)
        return self._task[1], self._task[2]

    def map_batches(self, solver: Any, task: Any, batches: list[list[Example]],
                    index: dict[str, int]) -> Iterator[tuple[list[Example], list[Record]]]:
        """Solve ``batches`` on the workers; yield ``(batch, records)`` as each finishes.

        Each batch is yielded exactly once. A dead worker is replaced and the batches it
        held are queued again; closing the iterator cancels what is in flight.
        """
        if not batches:
            return
        from metaskill.core.guard import active_guard

        self.start()
        ray = self._ray
        solver_json, guard = solver.to_json(), active_guard()
        solver_arg = (stable_hash(solver_json), [ray.put(solver_json)])
        task_key, task_ref = self._task_ref(task)
        queue: deque[int] = deque(range(len(batches)))
        pending: dict[Any, tuple[int, int, Any]] = {}  # ref -> (batch, slot, actor)
        done: set[int] = set()
        try:
            while len(done) < len(batches):
                for slot, actor in enumerate(self._actors):
                    held = sum(1 for _, s, _a in pending.values() if s == slot)
                    while queue and held < self.config.inflight:
                        b = queue.popleft()
                        ids = {e.id: index[e.id] for e in batches[b]}
                        ref = actor.solve.remote(solver_arg, (task_key, [task_ref]),
                                                 batches[b], ids, guard)
                        pending[ref] = (b, slot, actor)
                        held += 1
                ready, _ = ray.wait(list(pending), num_returns=1)
                b, slot, actor = pending.pop(ready[0])
                try:
                    records = ray.get(ready[0])
                except _lost_errors(ray) as e:
                    if self._actors[slot] is actor:  # not replaced yet
                        self._replace(slot, _one_line(e))
                    if b not in done:
                        queue.appendleft(b)
                    continue
                except Exception as e:
                    raise _cause(e, f"worker {slot}") from None
                if b in done:  # a batch answered twice is committed once
                    continue
                done.add(b)
                yield batches[b], records
        finally:
            for ref in pending:  # a stopped run: drop the batches still queued
                try:
                    ray.cancel(ref, force=False)
                except Exception:  # already finished, or its worker is gone
                    pass


def _lost_errors(ray: Any) -> tuple[type[BaseException], ...]:
    """The Ray errors that mean "the worker is gone", not "the batch failed"."""
    from ray import exceptions as rx

    names = ("RayActorError", "ActorDiedError", "ActorUnavailableError", "WorkerCrashedError",
             "NodeDiedError", "ObjectLostError", "OwnerDiedError")
    return tuple(getattr(rx, n) for n in names if hasattr(rx, n))


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:200] or type(e).__name__


def _cause(e: BaseException, where: str) -> BaseException:
    """The exception a worker raised (a MetaskillError stays one), else a one-line error."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        return cause
    return MetaskillError(f"{where}: {type(e).__name__}: {_one_line(e)}")


def make_executor(workers: int = 1, address: str | None = None, *, lm: str,
                  threads: int | None = None, cache: bool = True,
                  log: Callable[[str], None] | None = None) -> RayExecutor | None:
    """The executor the ``--workers`` / ``--ray-address`` options ask for, or None.

    None (evaluate in this process, Ray never imported) for one worker and no address.

    Raises:
        RayUnavailableError: Ray is not installed (the message says how to install it).

    Example:
        >>> make_executor(1, lm="local") is None
        True
    """
    if workers < 1:
        raise MetaskillError(f"--workers must be >= 1, got {workers}.")
    if workers == 1 and not address:
        return None
    require_ray()
    return RayExecutor(WorkerConfig(workers=workers, address=address, lm=lm, threads=threads,
                                    cache=cache), log=log)


__all__ = ["INSTALL_HINT", "RayExecutor", "RayUnavailableError", "Worker", "WorkerConfig",
           "WorkersLostError", "make_executor", "require_ray"]
