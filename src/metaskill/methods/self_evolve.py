"""SELF self-evolution rounds: answer, self-feedback and refinement, curation, LoRA training.

Paper: Lu, Zhong, Huang, Wang, Zhu, Mi, Wang, Wang, Zeng, Shang, Jiang, Liu (2023). "SELF:
Self-Evolution with Language Feedback".

Algorithm (rounds r = 1..R, model M_0 = the base model):

1. M_{r-1} answers ``n_train`` training inputs, ``samples`` answers each (temperature
   sampling; the reference answers are not shown to it).
2. With ``refine``, M_{r-1} writes feedback on each answer (the critique prompt of
   :mod:`metaskill.methods.self_refine`, ending in a verdict) and, when its verdict is
   WRONG, a refined answer, which joins the candidates.
3. Curation: where an input has a reference answer, keep one candidate the task's Verifier
   accepts; otherwise keep the majority answer when at least ``min_agree`` candidates
   agree.
4. LoRA fine-tuning on everything curated so far (rounds accumulate), continuing from the
   previous round's adapter, gives M_r.
5. M_r is scored on the dev examples ``fit`` was given (a dev carved from train when it
   was given none, said in the fit report; never the test split). The loop stops once dev
   accuracy has not improved for ``patience`` rounds; the best round's adapter is the
   result.

Each round's candidates, curated data, adapter and scores stay in the run directory
(``round-N/``); every step is a stage of :class:`~metaskill.core.stages.StageRunner`,
so a killed run resumes and a finished round is never redone.

What we changed: SELF first trains the meta-skills (feedback and refinement) on a seed set
of feedback/refinement examples; we skip that step (our models use the critique prompt
zero-shot) and record the verdicts, so the quality of self-feedback can be checked.

Example:
    >>> SelfEvolveConfig(rounds=2, samples=3).min_agree
    2
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, model_validator

from metaskill.core.readers import read_json
from metaskill.core.types import Example, Message, Request
from metaskill.eval.solver import Solver
from metaskill.lm.base import LM
from metaskill.methods.base import Method, MethodConfig, split_dev
from metaskill.methods.sft import ChatPair, SFTConfig, TrainingError, user_text
from metaskill.tasks.base import Task


class SelfEvolveConfig(MethodConfig):
    """SELF settings.

    Attributes:
        rounds: most self-evolution rounds (R).
        samples: answers sampled per training input.
        temperature: sampling temperature of those answers.
        refine: add self-feedback and a refined answer per sampled answer.
        n_train: unlabelled training inputs answered per round.
        min_agree: least number of agreeing candidates for a majority answer (default
            more than half of ``samples``, at least 2).
        use_references: curate by the Verifier where reference answers exist.
        eval_limit: dev examples scored per round (None: all).
        max_tokens: generation budget of an answer.
        steps, rank, learning_rate, batch_size: LoRA training per round.
        patience: rounds without a dev improvement before stopping.
        seed: seeds sampling and training.
    """

    rounds: int = Field(3, ge=1)
    samples: int = Field(4, ge=1)
    temperature: float = Field(0.8, ge=0, le=2)
    refine: bool = True
    n_train: int = Field(64, ge=1)
    min_agree: int | None = Field(None, ge=1)
    use_references: bool = True
    eval_limit: int | None = Field(50, ge=1)
    max_tokens: int = Field(64, ge=1)
    steps: int = Field(60, ge=1)
    rank: int = Field(8, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    batch_size: int = Field(8, ge=1)
    patience: int = Field(1, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _agree(self) -> SelfEvolveConfig:
        if self.min_agree is None:
            self.min_agree = max(2, self.samples // 2 + 1)
        return self

    def sft(self) -> SFTConfig:
        """The LoRA config of one round."""
        return SFTConfig(rank=self.rank, alpha=2.0 * self.rank, steps=self.steps,
                         learning_rate=self.learning_rate, batch_size=self.batch_size,
                         seed=self.seed)


# ---- 1-2. answers, self-feedback, refinement -----------------------------------------------
def generate_candidates(lm: Any, task: Any, examples: list[Example], cfg: SelfEvolveConfig,
                        seed: int) -> dict[str, dict[str, Any]]:
    """Per example: the sampled answers, and (with ``refine``) feedback and refinements."""
    from metaskill.methods.self_refine import FEEDBACK_PROMPT, REFINE_PROMPT, parse_verdict

    reqs = [Request(messages=(Message(role="user", content=user_text(task, e)),),
                    n=cfg.samples, temperature=cfg.temperature, max_tokens=cfg.max_tokens,
                    seed=seed) for e in examples]
    answers = [[t.strip() for t in c.texts] for c in lm.complete(reqs)]
    out = {e.id: {"answers": a, "feedback": [], "verdicts": [], "refined": []}
           for e, a in zip(examples, answers, strict=True)}
    if not cfg.refine:
        return out
    instr = (getattr(task, "instructions", "") or "").strip()
    head = f"{instr}\n\n" if instr else ""
    flat = [(e, a) for e, ans in zip(examples, answers, strict=True) for a in ans]
    fb = lm.complete([Request(messages=(Message(role="user", content=FEEDBACK_PROMPT.format(
        instructions=head, question=task.render(e), answer=a)),), max_tokens=160)
        for e, a in flat])
    todo = []
    for (e, a), c in zip(flat, fb, strict=True):
        verdict = parse_verdict(c.text)
        out[e.id]["feedback"].append(c.text)
        out[e.id]["verdicts"].append(verdict)
        if verdict == "wrong":
            todo.append((e, a, c.text))
    refined = lm.complete([Request(messages=(Message(role="user", content=REFINE_PROMPT.format(
        instructions=head, question=task.render(e), answer=a, feedback=f)),),
        max_tokens=cfg.max_tokens) for e, a, f in todo]) if todo else []
    for (e, _a, _f), c in zip(todo, refined, strict=True):
        out[e.id]["refined"].append(c.text.strip())
    return out


# ---- 3. curation ---------------------------------------------------------------------------
def curate(task: Any, examples: list[Example], cands: dict[str, dict[str, Any]],
           cfg: SelfEvolveConfig) -> tuple[list[ChatPair], dict[str, int]]:
    """Keep verified answers (with references) or majority answers (without)."""
    pairs: list[ChatPair] = []
    stats = {"verified": 0, "majority": 0, "dropped": 0}
    for e in examples:
        c = cands[e.id]
        options = [x for x in [*c["answers"], *c["refined"]] if x]
        chosen: str | None = None
        if cfg.use_references and e.answer is not None:
            for x in options:
                if task.verifier.verify(x, e).score >= 1.0:
                    chosen = x
                    stats["verified"] += 1
                    break
        else:
            counts = Counter(" ".join(x.split()) for x in options)
            if counts:
                top, n = counts.most_common(1)[0]
                if n >= (cfg.min_agree or 2):
                    chosen = top
                    stats["majority"] += 1
        if chosen is None:
            stats["dropped"] += 1
            continue
        pairs.append(ChatPair(id=e.id, messages=[Message(role="user",
                                                         content=user_text(task, e))],
                              answer=chosen))
    return pairs, stats


# ---- the loop ------------------------------------------------------------------------------
Trainer = Callable[[list[ChatPair], SFTConfig, Path, "Path | None"], None]
LMFactory = Callable[["Path | None"], Any]
Scorer = Callable[[Any], dict[str, Any]]


def self_evolve(
    task: Any,
    cfg: SelfEvolveConfig,
    out: str | Path,
    *,
    train: list[Example],
    lm_for: LMFactory,
    trainer: Trainer,
    score: Scorer,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run SELF rounds in the run directory ``out`` (resumable).

    Args:
        task: the Task (its template, instructions and Verifier).
        cfg: the :class:`SelfEvolveConfig`.
        out: the run directory.
        train: the training inputs answered in the rounds.
        lm_for: ``adapter_dir or None -> LM`` (the base model plus that adapter; with None
            the caller's own LM, which is never closed here).
        trainer: ``(pairs, sft_config, out_dir, init_adapter) -> None``; writes a PEFT
            adapter to ``out_dir`` (e.g. :func:`train_for_lm` bound to the base LM).
        score: ``LM -> {"accuracy": ..., "n": ...}`` on the dev examples (never test).
        progress: called with one line per finished step.

    Returns:
        ``{"rounds": [...], "best_round": r, "best_adapter": path or None, "base": ...}``.
    """
    from metaskill.core.stages import StageRunner

    say = progress or (lambda _m: None)
    root = Path(out)
    runner = StageRunner(root)
    cfg_json = cfg.model_dump(mode="json")
    base = runner.run("round-0-eval", {"cfg": cfg_json}, lambda: score(lm_for(None)))
    say(f"round 0 (base): dev accuracy {base['accuracy']:.1%}")
    history: list[dict[str, Any]] = []
    best_acc, best_round, best_adapter = base["accuracy"], 0, None
    adapter: Path | None = None
    curated_all: list[ChatPair] = []
    stale = 0
    if not train:
        raise TrainingError("SELF: no training inputs to answer.")
    for r in range(1, cfg.rounds + 1):
        rdir = root / f"round-{r}"
        rdir.mkdir(parents=True, exist_ok=True)
        start = ((r - 1) * cfg.n_train) % max(1, len(train))
        inputs = (train[start:] + train[:start])[: cfg.n_train]
        key = {"cfg": cfg_json, "round": r, "prev": str(adapter)}

        def candidates(inputs: list[Example] = inputs, rdir: Path = rdir,
                       adapter: Path | None = adapter, r: int = r) -> dict[str, Any]:
            lm = lm_for(adapter)
            try:
                cands = generate_candidates(lm, task, inputs, cfg, seed=cfg.seed + 1000 * r)
            finally:
                if adapter is not None:
                    _close(lm)
            (rdir / "candidates.json").write_text(json.dumps(cands, indent=1))
            verdicts = [v for c in cands.values() for v in c["verdicts"]]
            return {"n_inputs": len(inputs), "verdicts": dict(Counter(map(str, verdicts)))}

        runner.run(f"round-{r}-candidates", key, candidates)
        cands = read_json(rdir / "candidates.json", "SELF round candidates")

        def curated(inputs: list[Example] = inputs, cands: dict[str, Any] = cands,
                    rdir: Path = rdir) -> dict[str, Any]:
            pairs, stats = curate(task, inputs, cands, cfg)
            with open(rdir / "data.jsonl", "w") as f:
                for p in pairs:
                    f.write(p.model_dump_json() + "\n")
            return stats

        stats = runner.run(f"round-{r}-curate", key, curated)
        pairs = [ChatPair.model_validate_json(x)
                 for x in (rdir / "data.jsonl").read_text().splitlines() if x.strip()]
        curated_all += pairs
        say(f"round {r}: curated {len(pairs)} ({stats}); training on {len(curated_all)}")
        if not curated_all:
            raise TrainingError(f"SELF round {r}: the curated set is empty (no answer was "
                                "verified or agreed on); nothing to train on.")

        data_now = list(curated_all)

        def trained(rdir: Path = rdir, adapter: Path | None = adapter,
                    data: list[ChatPair] = data_now) -> dict[str, Any]:
            trainer(data, cfg.sft(), rdir / "adapter", adapter)
            return {"adapter": str(rdir / "adapter"), "n_train": len(data)}

        runner.run(f"round-{r}-train", {**key, "n": len(curated_all)}, trained)
        adapter = rdir / "adapter"
        result = runner.run(f"round-{r}-eval", {**key, "adapter": str(adapter)},
                            lambda adapter=adapter: _scored(lm_for(adapter), score))
        history.append({"round": r, "accuracy": result["accuracy"], "n": result.get("n"),
                        "curated": len(pairs), "trained_on": len(curated_all), **stats,
                        "adapter": str(adapter)})
        (rdir / "scores.json").write_text(json.dumps(history[-1], indent=1))
        say(f"round {r}: dev accuracy {result['accuracy']:.1%}")
        if result["accuracy"] > best_acc:
            best_acc, best_round, best_adapter, stale = result["accuracy"], r, adapter, 0
        else:
            stale += 1
            if stale >= cfg.patience:
                say(f"dev accuracy did not improve for {stale} round(s): stopping")
                break
    summary = {"base": base, "rounds": history, "best_round": best_round,
               "best_accuracy": best_acc,
               "best_adapter": str(best_adapter) if best_adapter else None}
    (root / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _scored(lm: Any, score: Scorer) -> dict[str, Any]:
    try:
        return score(lm)
    finally:
        _close(lm)


def _close(lm: Any) -> None:
    close = getattr(lm, "close", None)
    if callable(close):
        close()


# ---- the Method ----------------------------------------------------------------------------
class SelfEvolve(Method):
    """SELF as a Method: ``fit(solver, task, train, dev)`` returns the Solver on the base
    model plus the best round's adapter (the input Solver if no round beat it on dev).

    Rounds are selected on ``dev``; without one, the last ``eval_limit`` (at least a fifth)
    of ``train`` becomes dev and is not answered in the rounds, said in the fit report.
    The rounds live in ``resources.work_dir_for("self_evolve", ...)`` and resume there.

    Example:
        >>> SelfEvolve(SelfEvolveConfig(rounds=1)).stage
        'parametric'
    """

    name: ClassVar[str] = "self_evolve"
    stage: ClassVar[str] = "parametric"
    Config: ClassVar[type[MethodConfig]] = SelfEvolveConfig

    config: SelfEvolveConfig

    def fit(self, solver: Solver, task: Task, train: list[Example],
            dev: list[Example] | None = None) -> Solver:
        """Run the SELF rounds from ``solver``'s LM; select the round on ``dev``."""
        from metaskill.eval.harness import evaluate
        from metaskill.methods.sft import train_for_lm

        cfg, res = self.config, self.resources
        train, dev, dev_note = split_dev(train, dev, cfg.eval_limit)
        dev = dev[: cfg.eval_limit] if cfg.eval_limit else dev
        out = res.work_dir_for(self.name, {"task": task.name, "cfg": cfg.model_dump(mode="json"),
                                           "train": [e.id for e in train],
                                           "dev": [e.id for e in dev], "lm": solver.lm.spec})
        trainer = res.trainer or functools.partial(train_for_lm, settings=res.settings)

        def lm_for(adapter: Path | None) -> LM:
            return solver.lm if adapter is None else solver.lm.with_adapter(adapter)

        def train_round(pairs: list[ChatPair], sft: SFTConfig, to: Path,
                        init: Path | None) -> None:
            trainer(solver.lm, pairs, sft, to, init_adapter=init, progress=res.progress,
                    log=res.log)

        def score(lm: LM) -> dict[str, Any]:
            run = evaluate(solver.with_lm(lm), task, examples=dev, progress=res.progress)
            return {"accuracy": run.accuracy, "n": len(run.records)}

        summary = self_evolve(task, cfg, out, train=train, lm_for=lm_for, trainer=train_round,
                              score=score, progress=res.log)
        self.report.notes.update({"rounds": summary["rounds"], "base": summary["base"],
                                  "best_round": summary["best_round"], "dev": dev_note,
                                  "dev_accuracy": summary["best_accuracy"], "run_dir": str(out)})
        if summary["best_adapter"] is None:
            return solver.with_lm(solver.lm)
        return solver.with_lm(solver.lm.with_adapter(summary["best_adapter"]))
