"""The evaluation harness: ``evaluate(solver, task, split) -> Run``.

It runs a Solver over a Task split in batches (one ``solver.solve`` call, hence one
``lm.complete`` call, per batch), scores every output with the Task's Verifier, and
commits each batch's records with the run's running totals to the run store in one
transaction. So:

* a process killed mid-run loses at most the batch in flight, and
  ``evaluate(..., resume=RUN_ID)`` finishes the run, skipping finished examples;
* an exception on one example (in the Solver or the Verifier) becomes a failed record
  with the error as its reason (score 0), and the run goes on; ``max_errors`` stops the
  run with :class:`EvaluationError` once more examples than that have failed, keeping
  everything recorded;
* ``limit`` evaluates a seeded random subset, the same one for the same seed.

Example:
    >>> from metaskill.core.types import Example
    >>> from metaskill.lm.fake import ScriptedLM
    >>> from metaskill.tasks.base import Task, Verdict, Verifier
    >>> from metaskill.eval.solvers import ZeroShot
    >>> class Exact(Verifier):
    ...     def verify(self, output, example):
    ...         ok = output == example.answer
    ...         return Verdict(score=float(ok), reason="ok" if ok else "wrong", parsed=output)
    >>> task = Task(name="capitals", verifier=Exact(), template="Capital of {input}?",
    ...             splits={"test": [Example(id="1", input="France", answer="Paris"),
    ...                              Example(id="2", input="Peru", answer="Lima")]})
    >>> run = evaluate(ZeroShot(ScriptedLM({"France": "Paris"})), task, progress=False)
    >>> run.accuracy, run.totals.n
    (0.5, 2)
"""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from metaskill.core.errors import (
    MetaskillError,
    ModelNotFoundError,
    ServerUnreachableError,
    TaskError,
)
from metaskill.core.guard import active_guard, check_examples
from metaskill.core.types import Example
from metaskill.eval.run import Record, Run, Totals
from metaskill.eval.solver import Attempt, Solver
from metaskill.eval.store import RunStore, new_run_id
from metaskill.tasks.sandbox import SandboxUnavailableError

# Errors about the environment, not about one example: they stop the run at once.
FATAL_ERRORS: tuple[type[BaseException], ...] = (
    ServerUnreachableError,
    ModelNotFoundError,
    SandboxUnavailableError,
    KeyboardInterrupt,
    MemoryError,
)


class EvaluationError(MetaskillError):
    """The run stopped (too many failed examples); what was recorded is kept."""


def select(examples: Sequence[Example], limit: int | None, seed: int = 0) -> list[Example]:
    """The examples a run covers: all of them, or a seeded random subset of ``limit``.

    The subset is ``random.Random(seed).sample`` of the indices, kept in split order, so
    the same split, limit and seed always give the same examples.

    Example:
        >>> exs = [Example(id=str(i), input=str(i)) for i in range(10)]
        >>> [e.id for e in select(exs, 3, seed=0)] == [e.id for e in select(exs, 3, seed=0)]
        True
    """
    exs = list(examples)
    if limit is None or limit >= len(exs):
        return exs
    if limit < 1:
        raise MetaskillError(f"limit must be >= 1, got {limit}.")
    idx = sorted(random.Random(seed).sample(range(len(exs)), limit))
    return [exs[i] for i in idx]


