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
   the default suite's string-skill task, ``word_reversal``): build a STAT-Sel training
   set from the Missing-Skill Profile (uniform SFT when it names no missing skill), train
   a LoRA adapter, scoring a dev subset every few steps for the learning curve, and add
   the trained model (zero-shot prompt, base + adapter) as one more candidate. Training
   stops early when the time budget is spent; the adapter is kept either way.
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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from metaskill.core.errors import MetaskillError
from metaskill.pipeline.stages import StageRunner

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
    n_dev: int = Field(default=40, ge=2)
    n_test: int = Field(default=100, ge=2)
    k: int = Field(default=4, ge=0)
    seed: int = 0
    embedder: str = "minilm"
    out: Path = Path("metaskill-run")
    progress: bool = True

    @field_validator("tasks", "methods")
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
    adapter: str | None = None
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
    """Evaluate with a fixed run id, resuming the stored run if it exists.

    The id is ``run_id`` plus a hash of everything the result depends on (the Solver's
    JSON, the LM's identity, the task version, split, limit and seed), so a changed input
    starts a new run instead of reusing a stale one.
    """
    from metaskill.eval.harness import evaluate
    from metaskill.lm.cache import stable_hash

    key = stable_hash({"solver": solver.to_json(),
                       "lm": getattr(solver.lm, "identity", None),
                       "task": [task.name, task.version], "split": split, "limit": limit,
                       "seed": seed})
    run_id = f"{run_id}-{key[:8]}"

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
        The :class:`JobResult`, also saved as ``OUT/result.json``; the report is
        ``OUT/report.html`` and the final table, as Markdown, ``OUT/summary.md``.
    """
    from rich.console import Console

    from metaskill.eval.store import RunStore
    from metaskill.lm.spec import load_lm

    console = console or Console(stderr=True)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(config.model_dump_json(indent=1))
    stages = StageRunner(out)
    store = RunStore(out / "runs.sqlite")
    clock = _Clock(config.time_budget_s)
    lm = lm or load_lm(config.model)
    teacher = load_lm(config.teacher) if config.teacher else None
    from metaskill.methods.compose import MethodResources

    # one embedder for the whole job (MiniLM loads once, on first use)
    shared = MethodResources(embedder_spec=config.embedder, teacher=teacher,
                             progress=config.progress)
    skipped: list[str] = []
    results: list[TaskResult] = []
    for name in config.tasks:
        console.rule(f"[bold]{name}")
        results.append(_run_task(name, config, lm, shared, stages, store, clock, skipped,
                                 console))
    job = JobResult(config=config.model_dump(mode="json"), tasks=results,
                    seconds=clock.spent(), stage_log=stages.log, skipped=skipped)
    from metaskill.pipeline.report import print_summary, summary_markdown, write_job_report

    job.report = str(write_job_report(job, store, out / "report.html"))
    (out / "result.json").write_text(job.model_dump_json(indent=1))
    (out / "summary.md").write_text(summary_markdown(job, store))

    print_summary(job, store, console)
    return job


def _load_task(name: str) -> Any:
    from metaskill.tasks import get_task

    if name.endswith((".yaml", ".yml")):
        from metaskill.tasks.taskfile import load_task_file

        return load_task_file(name)
    return get_task(name)


def _run_task(name: str, cfg: RunConfig, lm: Any, shared: Any, stages: StageRunner,
              store: Any, clock: _Clock, skipped: list[str], console: Any) -> TaskResult:
    from metaskill.eval.harness import select
    from metaskill.eval.solvers import ZeroShot, load_solver
    from metaskill.methods.compose import MethodResources, fit_chain

    teacher = shared.teacher

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
    embedder = shared.get_embedder  # loaded once per job, shared by skills and methods

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
    for chain in cfg.method_chains(name):
        cname = "+".join(chain)
        if clock.over():
            skipped.append(f"{name}: {cname} (time budget spent)")
            continue

        def fit(chain: list[str] = chain) -> dict[str, Any]:
            from metaskill.skills.book import SkillBook

            resources.embedder = embedder()
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

    # 5. train: STAT-Sel (or uniform) LoRA SFT, with a learning curve on dev
    if cfg.trains(name):
        trained = _train_task(task, name, cfg, lm, base, train, res, stages, ident, clock,
                              skipped, console)
        if trained is not None:
            res.training = trained
            from metaskill.methods.adapters import lm_with_adapter

            tlm = lm_with_adapter(lm, trained["adapter"])
            cname = f"lora:{trained['method']}"
            run = _evaluate(base.with_lm(tlm), task, "dev", cfg.n_dev, cfg.seed, store,
                            f"{name}/{cname}/dev", cfg.progress)
            _close(tlm)
            res.candidates.append(Candidate(
                name=cname, methods=[f"lora-{trained['method']}"], solver=base.to_json(),
                adapter=trained["adapter"], dev_accuracy=run.accuracy,
                dev_tokens_per_example=run.tokens_per_example,
                fit={"training": {k: v for k, v in trained.items() if k != "curve"}},
                note=f"base + LoRA adapter ({trained['steps']} steps)"))

    eligible = [c for c in res.candidates if c.eligible and c.dev_accuracy is not None]
    best = max(eligible, key=lambda c: (c.dev_accuracy, -(c.dev_tokens_per_example or 0)))
    res.selected = best.name

    # 6. every candidate on test
    for cand in res.candidates:
        if clock.over() and cand.name not in ("zero-shot", res.selected):
            skipped.append(f"{name}: test of {cand.name} (time budget spent)")
            continue
        cand_lm = lm
        if cand.adapter:
            from metaskill.methods.adapters import lm_with_adapter

            cand_lm = lm_with_adapter(lm, cand.adapter)
        solver = base if cand.name == "zero-shot" else load_solver(cand.solver, lm=cand_lm)
        run = _evaluate(solver, task, "test", test_n, cfg.seed, store,
                        f"{name}/{cand.name}/test", cfg.progress)
        if cand_lm is not lm:
            _close(cand_lm)
        cand.test_run = run.id
    return res


def _close(lm: Any) -> None:
    close = getattr(lm, "close", None)
    if callable(close):
        close()


def _train_task(task: Any, name: str, cfg: RunConfig, lm: Any, base: Any, train: list[Any],
                res: TaskResult, stages: StageRunner, ident: dict[str, Any], clock: _Clock,
                skipped: list[str], console: Any) -> dict[str, Any] | None:
    """The training stage of one task: data, LoRA training with a dev learning curve.

    Returns the stage's JSON (adapter folder, curve, cost), or None when training could
    not run (the reason is added to ``skipped``).
    """
    if clock.over():
        skipped.append(f"{name}: LoRA training (time budget spent)")
        return None
    adapter_dir = stages.root / "adapters" / name
    params = {k: getattr(cfg, k) for k in ("train_method", "train_steps", "train_batch",
                                          "train_rank", "train_lr", "train_eval_every",
                                          "train_curve_n")}

    def train_stage() -> dict[str, Any]:
        from metaskill.eval.harness import evaluate
        from metaskill.methods.adapters import base_model_path, checkpoint_lm, train_for_lm
        from metaskill.methods.sft import SFTConfig, pairs_from_examples
        from metaskill.methods.stat import missing_pairs, stat_sel, uniform_sample
        from metaskill.skills.profile import Profile

        base_model_path(lm)  # fails now, before any work, for an LM without weights
        answered = [e for e in train if e.answer is not None]
        n_target = min(len(answered), cfg.train_steps * cfg.train_batch)
        profile = Profile.model_validate(res.profile) if res.profile else None
        pairs = missing_pairs(profile) if profile is not None else []
        method = cfg.train_method
        note = ""
        if method == "stat-sel" and pairs:
            per_pair = max(1, -(-n_target // len(pairs)))
            data = stat_sel(profile, train, per_pair=per_pair, seed=cfg.seed,
                            limit=n_target)
            note = (f"STAT-Sel: {len(data)} training examples for {len(pairs)} (difficult "
                    "dev example, missing skill) pairs")
        else:
            if method == "stat-sel":
                note = "the profile names no missing skill, so uniform SFT: "
            method = "sft"
            data = uniform_sample(train, n_target, seed=cfg.seed)
            note += f"uniform SFT on {len(data)} training examples"
        sft_cfg = SFTConfig(rank=cfg.train_rank, alpha=2.0 * cfg.train_rank,
                            learning_rate=cfg.train_lr, steps=cfg.train_steps,
                            batch_size=cfg.train_batch, seed=cfg.seed)

        def curve_point(solver: Any) -> float:
            run = evaluate(solver, task, "dev", limit=cfg.train_curve_n, seed=cfg.seed,
                           progress=False)
            return run.accuracy

        curve: list[dict[str, Any]] = [{"step": 0, "accuracy": curve_point(base),
                                        "train_s": 0.0}]
        console.print(f"LoRA training ({method}, {cfg.train_steps} steps); dev curve on "
                      f"{cfg.train_curve_n} examples: step 0 {curve[0]['accuracy']:.0%}",
                      highlight=False)

        def on_step(s: Any) -> bool:
            stop = clock.over()
            if s.step % cfg.train_eval_every and s.step < s.total_steps and not stop:
                return False
            ck = adapter_dir.parent / f".{name}-ckpt"
            ck_lm = checkpoint_lm(lm, s.model, ck)
            try:
                acc = curve_point(base.with_lm(ck_lm))
            finally:
                _close(ck_lm)
            curve.append({"step": s.step, "accuracy": acc, "loss": round(s.loss, 4),
                          "train_s": round(s.elapsed_s, 1)})
            console.print(f"  step {s.step}: loss {s.loss:.3f}, dev {acc:.0%}",
                          highlight=False)
            return stop

        result = train_for_lm(lm, pairs_from_examples(task, data), sft_cfg, adapter_dir,
                              progress=cfg.progress, on_step=on_step)
        stopped = result.steps < cfg.train_steps
        if stopped:
            note += f"; stopped after {result.steps} of {cfg.train_steps} steps (time budget)"
        skills: dict[str, int] = {}
        for e in data:
            for sk in e.skills:
                skills[sk] = skills.get(sk, 0) + 1
        return {"adapter": str(adapter_dir), "method": method, "note": note, "curve": curve,
                "losses": [round(x, 4) for x in result.losses],
                "steps": result.steps, "seconds": round(result.seconds, 1),
                "seconds_per_step": round(result.seconds_per_step, 2),
                "peak_rss_mb": round(result.peak_rss_mb), "n_examples": len(data),
                "data_skills": skills, "before": curve[0]["accuracy"],
                "after": curve[-1]["accuracy"], "curve_n": cfg.train_curve_n}

    try:
        return stages.run(f"{name}.train", {**ident, "stage": "train", **params},
                          train_stage)
    except ImportError as e:
        msg = (f"LoRA training needs the train extra (pip install 'metaskill[train]'): "
               f"{e}")
    except MetaskillError as e:
        msg = str(e)
    skipped.append(f"{name}: LoRA training ({msg})")
    console.print(f"[yellow]skipped LoRA training:[/] {msg}", highlight=False)
    return None
