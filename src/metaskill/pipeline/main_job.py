"""The main job: measure a model, find its missing skills, make it better, prove it.

``metaskill run`` runs these stages for each task, each one resumable from ``--out``:

1. **split** -- load the task; fix the train pool, the dev subset and the test subset
   (seeded; the ids are stored).
2. **baseline** -- evaluate the zero-shot Solver on dev and test.
3. **skills** -- discover the task's skills into a SkillBook (the task's own labels, a
   teacher's metacognitive labels, or embedding clusters), then build the Missing-Skill
   Profile of the baseline on dev.
4. **adapt** -- fit every inference-time method chain on train, score it on dev, and
   select the best on dev only (never on test). Candidates over the token budget are
   not eligible.
5. **train** (``--train``) -- not wired in yet: ``--train`` stops with a clear error;
   ``metaskill train`` / ``metaskill evolve`` train on their own.
6. **test** -- evaluate every candidate on test.
7. **report** -- one self-contained HTML file plus a terminal summary.

A stage's result is stored as JSON keyed by a hash of its inputs
(:class:`~metaskill.pipeline.stages.StageRunner`); evaluations are stored in the run
store (``OUT/runs.sqlite``) batch by batch and resumed, so a killed run continues where it
stopped and loses at most one batch.

Example:
    >>> cfg = RunConfig(tasks=["sst2"], model="fake", methods=["knn_demos"],
    ...                 n_dev=4, n_test=4, embedder="hash:64", progress=False)
    >>> cfg.method_chains()
    [['knn_demos']]
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from metaskill.core.errors import MetaskillError
from metaskill.pipeline.stages import StageRunner

SCHEMA_VERSION = 1
DEFAULT_TASKS = ["sst2", "trec"]
DEFAULT_METHODS = ["knn_demos", "raml"]


class RunConfig(BaseModel):
    """Settings of one main-job run.

    Attributes:
        tasks: task names (``metaskill tasks ls``) or task YAML paths.
        model: the model spec (``metaskill models``).
        teacher: an LM spec for skill labelling and missing-skill naming; None uses the
            tasks' own labels or embedding clusters, and the examples' labels for the
            Profile.
        methods: candidate method chains; a chain joins names with ``+``
            (``knn_demos+self_refine``).
        train: also LoRA-train the model (needs the ``train`` extra).
        train_steps: optimiser steps of the training stage.
        budget_tokens: most prompt tokens per input a candidate may spend on average (on
            dev) to be eligible; also offered to methods that allocate tokens (dynaicl).
        time_budget_s: wall-clock budget; when spent, remaining candidates are skipped
            (and listed as skipped in the report).
        n_dev: dev examples used for profiling and selection.
        n_test: test examples per task.
        k: demonstrations per input for demo methods.
        seed: seed of the subsets and demo draws.
        embedder: embedder spec for retrieval and skills (``minilm`` or ``hash:DIM``).
        out: the run folder.
        progress: show progress bars.
    """

    model_config = ConfigDict(extra="forbid")

    tasks: list[str] = Field(default_factory=lambda: list(DEFAULT_TASKS))
    model: str = "local"
    teacher: str | None = None
    methods: list[str] = Field(default_factory=lambda: list(DEFAULT_METHODS))
    train: bool = False
    train_steps: int = Field(default=120, ge=1)
    budget_tokens: int | None = Field(default=None, ge=1)
    time_budget_s: float | None = Field(default=None, gt=0)
    n_dev: int = Field(default=40, ge=2)
    n_test: int = Field(default=100, ge=2)
    k: int = Field(default=4, ge=0)
    seed: int = 0
    embedder: str = "minilm"
    out: Path = Path("metaskill-run")
    progress: bool = True

    @field_validator("tasks", "methods")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("must name at least one")
        return v

    def method_chains(self) -> list[list[str]]:
        """The candidate chains, each a list of method names."""
        return [[m.strip() for m in c.split("+") if m.strip()] for c in self.methods]

    def identity(self) -> dict[str, Any]:
        """What the stages depend on (the output folder and progress flag excluded)."""
        return self.model_dump(mode="json", exclude={"out", "progress"})


class Candidate(BaseModel):
    """One Solver considered by the main job, with its dev and test results."""

    name: str
    methods: list[str]
    solver: dict[str, Any]
    dev_accuracy: float | None = None
    dev_tokens_per_example: float | None = None
    test_run: str | None = None
    fit: dict[str, Any] = Field(default_factory=dict)
    eligible: bool = True
    note: str = ""


class TaskResult(BaseModel):
    """Everything the main job found for one task."""

    task: str
    n_train: int
    n_dev: int
    n_test: int
    skills: list[dict[str, Any]] = Field(default_factory=list)
    profile: dict[str, Any] | None = None
    candidates: list[Candidate] = Field(default_factory=list)
    selected: str | None = None
    skill_map: dict[str, list[str]] = Field(default_factory=dict)
    training: dict[str, Any] | None = None


class JobResult(BaseModel):
    """The main job's result: per-task results, timings, budgets, report path."""

    schema_version: int = SCHEMA_VERSION
    config: dict[str, Any]
    tasks: list[TaskResult]
    seconds: float
    stage_log: list[dict[str, Any]]
    skipped: list[str] = Field(default_factory=list)
    report: str | None = None