def _error_text(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _solve(solver: Solver, task: Any, batch: list[Example]) -> list[Attempt]:
    """Solve a batch; if the batch call raises, solve one by one to isolate the failure."""
    try:
        attempts = solver.solve(task, batch)
        if len(attempts) != len(batch):
            raise MetaskillError(
                f"solver '{solver.kind}' returned {len(attempts)} attempts for "
                f"{len(batch)} examples."
            )
        return attempts
    except FATAL_ERRORS:
        raise
    except Exception:
        if len(batch) == 1:
            e = batch[0]
            try:
                return solver.solve(task, [e])[:1]
            except FATAL_ERRORS:
                raise
            except Exception as err:
                return [Attempt(example_id=e.id, error="solver: " + _error_text(err),
                                meta={"traceback": traceback.format_exc(limit=-3)})]
        out: list[Attempt] = []
        for e in batch:
            out += _solve(solver, task, [e])
        return out


def _records(
    task: Any, batch: list[Example], attempts: list[Attempt], index: dict[str, int]
) -> list[Record]:
    """Verify attempts (in one ``verify_batch`` call where possible) into records."""
    ok = [i for i, a in enumerate(attempts) if a.error is None]
    verdicts: dict[int, Any] = {}
    errors: dict[int, str] = {}
    try:
        vs = task.verifier.verify_batch([attempts[i].output for i in ok], [batch[i] for i in ok])
        verdicts = dict(zip(ok, vs, strict=True))
    except FATAL_ERRORS:
        raise
    except Exception:
        for i in ok:  # isolate the example that crashes the verifier
            try:
                verdicts[i] = task.verifier.verify(attempts[i].output, batch[i])
            except FATAL_ERRORS:
                raise
            except Exception as err:
                errors[i] = "verifier: " + _error_text(err)
    out = []
    for i, (e, a) in enumerate(zip(batch, attempts, strict=True)):
        meta = dict(a.meta)
        raw = str(meta.pop("raw", a.output))
        score, parsed = 0.0, None
        error = a.error if a.error is not None else errors.get(i)
        if error is not None:
            reason = error
        else:
            v = verdicts[i]
            score, reason, parsed = float(v.score), v.reason, v.parsed
            if getattr(v, "meta", None):
                meta["verdict"] = v.meta
        # Every field is built here from validated parts (Attempt, Example, Verdict), so
        # the record is constructed without re-validation: this loop is the harness's
        # per-example cost (benchmarks/harness_overhead.py).
        out.append(Record.model_construct(
            index=index[e.id], example_id=e.id, prompt=a.prompt, raw=raw, output=a.output,
            parsed=parsed, reference=e.answer, score=score, reason=reason,
            skills=list(e.skills), usage=a.usage, latency_s=float(a.latency_s), error=error,
            meta=meta,
        ))
    return out


class Executor(Protocol):
    """Where a run's batches are solved and verified (the default: here, one by one).

    ``map_batches`` yields ``(batch, records)`` for every batch, in any order, each batch
    exactly once; the harness commits each to the store as it arrives. Closing the
    iterator early (a stopped run) cancels what is still in flight. An optional ``width``
    attribute says how many batches it solves at once (time-boxed slices use it).
    :class:`metaskill.distributed.executor.RayExecutor` solves them on Ray workers.
    """

    def map_batches(self, solver: Solver, task: Any, batches: list[list[Example]],
                    index: dict[str, int]) -> Iterator[tuple[list[Example], list[Record]]]:
        """Solve and verify ``batches``; ``index`` maps example id -> record index."""
        ...


def solve_batch(solver: Solver, task: Any, batch: list[Example],
                index: dict[str, int]) -> list[Record]:
    """The records of one batch: solve it, verify the outputs (what a worker runs)."""
    return _records(task, batch, _solve(solver, task, batch), index)


def _local(solver: Solver, task: Any, batches: list[list[Example]],
           index: dict[str, int]) -> Iterator[tuple[list[Example], list[Record]]]:
    for batch in batches:
        yield batch, solve_batch(solver, task, batch, index)


class _Progress:
    """A rich progress bar with ETA and running accuracy (or nothing)."""

    def __init__(self, enabled: bool, description: str, total: int, done: int) -> None:
        self.bar: Any = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("acc {task.fields[acc]}"),
            TextColumn("err {task.fields[err]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self.bar.start()
        self.id = self.bar.add_task(description, total=total, completed=done, acc="-", err=0)

    def update(self, done: int, totals: Totals) -> None:
        if self.bar is not None:
            acc = f"{totals.score / totals.n:.3f}" if totals.n else "-"
            self.bar.update(self.id, completed=done, acc=acc, err=totals.errors)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def evaluate(
    solver: Solver,
    task: Any,
    split: str = "test",
    *,
    limit: int | None = None,
    seed: int = 0,
    store: RunStore | None = None,
    resume: str | None = None,
    batch_size: int = 16,
    max_errors: int | None = None,
    progress: bool = True,
    run_id: str | None = None,
    max_new: int | None = None,
    examples: Sequence[Example] | None = None,
    label: str | None = None,
    executor: Executor | None = None,
) -> Run:
    """Evaluate ``solver`` on ``task``'s ``split`` and return the :class:`Run`.

    Args:
        solver: the Solver (its JSON is stored with the run).
        task: the Task; its Verifier scores each output.
        split: the split to evaluate.
        limit: evaluate a seeded random subset of this many examples.
        seed: seed of the subset (the Solver's own seeds are in its config).
        store: where records are committed batch by batch; None keeps the run in memory.
        resume: id of a stored run to finish: its selection, task and solver must match;
            finished examples are skipped.
        batch_size: examples per ``solver.solve`` call and per store transaction.
        max_errors: stop with :class:`EvaluationError` once more examples than this
            have failed (None: never stop).
        progress: show a rich progress bar on stderr.
        run_id: id of a new run (default: a fresh time-based id).
        max_new: evaluate at most this many not-yet-finished examples in this call, then
            return the run with status ``interrupted`` (resume it later); for work done
            in time-boxed slices.
        examples: score these examples instead of the split's (methods scoring the dev
            examples they were given); ``split`` then only labels the run (default
            ``"given"`` when left at ``"test"``).
        label: what the progress bar names (default ``TASK/SPLIT SOLVER_KIND``); name the
            candidate, e.g. a trained model whose Solver kind is still ``zero-shot``.
        executor: where batches are solved (None: here, in order); e.g. a
            :class:`metaskill.distributed.executor.RayExecutor` fans them over Ray
            workers, while the records are still committed here, through ``store``.

    Returns:
        The Run with all its records (those of a resumed run included).

    Raises:
        TaskError: the split is missing or empty, or example ids are not unique.
        EvaluationError: more than ``max_errors`` failed examples.
        MetaskillError: ``resume`` without a store, or a resumed run that does not match.
    """
    if batch_size < 1:
        raise MetaskillError(f"batch_size must be >= 1, got {batch_size}.")
    if max_errors is not None and max_errors < 0:
        raise MetaskillError(f"max_errors must be >= 0, got {max_errors}.")
    if examples is not None:
        split = "given" if split == "test" else split
        examples = list(examples)
        if not examples:
            raise TaskError(f"no examples given to evaluate on task '{task.name}'.")
    else:
        examples = task.examples(split)
    guard = active_guard()
    if guard is not None and split == "test":
        raise guard.leak("evaluate", f"a run on the 'test' split of task '{task.name}'")
    check_examples(examples, where="evaluate")
    by_id: dict[str, Example] = {}
    for e in examples:
        if e.id in by_id:
            raise TaskError(f"task '{task.name}' split '{split}' has duplicate example id "
                            f"'{e.id}'; example ids must be unique.")
        by_id[e.id] = e
    solver_json = solver.to_json()
    model = getattr(solver.lm, "spec", None)

    if resume is not None:
        if store is None:
            raise MetaskillError("resume needs a run store (store=RunStore(...)).")
        run = store.get(resume)
        _check_resumable(run, task, split, solver_json)
        missing = [i for i in run.selection if i not in by_id]
        if missing:
            raise MetaskillError(
                f"run {run.id} covers example '{missing[0]}', which split '{split}' of task "
                f"'{task.name}' no longer has; start a new run."
            )
        selection = [by_id[i] for i in run.selection]
        store.claim(run.id)  # refuses a run another live process is evaluating
        run = store.get(run.id)
        done = {r.example_id for r in run.records}
        totals = store.recount(run.id)  # from the records themselves
        records = list(run.records)
        run.status = "running"
    else:
        selection = select(examples, limit, seed)
        run = Run(
            id=run_id or new_run_id(), task=task.name,
            task_version=str(getattr(task, "version", "1")), split=split, solver=solver_json,
            model=model, selection=[e.id for e in selection], seed=seed, limit=limit,
        )
        if store is not None:
            store.create(run)
        done = set()
        totals = Totals()
        records = []

    index = {e.id: i for i, e in enumerate(selection)}
    todo = [e for e in selection if e.id not in done]
    if max_new is not None:
        if max_new < 1:
            raise MetaskillError(f"max_new must be >= 1, got {max_new}.")
        todo = todo[:max_new]
    remaining = len(selection) - len(done) - len(todo)
    bar = _Progress(progress, label or f"{task.name}/{split} {solver.kind}", len(selection),
                    len(selection) - len(todo))
    n_done = len(selection) - len(todo)
    batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    stream = (_local if executor is None else executor.map_batches)(
        solver, task, batches, index)
    first = True
    try:
        t0 = time.perf_counter()
        for batch, recs in stream:
            totals = totals.add(recs, wall_s=time.perf_counter() - t0)
            if store is not None:
                store.save_batch(run.id, recs, totals)
            records += recs
            n_done += len(batch)
            bar.update(n_done, totals)
            if first and len(recs) > 1 and _systematic(recs):
                note = f"every example of the first batch failed: {recs[0].error}"
                run.status, run.note = "failed", note
                if store is not None:
                    store.set_status(run.id, "failed", note)
                raise EvaluationError(f"run {run.id} stopped: {note}")
            if max_errors is not None and totals.errors > max_errors:
                last = next(r for r in reversed(recs) if r.error is not None)
                note = (f"stopped after {totals.errors} failed examples (max_errors="
                        f"{max_errors}); last: {last.example_id}: {last.error}")
                run.status, run.note = "failed", note
                if store is not None:
                    store.set_status(run.id, "failed", note)
                raise EvaluationError(
                    f"run {run.id} {note}. {totals.n} records kept; fix the cause and "
                    f"resume with --resume {run.id}."
                )
            first = False
            t0 = time.perf_counter()
    except KeyboardInterrupt:
        run.status = "interrupted"
        if store is not None:
            store.set_status(run.id, "interrupted", "interrupted by the user")
        raise
    except EvaluationError:
        raise
    except BaseException as e:
        if store is not None:
            store.set_status(run.id, "failed", _error_text(e))
        raise
    finally:
        close = getattr(stream, "close", None)
        if callable(close):
            close()  # an executor cancels the batches still in flight
        bar.close()

    run.status, run.note = ("done", "") if remaining == 0 else (
        "interrupted", f"{remaining} examples left (max_new={max_new}); resume to finish")
    if store is not None:
        store.set_status(run.id, run.status, run.note)
    run.totals = totals
    run.records = sorted(records, key=lambda r: r.index)
    return run


def _systematic(recs: list[Record]) -> bool:
    """True when every record failed in the solver with one error type (a setup problem)."""
    if any(r.error is None or not r.error.startswith("solver:") for r in recs):
        return False
    return len({str(r.error).split(":")[1] for r in recs}) == 1


def _check_resumable(run: Run, task: Any, split: str, solver_json: dict[str, Any]) -> None:
    version = str(getattr(task, "version", "1"))
    if (run.task, run.task_version, run.split) != (task.name, version, split):
        raise MetaskillError(
            f"run {run.id} evaluated {run.task} v{run.task_version} split '{run.split}', "
            f"not {task.name} v{version} split '{split}'; resume it with the same task."
        )
    a = {k: run.solver.get(k) for k in ("kind", "state")}
    b = {k: solver_json.get(k) for k in ("kind", "state")}
    if a != b:
        raise MetaskillError(
            f"run {run.id} was made with a different solver ({run.solver.get('kind')}); "
            "resume it with the same solver (e.g. `metaskill eval --resume RUN` alone)."
        )
    if run.model and solver_json.get("model") and run.model != solver_json.get("model"):
        raise MetaskillError(
            f"run {run.id} used model '{run.model}', not '{solver_json.get('model')}'."
        )


__all__ = ["FATAL_ERRORS", "EvaluationError", "Executor", "evaluate", "select", "solve_batch"]


def evaluate_stored(solver: Solver, task: Any, split: str, *, store: RunStore, name: str,
                    limit: int | None = None, seed: int = 0, progress: bool = True,
                    deadline: float | None = None, batch_size: int = 16,
                    executor: Executor | None = None) -> Run:
    """The stored run of ``solver`` on ``split`` if it is done; else resume it or start it.

    The run id is ``name`` plus a hash of everything the result depends on (the Solver's
    JSON, the LM's identity, the task version, split, limit and seed), so a changed input
    starts a new run instead of reusing a stale one, and a killed job loses at most one
    batch. With ``deadline`` (a ``time.monotonic()`` value) it works batch by batch and
    returns the run ``interrupted`` once the deadline has passed (resume it later).
    ``executor`` is passed to :func:`evaluate` (e.g. Ray workers).

    Example:
        >>> run = evaluate_stored(solver, task, "dev", store=store,
        ...                       name="sst2/zero-shot/dev")  # doctest: +SKIP
    """
    from metaskill.core.hashing import stable_hash

    key = stable_hash({"solver": solver.to_json(), "lm": getattr(solver.lm, "identity", None),
                       "task": [task.name, getattr(task, "version", "1")], "split": split,
                       "limit": limit, "seed": seed})
    run_id = f"{name}-{key[:8]}"
    try:
        run = store.get(run_id, records=False)
        found = run.id == run_id  # store.get also accepts unique prefixes
    except MetaskillError:
        found = False
    if found and run.status == "done":
        return store.get(run_id)
    # with a deadline, work in slices of one batch per worker (an executor's ``width``)
    step = None if deadline is None else batch_size * int(getattr(executor, "width", 1))
    args: dict[str, Any] = {"resume": run_id} if found else {"run_id": run_id}
    while True:
        run = evaluate(solver, task, split, limit=limit, seed=seed, store=store,
                       progress=progress, batch_size=batch_size, max_new=step, label=name,
                       executor=executor, **args)
        if run.status != "interrupted" or deadline is None or time.monotonic() >= deadline:
            return run
        args = {"resume": run_id}
