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
5. **train** -- for the tasks chosen for training (``--train`` for all of them; by default
   the default suite's string-skill task, ``word_reversal``): the ``stat`` Method (a
   STAT-Sel training set from the Missing-Skill Profile, uniform SFT when it names no
   missing skill; ``sft`` with ``--train-method sft``) through the same chain as every
   method, scoring a dev subset every few steps for the learning curve. The trained
   Solver (zero-shot prompt, base + adapter; its JSON's model spec carries the adapter)
   is one more candidate. Training stops at its deadline; the adapter is kept either way.
6. **evolve** (``--evolve``, off by default) -- grow an archive of Solvers from the
   zero-shot one in the manner of the Darwin Gödel Machine
   (:func:`metaskill.evolve.archive.evolve`: parents chosen by dev score and novelty,
   structural and self-modifying mutations, staged dev evaluation) within its own budget
   of LM calls, tokens, seconds and children, in ``OUT/evolve-TASK/`` (the archive,
   resumed where it stopped, and its page ``archive.html``). Its best node on dev is one
   more candidate (``evolve``), eligible when it beats zero-shot on dev as the chains must.
7. **test** -- evaluate every candidate on test.
8. **report** -- one self-contained HTML file plus a terminal summary (with the archive's
   tree and a link to its page).

One function per stage (:func:`stage_baseline` ... :func:`stage_report`) over a
:class:`TaskContext`. With a time budget the job first measures the machine and plans
every stage's size to end within it (:mod:`metaskill.pipeline.plan`); the budget is a hard
limit, and what is unfinished is reported as such.

A stage's result is stored as JSON keyed by a hash of its inputs
(:class:`~metaskill.core.stages.StageRunner`); evaluations are stored in the run
store (``OUT/runs.sqlite``) batch by batch and resumed
(:func:`~metaskill.eval.harness.evaluate_stored`), so a killed run continues where it
stopped and loses at most one batch.

Example:
    >>> cfg = RunConfig(tasks=["sst2"], model="fake", methods=["knn_demos"],
    ...                 n_dev=4, n_test=4, embedder="hash:64", progress=False)
    >>> cfg.method_chains()
    [['knn_demos']]
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from metaskill.core.errors import MetaskillError
from metaskill.core.stages import StageRunner
from metaskill.eval.harness import evaluate_stored

SCHEMA_VERSION = 1
# The default suite: a classification task where demonstrations help a 135M model a lot
# (trec: 4% -> 58%) and a string skill it lacks and learns by a few minutes of LoRA
# (word_reversal: 0% -> 80%). sst2 is left out of the default to keep `make run` within
# 15 minutes on 2 cores (with it the run measured 16.5 min); `-t sst2 -t trec` runs it.
DEFAULT_TASKS = ["trec", "word_reversal"]
DEFAULT_METHODS = ["knn_demos", "raml"]
# Tasks of the default suite that are LoRA-trained even without --train, and that get no
# inference-time method unless --methods names some: demonstrations do not teach the
# 135M model to reverse a list (knn_demos: 0.0% on its test set), LoRA does.
DEFAULT_TRAIN_TASKS = ("word_reversal",)
#: RunConfig fields of the archive search stage.
EVOLVE_FIELDS = ("evolve", "evolve_calls", "evolve_tokens", "evolve_seconds",
                 "evolve_children", "evolve_mutator", "evolve_selection", "evolve_mutations")


class RunConfig(BaseModel):
    """Settings of one main-job run.

    Attributes:
        tasks: task names (``metaskill tasks ls``) or task YAML paths.
        model: the model spec (``metaskill models``).
        teacher: an LM spec for skill labelling and missing-skill naming; None uses the
            tasks' own labels or embedding clusters, and the examples' labels for the
            Profile.
        methods: candidate method chains for every task; a chain joins names with ``+``
            (``knn_demos+self_refine``). None: ``knn_demos`` and ``raml`` for every task
            but the default LoRA-trained ones (see :meth:`method_chains`).
        train: True LoRA-trains every task, False none (training needs the ``train``
            extra); None trains ``train_tasks``.
        train_tasks: the tasks to LoRA-train when ``train`` is None; None means those of
            :data:`DEFAULT_TRAIN_TASKS` that are in ``tasks``.
        train_method: ``stat-sel`` (examples of the Profile's missing skills, weighted by
            how often each is missing) or ``sft`` (uniform sample of the train pool).
        train_steps: optimiser steps of the training stage.
        train_batch: examples per step.
        train_rank: LoRA rank (alpha = 2 x rank).
        train_lr: learning rate.
        train_eval_every: score the dev subset for the learning curve every this many
            steps (and after the last).
        train_curve_n: dev examples scored at each point of the learning curve.
        budget_tokens: most prompt tokens per input a candidate may spend on average (on
            dev) to be eligible; also offered to methods that allocate tokens (dynaicl).
        time_budget_s: wall-clock budget, a hard limit: the job measures the machine,
            sizes every stage to end within it (the plan is printed and reported), and
            stops work that would run past it (listed as unfinished in the report).
        threads: CPU threads for llama.cpp and torch (None: ``METASKILL_THREADS``, else
            all cores; see :class:`~metaskill.core.settings.Settings`).
        keep_best: a candidate whose Solver does not beat zero-shot on dev (the
            paired-bootstrap 95% interval of the gain holds zero or lies below it) is not
            eligible for selection; it is still tested and reported, with the reason.
        n_dev: dev examples used for profiling and selection.
        n_test: test examples per task.
        k: demonstrations per input for demo methods.
        seed: seed of the subsets and demo draws.
        embedder: embedder spec for retrieval and skills (``minilm`` or ``hash:DIM``).
        evolve: run the archive search stage (off by default: it does not fit the
            15-minute default run).
        evolve_calls: the archive's budget of LM calls per task (None: no limit).
        evolve_tokens: its budget of tokens per task (None: no limit).
        evolve_seconds: its budget of wall seconds per task (None: no limit but the time
            budget's).
        evolve_children: the most children per task.
        evolve_mutator: LM spec of the mutator that proposes self-modifications (None: the
            model itself).
        evolve_selection: parent selection: ``dgm``, ``greedy`` or ``random``.
        evolve_mutations: the mutation kinds to draw from (None: all registered defaults,
            :class:`~metaskill.evolve.archive.EvolveConfig`).
        out: the run folder.
        progress: show progress bars.
    """

    model_config = ConfigDict(extra="forbid")

    tasks: list[str] = Field(default_factory=lambda: list(DEFAULT_TASKS))
    model: str = "local"
    teacher: str | None = None
    methods: list[str] | None = None
    train: bool | None = None
    train_tasks: list[str] | None = None
    train_method: Literal["stat-sel", "sft"] = "stat-sel"
    train_steps: int = Field(default=60, ge=1)
    train_batch: int = Field(default=8, ge=1)
    train_rank: int = Field(default=16, ge=1)
    train_lr: float = Field(default=1e-3, gt=0, le=1)
    train_eval_every: int = Field(default=20, ge=1)
    train_curve_n: int = Field(default=20, ge=2)
    budget_tokens: int | None = Field(default=None, ge=1)
    time_budget_s: float | None = Field(default=None, gt=0)
    threads: int | None = Field(default=None, ge=1)
    keep_best: bool = True
    n_dev: int = Field(default=40, ge=2)
    n_test: int = Field(default=100, ge=2)
    k: int = Field(default=4, ge=0)
    seed: int = 0
    embedder: str = "minilm"
    evolve: bool = False
    evolve_calls: int | None = Field(default=300, ge=1)
    evolve_tokens: int | None = Field(default=None, ge=1)
    evolve_seconds: float | None = Field(default=None, gt=0)
    evolve_children: int = Field(default=10, ge=0)
    evolve_mutator: str | None = None
    evolve_selection: Literal["dgm", "greedy", "random"] = "dgm"
    evolve_mutations: list[str] | None = None
    out: Path = Path("metaskill-run")
    progress: bool = True

    @field_validator("tasks", "methods", "evolve_mutations")
    @classmethod
    def _non_empty(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("must name at least one")
        return v

    @model_validator(mode="after")
    def _train_tasks_in_suite(self) -> RunConfig:
        extra = [t for t in self.train_tasks or [] if t not in self.tasks]
        if extra:
            raise ValueError(f"train_tasks {extra} are not among the tasks {self.tasks}; "
                             "add them with --task")
        return self

    def method_chains(self, task: str | None = None) -> list[list[str]]:
        """The candidate chains for ``task`` (for any task when None), each a list of
        method names.

        ``methods`` when given applies to every task; when None, every task gets
        :data:`DEFAULT_METHODS` except the default LoRA-trained tasks
        (:data:`DEFAULT_TRAIN_TASKS`), which get none.
        """
        if self.methods is not None:
            chains = self.methods
        elif task is not None and task in DEFAULT_TRAIN_TASKS:
            chains = []
        else:
            chains = DEFAULT_METHODS
        return [[m.strip() for m in c.split("+") if m.strip()] for c in chains]

    def trains(self, task: str) -> bool:
        """Whether the training stage runs for ``task``."""
        if self.train is not None:
            return self.train
        chosen = self.train_tasks
        if chosen is None:
            chosen = [t for t in self.tasks if t in DEFAULT_TRAIN_TASKS]
        return task in chosen

    def identity(self) -> dict[str, Any]:
        """What the stages depend on (the output folder, progress flag, threads and the
        time budget, which the plan turns into sizes, excluded; the archive search's
        settings too: only its own stage reads them, see :meth:`evolve_settings`)."""
        return self.model_dump(mode="json", exclude={"out", "progress", "threads",
                                                     "time_budget_s", *EVOLVE_FIELDS})

    def evolve_settings(self) -> dict[str, Any]:
        """The archive search's settings (``evolve_*``)."""
        return self.model_dump(mode="json", include=set(EVOLVE_FIELDS))


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
    evolve: dict[str, Any] | None = None


class JobResult(BaseModel):
    """The main job's result: per-task results, timings, budgets, report path."""

    schema_version: int = SCHEMA_VERSION
    config: dict[str, Any]
    tasks: list[TaskResult]
    seconds: float
    stage_log: list[dict[str, Any]]
    skipped: list[str] = Field(default_factory=list)
    plan: dict[str, Any] | None = None
    report: str | None = None


@dataclass
class JobContext:
    """What every stage of the job shares: settings, models, stores, clock, plan."""

    config: RunConfig
    lm: Any
    teacher: Any
    resources: Any  # MethodResources: one embedder for the whole job
    stages: StageRunner
    store: Any
    clock: Clock
    console: Any
    threads: int | None = None
    skipped: list[str] = field(default_factory=list)
    sizes: Any = None  # the Plan's sizes (pipeline.plan.Sizes), None without a budget
    executor: Any = None  # where evaluations run (None: here; Ray workers: --workers N)

    def skip(self, what: str, why: str) -> None:
        """Record work that was not done (listed in the report)."""
        self.skipped.append(f"{what} ({why})")
        self.console.print(f"[yellow]skipped[/] {what}: {why}", highlight=False)


@dataclass
class TaskContext:
    """One task's data, baseline and results, passed from stage to stage."""

    job: JobContext
    name: str
    task: Any
    train: list[Any]
    dev: list[Any]
    test_n: int
    result: TaskResult
    ident: dict[str, Any]
    base: Any = None
    dev_run: Any = None

    @property
    def book_path(self) -> Path:
        """The task's SkillBook file."""
        return self.job.stages.root / f"skills-{self.name}.sqlite"

    def evaluate(self, solver: Any, label: str, split: str, n: int) -> Any:
        """The stored (or resumed, or new) run of ``solver`` on ``split``."""
        cfg = self.job.config
        run = evaluate_stored(solver, self.task, split, store=self.job.store,
                              name=f"{self.name}/{label}/{split}", limit=n, seed=cfg.seed,
                              progress=cfg.progress, deadline=self.job.clock.deadline(),
                              executor=self.job.executor)
        if run.status == "interrupted":
            self.job.skip(f"{self.name}: {split} of {label}",
                          f"time budget spent after {len(run.records)} of {n} examples")
        return run


#: Seconds of the budget kept for the report (HTML, plots) after the last stage.
REPORT_RESERVE_S = 15.0


class Clock:
    """Tracks the time budget, a hard limit; the stages end :data:`REPORT_RESERVE_S`
    before it so that the report is written in time."""

    def __init__(self, budget_s: float | None) -> None:
        self.t0 = time.monotonic()
        self.budget_s = None if budget_s is None else max(0.0, budget_s - REPORT_RESERVE_S)

    def spent(self) -> float:
        """Seconds since the job started."""
        return time.monotonic() - self.t0

    def left(self) -> float:
        """Seconds left (infinite without a budget)."""
        return float("inf") if self.budget_s is None else self.budget_s - self.spent()

    def over(self) -> bool:
        """Whether the budget is spent."""
        return self.left() <= 0

    def deadline(self, reserve_s: float = 0.0) -> float | None:
        """A ``time.monotonic()`` deadline ``reserve_s`` before the end (None: no budget)."""
        return None if self.budget_s is None else self.t0 + self.budget_s - reserve_s


def run_job(config: RunConfig, *, lm: Any = None, console: Any = None,
            executor: Any = None) -> JobResult:
    """Run the main job end to end and write its report.

    Args:
        config: the run's settings.
        lm: an already-loaded LM (default: ``load_lm(config.model)`` with the cache).
        console: a rich Console for the terminal summary (None: stderr).
        executor: where evaluations (and the archive search's scoring) run; None: here
            (e.g. :class:`metaskill.distributed.executor.RayExecutor`: Ray workers).

    Returns:
        The :class:`JobResult`, also saved as ``OUT/result.json``; the report is
        ``OUT/report.html`` and the final table, as Markdown, ``OUT/summary.md``.
    """
    job = _start(config, lm, console)
    job.executor = job.resources.executor = executor  # evaluations and methods' dev probes
    tasks = [_load_task(name) for name in config.tasks]
    plan = None
    if config.time_budget_s is not None:
        from metaskill.pipeline.plan import make_plan

        plan = make_plan(job, tasks)
        job.sizes = plan.sizes
    results = []
    for name, task in zip(config.tasks, tasks, strict=True):
        job.console.rule(f"[bold]{name}")
        t = stage_split(job, name, task)
        for stage in (stage_baseline, stage_skills, stage_profile, stage_adapt, stage_train,
                      stage_evolve, stage_test):
            if job.clock.over():
                job.skip(f"{name}: {stage.__name__.removeprefix('stage_')} and later stages",
                         "time budget spent")
                break
            stage(t)
        results.append(t.result)
    planned = {**plan.model_dump(mode="json"), "lines": plan.lines()} if plan else None
    result = JobResult(config=config.model_dump(mode="json"), tasks=results,
                       seconds=job.clock.spent(), stage_log=job.stages.log,
                       skipped=job.skipped, plan=planned)
    return stage_report(job, result)


def _start(config: RunConfig, lm: Any, console: Any) -> JobContext:
    """Folders, stores, the LM (with ``threads``), the teacher and the shared embedder."""
    from rich.console import Console

    from metaskill.core.settings import Settings
    from metaskill.eval.store import RunStore
    from metaskill.lm.spec import load_lm
    from metaskill.methods.base import MethodResources

    console = console or Console(stderr=True)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(config.model_dump_json(indent=1))
    settings = Settings.from_env(threads=config.threads)
    threads = settings.threads
    lm = lm or load_lm(config.model, settings=settings)
    teacher = load_lm(config.teacher, settings=settings) if config.teacher else None
    resources = MethodResources(embedder_spec=config.embedder, teacher=teacher,
                                progress=config.progress, work_dir=out / "adapters",
                                settings=settings,
                                log=lambda line: console.print(line, highlight=False))
    return JobContext(config=config, lm=lm, teacher=teacher, resources=resources,
                      stages=StageRunner(out), store=RunStore(out / "runs.sqlite"),
                      clock=Clock(config.time_budget_s), console=console, threads=threads)


def _load_task(name: str) -> Any:
    """A registered task, or a task YAML file (``get_task`` reads both)."""
    from metaskill.tasks import get_task

    return get_task(name)


# ---- 1. split ------------------------------------------------------------------------------
def stage_split(job: JobContext, name: str, task: Any) -> TaskContext:
    """Fix the task's train pool, dev subset and test size (the plan's sizes if any)."""
    from metaskill.eval.harness import select

    cfg = job.config
    n_dev = job.sizes.n_dev if job.sizes else cfg.n_dev
    n_test = job.sizes.n_test if job.sizes else cfg.n_test
    train = list(task.examples("train"))
    dev = select(task.examples("dev"), n_dev, cfg.seed)
    test_n = min(n_test, len(task.examples("test")))
    ident = {"config": cfg.identity(), "task": name, "version": task.version,
             "model": getattr(job.lm, "identity", cfg.model), "n_dev": len(dev)}
    res = TaskResult(task=name, n_train=len(train), n_dev=len(dev), n_test=test_n)
    return TaskContext(job=job, name=name, task=task, train=train, dev=dev, test_n=test_n,
                       result=res, ident=ident)


# ---- 2. baseline ---------------------------------------------------------------------------
def stage_baseline(t: TaskContext) -> None:
    """The zero-shot Solver, scored on dev."""
    from metaskill.eval.solvers import ZeroShot

    t.base = ZeroShot.for_task(t.job.lm, t.task)
    t.dev_run = t.evaluate(t.base, "zero-shot", "dev", len(t.dev))
    t.result.candidates.append(Candidate(
        name="zero-shot", methods=[], solver=t.base.to_json(),
        dev_accuracy=t.dev_run.accuracy, dev_tokens_per_example=t.dev_run.tokens_per_example))


# ---- 3. skills and the Missing-Skill Profile -------------------------------------------------
def stage_skills(t: TaskContext) -> None:
    """Discover the task's skills from train into a SkillBook; map dev/test inputs to them."""
    job = t.job

    def discover_skills() -> dict[str, Any]:
        from metaskill.skills.book import SkillBook
        from metaskill.skills.discover import discover

        t.book_path.unlink(missing_ok=True)
        book = SkillBook(t.book_path, embedder=job.resources.get_embedder())
        discover(t.task, book, teacher=job.teacher, split="train")
        inputs = [*t.dev, *t.task.examples("test")]  # inputs only: never their answers
        skill_map = {e.id: list(e.skills) or [s.name for s, _ in book.nearest_skills(e.text, 1)]
                     for e in inputs}
        return {"skills": [s.model_dump(mode="json") for s in book.skills()],
                "skill_map": skill_map}

    found = job.stages.run(f"{t.name}.skills", {**t.ident, "stage": "skills"}, discover_skills)
    t.result.skills, t.result.skill_map = found["skills"], found["skill_map"]


def stage_profile(t: TaskContext) -> None:
    """The baseline's Missing-Skill Profile on dev."""
    job = t.job

    def profile() -> dict[str, Any]:
        from metaskill.skills.book import SkillBook
        from metaskill.skills.profile import ProfileConfig, build_profile

        book = SkillBook(t.book_path, embedder=job.resources.get_embedder())
        p = build_profile(t.base, t.task, book=book, teacher=job.teacher, run=t.dev_run,
                          config=ProfileConfig(split="dev", progress=job.config.progress))
        return p.model_dump(mode="json")

    t.result.profile = job.stages.run(f"{t.name}.profile", {**t.ident, "stage": "profile"},
                                      profile)


# ---- 4. adapt --------------------------------------------------------------------------------
def stage_adapt(t: TaskContext) -> None:
    """Fit every inference-time chain on train, select on dev (never test)."""
    chains = t.job.config.method_chains(t.name)
    if t.job.sizes is not None:
        chains = chains[: t.job.sizes.chains]
    for chain in chains:
        _fit_candidate(t, chain, "+".join(chain), {"k": t.job.config.k})


def _fit_candidate(t: TaskContext, chain: list[Any], cname: str,
                   options: dict[str, Any], *, reserve_s: float = 0.0,
                   label: str | None = None) -> Candidate | None:
    """Fit ``chain`` (a stage: resumable), score it on dev and add it as a candidate.

    What cannot run (bad input, a missing extra, no time) is skipped with the reason,
    named ``label`` (default: the candidate's name).
    """
    from metaskill.eval.solvers import load_solver
    from metaskill.methods.compose import fit_chain

    job, cfg = t.job, t.job.config
    what = f"{t.name}: {label or cname}"
    if job.clock.left() <= reserve_s:
        job.skip(what, "time budget spent")
        return None

    def fit() -> dict[str, Any]:
        from metaskill.skills.book import SkillBook

        res = job.resources
        names = [c if isinstance(c, str) else c[0] for c in chain]
        res.skillbook = (SkillBook(t.book_path, embedder=res.get_embedder())
                         if any(m in ("skill_demos", "adaptmi") for m in names) else None)
        res.profile = t.result.profile
        res.deadline = job.clock.deadline(reserve_s)
        result = fit_chain(t.base, t.task, t.train, t.dev, chain,
                           budget_tokens=cfg.budget_tokens,
                           options={**options, "seed": cfg.seed}, resources=res,
                           check_input=cfg.keep_best)
        check = result.check
        return {"solver": result.solver.to_json(),
                "reports": [r.model_dump(mode="json") for r in result.reports],
                "check": check.summary(cname) if check is not None else None,
                "beats": check.beats if check is not None else None}

    try:
        fitted = job.stages.run(f"{t.name}.fit.{cname}", {**t.ident, "stage": "fit",
                                                          "chain": chain}, fit)
    except MetaskillError as e:
        job.skip(what, str(e))
        return None
    except ImportError as e:
        job.skip(what, f"needs an extra that is not installed: {e}")
        return None
    note = fitted.get("check") or ""
    if fitted.get("beats") is False:
        note = note.split("; returned")[0] + "; not eligible for selection (keep-best)."
    if note:
        job.console.print(note, highlight=False)
    solver = load_solver(fitted["solver"], lm=job.lm)
    run = t.evaluate(solver, cname, "dev", len(t.dev))
    if solver.lm is not job.lm:  # base + adapter, loaded for this evaluation
        solver.lm.close()
    cand = Candidate(name=cname, methods=[c if isinstance(c, str) else c[0] for c in chain],
                     solver=fitted["solver"], dev_accuracy=run.accuracy,
                     dev_tokens_per_example=run.tokens_per_example,
                     fit={"reports": fitted["reports"], "beats_zero_shot": fitted.get("beats")},
                     note=note)
    if cfg.keep_best and fitted.get("beats") is False:
        cand.eligible = False  # keep-best: it does not beat zero-shot on dev
    if cfg.budget_tokens is not None and run.tokens_per_example > cfg.budget_tokens:
        cand.eligible = False
        cand.note = (f"over budget: {run.tokens_per_example:.0f} tokens/input on dev > "
                     f"{cfg.budget_tokens}")
    t.result.candidates.append(cand)
    return cand


# ---- 5. train --------------------------------------------------------------------------------
def stage_train(t: TaskContext) -> None:
    """LoRA-train the task (the ``stat`` or ``sft`` Method through the chain)."""
    cfg = t.job.config
    if not cfg.trains(t.name):
        return
    sizes = t.job.sizes
    steps = sizes.train_steps if sizes else cfg.train_steps
    opts = {"rank": cfg.train_rank, "alpha": 2.0 * cfg.train_rank,
            "learning_rate": cfg.train_lr, "steps": steps, "batch_size": cfg.train_batch,
            "eval_every": sizes.train_eval_every if sizes else cfg.train_eval_every,
            "curve_n": sizes.train_curve_n if sizes else cfg.train_curve_n,
            "threads": t.job.threads}
    if cfg.train_method == "stat-sel":
        chain: list[Any] = [("stat", {**opts, "variant": "sel"})]
    else:
        chain = [("sft", {**opts, "n_examples": steps * cfg.train_batch})]
    reserve = sizes.reserve_after_train_s.get(t.name, 0.0) if sizes else 0.0
    t.train = _with_book_skills(t)  # STAT selects training examples by skill
    cand = _fit_candidate(t, chain, f"lora:{cfg.train_method}", {}, reserve_s=reserve,
                          label="LoRA training")
    if cand is None:
        return
    notes = cand.fit["reports"][0]["notes"]
    method = notes.get("method", cfg.train_method)
    note = notes.get("data", "")
    if notes.get("stopped_early"):
        note += f"; stopped after {notes['steps']} of {notes['planned_steps']} steps (time budget)"
    t.result.training = {**notes, "method": method, "note": note,
                         "before": notes["curve"][0]["accuracy"] if notes.get("curve") else None,
                         "after": notes["curve"][-1]["accuracy"] if notes.get("curve") else None}
    cand.note = (cand.note + " " if cand.note else "") + (
        f"base + LoRA adapter ({notes['steps']} steps)")


def _with_book_skills(t: TaskContext) -> list[Any]:
    """The train pool, each unlabelled example given the skills discovery gave it."""
    from metaskill.skills.book import SkillBook

    if all(e.skills for e in t.train) or not t.book_path.exists():
        return t.train
    book = SkillBook(t.book_path, embedder=t.job.resources.get_embedder())
    labels = book.all_labels()
    return [e if e.skills or not labels.get(e.id) else
            e.model_copy(update={"skills": list(labels[e.id])}) for e in t.train]


# ---- 6. evolve -------------------------------------------------------------------------------
def evolve_folder(root: Path, task: str) -> Path:
    """The folder of a task's archive under the run folder (a safe name from ``task``).

    Example:
        >>> evolve_folder(Path("run"), "tasks/my task.yaml").as_posix()
        'run/evolve-tasks_my_task.yaml'
    """
    import re

    return root / ("evolve-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", task).strip("._"))


def stage_evolve(t: TaskContext) -> None:
    """Grow an archive of Solvers from zero-shot (``--evolve``); its best node on dev is
    the ``evolve`` candidate.

    The archive (``OUT/evolve-TASK/archive.sqlite``) resumes itself: a rerun continues a
    search that was killed and makes nothing new once its budget is spent; the LM cache
    answers what the lost child had asked. With a time budget the search also stops when
    the plan's reserve for what follows is reached.
    """
    import dataclasses

    from metaskill.evolve.archive import ARCHIVE_FILE, Archive, EvolveConfig, evolve
    from metaskill.evolve.report import write_archive_html

    job, cfg = t.job, t.job.config
    if not cfg.evolve:
        return
    sizes = job.sizes
    reserve = sizes.reserve_after_evolve_s.get(t.name, 0.0) if sizes else 0.0
    if job.clock.left() <= reserve:
        job.skip(f"{t.name}: archive search", "time budget spent")
        return
    folder = evolve_folder(job.stages.root, t.name)
    before = len(Archive(folder)) if (folder / ARCHIVE_FILE).is_file() else 0
    wall0 = Archive(folder).spend().wall_s if before else 0.0
    seconds = cfg.evolve_seconds
    if job.clock.budget_s is not None:  # the time budget is a hard limit
        left = wall0 + max(0.0, job.clock.left() - reserve)
        seconds = left if seconds is None else min(seconds, left)
    kinds = {"mutations": tuple(cfg.evolve_mutations)} if cfg.evolve_mutations else {}
    config = EvolveConfig(selection=cfg.evolve_selection, max_children=cfg.evolve_children,
                          max_calls=cfg.evolve_calls, max_tokens=cfg.evolve_tokens,
                          max_seconds=seconds, seed=cfg.seed, **kinds)
    mutator = _load_mutator(job)
    resources = dataclasses.replace(job.resources, skillbook=None, profile=t.result.profile,
                                    deadline=job.clock.deadline(reserve))
    t0 = time.perf_counter()
    say = job.console.print
    try:
        archive = evolve(t.base, t.task, t.train, t.dev, config, out=folder,
                         resources=resources, mutator=mutator, executor=job.executor,
                         log=lambda line: say(f"  {line}", highlight=False, markup=False))
    except MetaskillError as e:
        job.skip(f"{t.name}: archive search", str(e))
        return
    finally:
        if mutator is not None and mutator is not job.lm:
            mutator.close()
    nodes = archive.nodes()
    job.stages.log.append({"stage": f"{t.name}.evolve", "cached": len(nodes) == before,
                           "seconds": time.perf_counter() - t0})
    page = write_archive_html(archive, folder / "archive.html",
                              title=f"metaskill archive: {t.name}")
    t.result.evolve = _archive_summary(archive, nodes, page, job.stages.root)
    if "max_seconds" in t.result.evolve["spend"]["stopped"] and job.clock.budget_s is not None:
        job.skip(f"{t.name}: more of the archive search", "time budget spent")
    _evolve_candidate(t, archive)


def _load_mutator(job: JobContext) -> Any:
    """The mutator LM (None: the model itself)."""
    spec = job.config.evolve_mutator
    if not spec or spec == job.config.model:
        return None
    from metaskill.core.settings import Settings
    from metaskill.lm.spec import load_lm

    return load_lm(spec, settings=Settings.from_env(threads=job.threads))


def _archive_summary(archive: Any, nodes: list[Any], page: Path, root: Path) -> dict[str, Any]:
    """What the report and ``result.json`` keep of a task's archive."""
    from metaskill.eval.stats import paired_gain

    best = archive.best_node()
    ids = [i for i in nodes[0].per_example if i in best.per_example]
    gain, lo, hi = paired_gain([best.per_example[i] for i in ids],
                               [nodes[0].per_example[i] for i in ids])
    counts = {s: sum(n.status == s for n in nodes[1:]) for s in ("valid", "pruned", "invalid")}
    return {"folder": str(archive.path.parent), "page": str(page),
            "page_href": page.relative_to(root).as_posix(), "nodes": len(nodes),
            "children": counts, "root_dev": nodes[0].score, "best": best.id,
            "best_dev": best.score, "best_n": best.n_scored,
            "recipe": best.recipe.describe(), "solver": best.solver,
            "chain": [s.method for s in best.recipe.chain],
            "dev_gain": [gain, lo, hi], "spend": archive.spend().model_dump(mode="json")}


def _evolve_candidate(t: TaskContext, archive: Any) -> None:
    """The archive's best node as the ``evolve`` candidate (none when it is the root:
    zero-shot is a candidate already)."""
    from metaskill.eval.solvers import load_solver

    cfg, ev = t.job.config, t.result.evolve or {}
    if ev.get("best") == 0:
        t.job.console.print(f"{t.name}: the archive found no Solver better than zero-shot "
                            "on dev", highlight=False)
        return
    solver = load_solver(ev["solver"], lm=t.job.lm)
    run = t.evaluate(solver, "evolve", "dev", len(t.dev))
    gain, lo, hi = ev["dev_gain"]
    beats = lo > 0
    note = (f"archive node {ev['best']} of {ev['nodes']}: {ev['recipe']}; dev gain over "
            f"zero-shot {100 * gain:+.1f} pts [{100 * lo:+.1f}, {100 * hi:+.1f}]")
    cand = Candidate(name="evolve", methods=list(ev["chain"]), solver=ev["solver"],
                     dev_accuracy=run.accuracy, dev_tokens_per_example=run.tokens_per_example,
                     fit={"archive": ev["folder"], "beats_zero_shot": beats}, note=note)
    if cfg.keep_best and not beats:
        cand.eligible = False
        cand.note += "; not eligible for selection (keep-best)"
    if cfg.budget_tokens is not None and run.tokens_per_example > cfg.budget_tokens:
        cand.eligible = False
        cand.note = (f"over budget: {run.tokens_per_example:.0f} tokens/input on dev > "
                     f"{cfg.budget_tokens}")
    t.result.candidates.append(cand)


# ---- 7. test ---------------------------------------------------------------------------------
def stage_test(t: TaskContext) -> None:
    """Select on dev, then evaluate every candidate on test (the selected one first)."""
    from metaskill.eval.solvers import load_solver

    job, res = t.job, t.result
    eligible = [c for c in res.candidates if c.eligible and c.dev_accuracy is not None]
    if not eligible:
        return
    best = max(eligible, key=lambda c: (c.dev_accuracy, -(c.dev_tokens_per_example or 0)))
    res.selected = best.name
    order = sorted(res.candidates, key=lambda c: (c.name != best.name, c.name != "zero-shot"))
    for cand in order:
        if job.clock.over():
            job.skip(f"{t.name}: test of {cand.name}", "time budget spent")
            continue
        solver = t.base if cand.name == "zero-shot" else load_solver(cand.solver, lm=job.lm)
        run = t.evaluate(solver, cand.name, "test", t.test_n)
        if solver.lm is not job.lm:
            solver.lm.close()
        cand.test_run = run.id


# ---- 8. report -------------------------------------------------------------------------------
def stage_report(job: JobContext, result: JobResult) -> JobResult:
    """The HTML report, ``result.json``, ``summary.md`` and the terminal summary."""
    from metaskill.pipeline.report import print_summary, summary_markdown, write_job_report

    out = job.stages.root
    result.report = str(write_job_report(result, job.store, out / "report.html"))
    (out / "result.json").write_text(result.model_dump_json(indent=1))
    (out / "summary.md").write_text(summary_markdown(result, job.store))
    print_summary(result, job.store, job.console)
    return result