class _Clock:
    """Tracks the time budget."""

    def __init__(self, budget_s: float | None) -> None:
        self.t0 = time.perf_counter()
        self.budget_s = budget_s

    def spent(self) -> float:
        return time.perf_counter() - self.t0

    def over(self) -> bool:
        return self.budget_s is not None and self.spent() > self.budget_s


def _evaluate(solver: Any, task: Any, split: str, limit: int, seed: int, store: Any,
              run_id: str, progress: bool) -> Any:
    """Evaluate with a fixed run id, resuming the stored run if it exists."""
    from metaskill.eval.harness import evaluate

    try:
        run = store.get(run_id, records=False)
        if run.id != run_id:  # store.get also accepts unique prefixes; we need this exact run
            raise MetaskillError(run_id)
    except MetaskillError:
        return evaluate(solver, task, split, limit=limit, seed=seed, store=store,
                        run_id=run_id, progress=progress)
    if run.status == "done":
        return store.get(run_id)
    return evaluate(solver, task, split, limit=limit, seed=seed, store=store,
                    resume=run_id, progress=progress)


def run_job(config: RunConfig, *, lm: Any = None, console: Any = None) -> JobResult:
    """Run the main job end to end and write its report.

    Args:
        config: the run's settings.
        lm: an already-loaded LM (default: ``load_lm(config.model)`` with the cache).
        console: a rich Console for the terminal summary (None: stderr).

    Returns:
        The :class:`JobResult` (also saved as ``OUT/result.json``).
    """
    from rich.console import Console

    from metaskill.eval.store import RunStore
    from metaskill.lm.spec import load_lm

    console = console or Console(stderr=True)
    if config.train:
        # The training stage is not wired into the main job yet; training works on its own.
        raise MetaskillError(
            "--train is not available in `metaskill run` yet; train with "
            "`metaskill train --task T --model SPEC` and evaluate the result with "
            "`metaskill eval`."
        )
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(config.model_dump_json(indent=1))
    stages = StageRunner(out)
    store = RunStore(out / "runs.sqlite")
    clock = _Clock(config.time_budget_s)
    lm = lm or load_lm(config.model)
    teacher = load_lm(config.teacher) if config.teacher else None
    skipped: list[str] = []
    results: list[TaskResult] = []
    for name in config.tasks:
        console.rule(f"[bold]{name}")
        results.append(_run_task(name, config, lm, teacher, stages, store, clock, skipped,
                                 console))
    job = JobResult(config=config.model_dump(mode="json"), tasks=results,
                    seconds=clock.spent(), stage_log=stages.log, skipped=skipped)
    from metaskill.pipeline.report import write_job_report

    job.report = str(write_job_report(job, store, out / "report.html"))
    (out / "result.json").write_text(job.model_dump_json(indent=1))
    from metaskill.pipeline.report import print_summary

    print_summary(job, store, console)
    return job


def _load_task(name: str) -> Any:
    from metaskill.tasks import get_task

    if name.endswith((".yaml", ".yml")):
        from metaskill.tasks.taskfile import load_task_file

        return load_task_file(name)
    return get_task(name)


def _run_task(name: str, cfg: RunConfig, lm: Any, teacher: Any, stages: StageRunner,
              store: Any, clock: _Clock, skipped: list[str], console: Any) -> TaskResult:
    from metaskill.eval.harness import select
    from metaskill.eval.solvers import ZeroShot, load_solver
    from metaskill.methods.compose import MethodResources, fit_chain

    task = _load_task(name)
    ident = {"config": cfg.identity(), "task": name, "version": task.version,
             "model": getattr(lm, "identity", cfg.model)}
    train = list(task.examples("train"))
    dev = select(task.examples("dev"), cfg.n_dev, cfg.seed)
    test_n = min(cfg.n_test, len(task.examples("test")))
    res = TaskResult(task=name, n_train=len(train), n_dev=len(dev), n_test=test_n)

    # 2. baseline on dev and test
    base = ZeroShot.for_task(lm, task)
    dev_run = _evaluate(base, task, "dev", cfg.n_dev, cfg.seed, store, f"{name}/zero-shot/dev",
                        cfg.progress)
    res.candidates.append(Candidate(
        name="zero-shot", methods=[], solver=base.to_json(), dev_accuracy=dev_run.accuracy,
        dev_tokens_per_example=dev_run.tokens_per_example))

    # 3. skills and the Missing-Skill Profile
    book_path = stages.root / f"skills-{name}.sqlite"
    resources = MethodResources(embedder_spec=cfg.embedder, teacher=teacher,
                                progress=cfg.progress)
    embedder = resources.get_embedder  # loaded once, shared by skills and methods

    def discover_skills() -> dict[str, Any]:
        from metaskill.skills.book import SkillBook
        from metaskill.skills.discover import discover

        book_path.unlink(missing_ok=True)
        book = SkillBook(book_path, embedder=embedder())
        discover(task, book, teacher=teacher, split="train")
        test_ex = task.examples("test")
        skill_map = {e.id: list(e.skills) or [s.name for s, _ in book.nearest_skills(e.text, 1)]
                     for e in [*dev, *test_ex]}
        return {"skills": [s.model_dump(mode="json") for s in book.skills()],
                "skill_map": skill_map}

    found = stages.run(f"{name}.skills", {**ident, "stage": "skills"}, discover_skills)
    res.skills, res.skill_map = found["skills"], found["skill_map"]

    def profile() -> dict[str, Any]:
        from metaskill.skills.book import SkillBook
        from metaskill.skills.profile import ProfileConfig, build_profile

        book = SkillBook(book_path, embedder=embedder())
        p = build_profile(base, task, book=book, teacher=teacher, run=dev_run,
                          config=ProfileConfig(split="dev", progress=cfg.progress))
        return p.model_dump(mode="json")

    res.profile = stages.run(f"{name}.profile", {**ident, "stage": "profile"}, profile)

    # 4. adapt: fit each chain on train, score on dev
    for chain in cfg.method_chains():
        cname = "+".join(chain)
        if clock.over():
            skipped.append(f"{name}: {cname} (time budget spent)")
            continue

        def fit(chain: list[str] = chain) -> dict[str, Any]:
            from metaskill.skills.book import SkillBook

            if any(m in ("skill_demos", "adaptmi") for m in chain):
                resources.skillbook = SkillBook(book_path, embedder=embedder())
            result = fit_chain(base, task, train, dev, chain,
                               budget_tokens=cfg.budget_tokens,
                               options={"k": cfg.k, "seed": cfg.seed}, resources=resources)
            return {"solver": result.solver.to_json(),
                    "reports": [r.model_dump(mode="json") for r in result.reports]}

        try:
            fitted = stages.run(f"{name}.fit.{cname}", {**ident, "stage": "fit",
                                                        "chain": chain}, fit)
        except MetaskillError as e:
            skipped.append(f"{name}: {cname} ({e})")
            console.print(f"[yellow]skipped {cname}:[/] {e}", highlight=False)
            continue
        solver = load_solver(fitted["solver"], lm=lm)
        run = _evaluate(solver, task, "dev", cfg.n_dev, cfg.seed, store,
                        f"{name}/{cname}/dev", cfg.progress)
        cand = Candidate(name=cname, methods=chain, solver=fitted["solver"],
                         dev_accuracy=run.accuracy,
                         dev_tokens_per_example=run.tokens_per_example,
                         fit={"reports": fitted["reports"]})
        if cfg.budget_tokens is not None and run.tokens_per_example > cfg.budget_tokens:
            cand.eligible = False
            cand.note = (f"over budget: {run.tokens_per_example:.0f} tokens/input on dev > "
                         f"{cfg.budget_tokens}")
        res.candidates.append(cand)

    eligible = [c for c in res.candidates if c.eligible and c.dev_accuracy is not None]
    best = max(eligible, key=lambda c: (c.dev_accuracy, -(c.dev_tokens_per_example or 0)))
    res.selected = best.name

    # 6. every candidate on test
    for cand in res.candidates:
        if clock.over() and cand.name not in ("zero-shot", res.selected):
            skipped.append(f"{name}: test of {cand.name} (time budget spent)")
            continue
        solver = base if cand.name == "zero-shot" else load_solver(cand.solver, lm=lm)
        run = _evaluate(solver, task, "test", test_n, cfg.seed, store,
                        f"{name}/{cand.name}/test", cfg.progress)
        cand.test_run = run.id
    return res
