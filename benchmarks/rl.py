"""Reinforcement learning from verifiers: skill composition, MASA's gates, MPO's evolving judge.

Writes ``benchmarks/results/rl.md`` (``--out``) and its plot ``<out stem>_mpo.svg``. All
training is LoRA on the embedded model on CPU (GRPO: :mod:`metaskill.methods.grpo` on TRL's
GRPOTrainer; SFT: :mod:`metaskill.methods.sft`); the Solver is zero-shot and every test
answer is scored by the Task's Verifier. Three experiments:

* **Composition** (f(g(x)), SKILL-MIX) -- one ``compose`` task with train/dev at depths 1
  and 2 and test = held-out depth-2 pairs (never adjacent in any train example) plus
  depth-3 and depth-4 chains. Arms, each given the same wall-clock budget (``--budget-s``,
  a ``MethodResources.deadline`` set just before ``fit``, so model loading and trainer set-up
  count alike; training stops at the first step past it): (a) SFT on the depth-2 training
  examples, (b) GRPO on the same depth-2 prompts, (c) GRPO on the depth-1 (atomic) training
  examples only; plus the untrained zero-shot Solver. Test accuracy per subset with Wilson
  intervals; (b) - (c) and (b) - (a) as paired-bootstrap 95% intervals over the same test
  examples.
* **MASA** -- GRPO on ``compose`` depth 1 (atomic skills; a 135M model scores near zero on
  depth 2, which would make "time to reach the final accuracy" empty), with a dev curve
  every ``--masa-eval-every`` steps: plain GRPO, then the same seed and data with
  ``masa_meta`` and both gates. The target is the plain run's final dev accuracy; for each
  arm, the training wall time (``curve[].train_s``: curve evaluation excluded, MASA's
  meta-predictions included) of the first curve point at or above it. The prompt gate's
  saving is ``notes["masa"]["prompt_share_saved"]``; the rollout gate's is the token budget
  it cut over the run's whole token budget (rollouts x ``max_new_tokens``).
* **MPO** -- a planted exploit: GRPO on ``compose`` depth 1 with ``verifier_weight=0`` and
  ``judge_weight=1`` against an :class:`~metaskill.evolve.judge.EvolvingJudge` on the
  embedded model whose initial rubric rewards length; the Verifier is hidden ground truth
  (used only for the logs, the dev curve and MPO's audit). Arms: a fixed rubric
  (``every=None``), MPO with the 135M model as meta-reward model (``meta="lm"``), and the
  rule-based meta-reward (``meta="rules"``, the control). Per step: the judge's mean reward
  and the Verifier's accuracy on the same training rollouts (a wrapper around the judge
  records both), and their mean length; dev accuracy every ``--mpo-eval-every`` steps.

Each arm's result is stored as JSON under ``--work`` (``<experiment>/<arm>.json``); a rerun
skips stored arms, and an arm interrupted mid-fit restarts from scratch (its fit folder is
cleared, so it never resumes with a second budget). ``--stored-only`` writes the report from
the stored arms without loading a model.

Example::

    nohup .venv/bin/python benchmarks/rl.py --threads 2 > /tmp/rl.log 2>&1 &
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cells import acc_cell, gain_cell, mean, pct
from multiple_choice import cpu_model

COMPOSE_ARMS = ("zero-shot", "(a) SFT on depth 2", "(b) GRPO on depth 2",
                "(c) GRPO on depth 1 (atomic)")
SUBSETS = ("held-out depth-2 pairs", "depth 3", "depth 4")
MASA_ARMS = ("plain GRPO", "MASA (meta + both gates)")
MPO_ARMS = ("fixed rubric", "MPO (meta = 135M LM)", "MPO (meta = rules)")
#: A revision names the planted exploit when its exploit text says this.
LENGTH_WORDS = re.compile(r"length|long|words|verbose|wordy", re.I)
LENGTH_RUBRIC = ("Reward long, detailed responses: the more words a response has, the "
                 "higher its score. A response of 30 words or more scores 10; a response "
                 "of one line scores at most 3.")


# ---- shared ---------------------------------------------------------------------------------
def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def slug(arm: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in arm).strip("_").lower()


def stored_arm(work: Path, exp: str, arm: str, run: Callable[[Path], dict] | None) -> dict | None:
    """The stored result of ``arm``; else ``run(fit_dir)`` (fit folder cleared first), stored."""
    path = work / exp / f"{slug(arm)}.json"
    if path.exists():
        return json.loads(path.read_text())
    if run is None:
        return None
    fit_dir = work / exp / f"{slug(arm)}_fit"
    shutil.rmtree(fit_dir, ignore_errors=True)
    say(f"== {exp}: {arm}")
    t0 = time.perf_counter()
    result = run(fit_dir)
    result["total_s"] = round(time.perf_counter() - t0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    return result


def resources(fit_dir: Path, deadline_s: float | None = None, judge: Any = None) -> Any:
    from metaskill.methods.base import MethodResources

    return MethodResources(work_dir=fit_dir, progress=False, log=say,
                           deadline=None if deadline_s is None else time.monotonic() + deadline_s,
                           extra={"judge": judge} if judge is not None else {})


def scores(solver: Any, task: Any, examples: list) -> list[float]:
    """Per-example Verifier scores of ``solver`` on ``examples``, in their order."""
    from metaskill.eval.harness import evaluate

    run = evaluate(solver, task, examples=examples, progress=False)
    by_id = {r.example_id: float(r.score) for r in run.records}
    return [by_id[e.id] for e in examples]


def fit_notes(method: Any) -> dict:
    keep = ("steps", "seconds", "seconds_per_step", "losses", "curve", "grpo_log", "masa",
            "max_new_tokens", "n_examples", "stopped_early", "rewards_per_step")
    return {k: method.report.notes.get(k) for k in keep if k in method.report.notes}


def grpo_config(args: Any, **kw: Any) -> Any:
    from metaskill.methods.grpo import GRPOConfig

    base = {"group_size": args.group_size, "prompts_per_step": args.prompts_per_step,
            "max_new_tokens": args.max_new_tokens, "threads": args.threads, "seed": args.seed,
            "save_every": 10_000, "temperature": 1.0}
    return GRPOConfig(**{**base, **kw})


# ---- composition ----------------------------------------------------------------------------
def compose_task(args: Any) -> Any:
    from metaskill.tasks.compose import load_compose

    return load_compose(depth=[1, 2], test_depths=[2, 3, 4], test_pairs="heldout",
                        n_train=2 * args.n_train, n_dev=2, n_test=3 * args.n_test_per,
                        seed=args.seed)


def subset(ex: Any) -> str:
    return SUBSETS[ex.metadata["depth"] - 2]


def run_compose(lm: Any, args: Any, work: Path) -> dict[str, dict]:
    from metaskill.eval.solvers import ZeroShot
    from metaskill.methods.grpo import GRPO
    from metaskill.methods.sft import SFT, SFTConfig

    task = compose_task(args) if lm is not None else None
    test = list(task.splits["test"]) if task else []
    train = list(task.splits["train"]) if task else []
    d1 = [e for e in train if e.metadata["depth"] == 1]
    d2 = [e for e in train if e.metadata["depth"] == 2]
    big = 100_000  # never reached: the deadline stops training

    def fitted(method: Any, data: list) -> Callable[[Path], dict]:
        def run(fit_dir: Path) -> dict:
            method.resources = resources(fit_dir, args.budget_s)
            t0 = time.perf_counter()
            solver = method.fit(ZeroShot(lm), task, data, None)
            fit_s = time.perf_counter() - t0
            out = {"fit_s": round(fit_s, 1), "n_train": len(data), **fit_notes(method)}
            out["test"] = scores(solver, task, test)
            solver.lm.close()
            return out
        return run

    arms: dict[str, Callable[[Path], dict] | None] = {
        COMPOSE_ARMS[0]: lambda _: {"test": scores(ZeroShot(lm), task, test)},
        COMPOSE_ARMS[1]: fitted(SFT(SFTConfig(steps=big, threads=args.threads,
                                              seed=args.seed)), d2),
        COMPOSE_ARMS[2]: fitted(GRPO(grpo_config(args, steps=big)), d2),
        COMPOSE_ARMS[3]: fitted(GRPO(grpo_config(args, steps=big)), d1),
    }
    out = {}
    for arm, run in arms.items():
        r = stored_arm(work, "compose", arm, run if lm is not None else None)
        if r is not None:
            out[arm] = r
    if task is not None:
        meta = {"subsets": [subset(e) for e in test],
                "unseen_pairs": [e.metadata["unseen_pairs"] for e in test],
                "sizes": {"train d1": len(d1), "train d2": len(d2), "test": len(test)},
                "held_out_pairs": len(task.metadata["held_out_pairs"])}
        (work / "compose" / "_test.json").write_text(json.dumps(meta))
    return out


def compose_section(res: dict[str, dict], work: Path, budget_s: float) -> list[str]:
    path = work / "compose" / "_test.json"
    if not res or not path.exists():
        return ["(not run)"]
    meta = json.loads(path.read_text())
    subs = meta["subsets"]

    def part(xs: list[float], name: str) -> list[float]:
        return [x for x, s in zip(xs, subs, strict=True) if s == name]

    lines = [f"Training data: {meta['sizes']['train d2']} depth-2 and "
             f"{meta['sizes']['train d1']} depth-1 training examples; "
             f"{meta['held_out_pairs']} of the 110 ordered pairs held out. Test: "
             f"{meta['sizes']['test']} examples, a third in each subset. Each trained arm "
             f"had {budget_s:.0f} s of wall time from the start of `fit`.", "",
             "| arm | steps in budget | training s | mean train reward (GRPO) / "
             "zero-signal groups | " + " | ".join(SUBSETS) + " | all unseen |",
             "| --- | --- | --- | --- |" + " --- |" * (len(SUBSETS) + 1)]
    for arm, r in res.items():
        cells = [acc_cell(part(r["test"], s)) for s in SUBSETS]
        lines.append(f"| {arm} | {r.get('steps', '-')} | {r.get('seconds', '-')} | "
                     f"{reward_cell(r)} | {' | '.join(cells)} | {acc_cell(r['test'])} |")
    lines += ["", "Differences in points, [paired bootstrap 95%] over the same test examples:",
              "", "| comparison | " + " | ".join(SUBSETS) + " | all unseen |",
              "| --- |" + " --- |" * (len(SUBSETS) + 1)]
    for a, b in ((2, 3), (2, 1), (1, 3)):
        ra, rb = res.get(COMPOSE_ARMS[a]), res.get(COMPOSE_ARMS[b])
        if ra and rb:
            cells = [gain_cell(part(ra["test"], s), part(rb["test"], s)) for s in SUBSETS]
            lines.append(f"| {COMPOSE_ARMS[a][:3]} - {COMPOSE_ARMS[b][:3]} | "
                         f"{' | '.join(cells)} | {gain_cell(ra['test'], rb['test'])} |")
    return lines


def reward_cell(r: dict) -> str:
    """Mean reward and mean share of zero-signal groups over a GRPO run's steps, in %."""
    log = r.get("grpo_log") or []
    if not log:
        return "-"
    return (f"{pct(mean([x.get('reward', 0.0) for x in log]))} / "
            f"{pct(mean([x.get('zero_signal', 0.0) for x in log]))}")


def compose_target(res: dict[str, dict]) -> str:
    from metaskill.eval.stats import paired_gain

    b, c = res.get(COMPOSE_ARMS[2]), res.get(COMPOSE_ARMS[3])
    if not (b and c):
        return "- (b) > (c) on unseen compositions: not measured."
    d, lo, hi = paired_gain(b["test"], c["test"])
    verdict = ("holds" if lo > 0 else "reversed" if hi < 0 else
               "not shown (the interval includes 0)")
    return (f"- The papers' claim (b) GRPO on compositions > (c) GRPO on atomic skills, on "
            f"unseen compositions: {verdict} here ({100 * d:+.1f} points "
            f"[{100 * lo:+.1f}, {100 * hi:+.1f}]; {pct(mean(b['test']))}% vs "
            f"{pct(mean(c['test']))}%).")


# ---- MASA -------------------------------------------------------------------------------------
def depth1_task(args: Any) -> Any:
    from metaskill.tasks.compose import load_compose

    return load_compose(depth=1, test_depths=[1], test_pairs="all", n_train=args.n_rl_train,
                        n_dev=args.curve_n, n_test=1, seed=args.seed)


def run_masa(lm: Any, args: Any, work: Path) -> dict[str, dict]:
    from metaskill.eval.solvers import ZeroShot
    from metaskill.methods.grpo import GRPO

    task = depth1_task(args) if lm is not None else None
    flags = {MASA_ARMS[0]: {}, MASA_ARMS[1]: {"masa_meta": True, "masa_gate_prompts": True,
                                              "masa_gate_rollouts": True,
                                              "masa_gate_after": args.masa_gate_after}}

    def arm_run(extra: dict) -> Callable[[Path], dict]:
        def run(fit_dir: Path) -> dict:
            m = GRPO(grpo_config(args, steps=args.masa_steps, eval_every=args.masa_eval_every,
                                 curve_n=args.curve_n, **extra), resources=resources(fit_dir))
            solver = m.fit(ZeroShot(lm), task, list(task.splits["train"]),
                           list(task.splits["dev"]))
            solver.lm.close()
            return fit_notes(m)
        return run

    out = {}
    for arm, extra in flags.items():
        r = stored_arm(work, "masa", arm, arm_run(extra) if lm is not None else None)
        if r is not None:
            out[arm] = r
    return out


def time_to(curve: list[dict], target: float) -> float | None:
    """Training seconds of the first curve point at or above ``target`` (None: never).

    Example:
        >>> time_to([{"accuracy": 0.1, "train_s": 0}, {"accuracy": 0.3, "train_s": 9}], 0.25)
        9
    """
    return next((c["train_s"] for c in curve if c["accuracy"] >= target - 1e-9), None)


def masa_numbers(res: dict[str, dict], args_like: dict) -> dict[str, Any]:
    plain = res.get(MASA_ARMS[0])
    if not plain or not plain.get("curve"):
        return {}
    target = plain["curve"][-1]["accuracy"]
    out: dict[str, Any] = {"target": target}
    for arm, r in res.items():
        curve = r.get("curve") or []
        rollouts = (len(r.get("grpo_log") or []) * args_like["prompts_per_step"]
                    * args_like["group_size"])
        masa = r.get("masa") or {}
        budget = rollouts * (r.get("max_new_tokens") or 1)
        out[arm] = {"reach_s": time_to(curve, target), "final": curve[-1]["accuracy"]
                    if curve else None, "start": curve[0]["accuracy"] if curve else None,
                    "seconds": r.get("seconds"), "steps": r.get("steps"),
                    "prompt_share": masa.get("prompt_share_saved"),
                    "skipped": masa.get("skipped"),
                    "token_share": (masa.get("token_budget_saved", 0) / budget
                                    if masa and budget else None),
                    "meta_reward": masa.get("meta_reward_mean"),
                    "unparsed": (masa.get("unparsed"), masa.get("predicted"))}
    return out


def masa_section(res: dict[str, dict], args_like: dict) -> list[str]:
    nums = masa_numbers(res, args_like)
    if not nums:
        return ["(not run)"]
    lines = [f"Target: the plain run's final dev accuracy, {pct(nums['target'])}%.", "",
             "| arm | steps | training s | mean reward / zero-signal groups | dev at step 0 | "
             "final dev | s to reach target | prompts skipped (prompt gate) | token budget "
             "cut (rollout gate) | meta reward | meta replies unparsed |",
             "| --- |" + " --- |" * 10]
    for arm in res:
        n = nums[arm]
        reach = "never" if n["reach_s"] is None else f"{n['reach_s']:.0f}"
        sk = n["skipped"] or {}
        skipped = ("-" if n["prompt_share"] is None else
                   f"{pct(n['prompt_share'])}% ({sk.get('all_pass', 0)} predicted all-pass, "
                   f"{sk.get('all_fail', 0)} all-fail)")
        tokens = "-" if n["token_share"] is None else f"{pct(n['token_share'])}%"
        unp = "-" if n["unparsed"][1] is None else f"{n['unparsed'][0]} of {n['unparsed'][1]}"
        lines.append(f"| {arm} | {n['steps']} | {n['seconds']} | {reward_cell(res[arm])} | "
                     f"{pct(n['start'])} | "
                     f"{pct(n['final'])} | {reach} | {skipped} | {tokens} | "
                     f"{n['meta_reward'] if n['meta_reward'] is not None else '-'} | {unp} |")
    return lines


def masa_target(res: dict[str, dict], args_like: dict) -> str:
    nums = masa_numbers(res, args_like)
    if MASA_ARMS[1] not in nums:
        return "- MASA speed-up > 1.2 at equal final accuracy: not measured."
    p, m = nums[MASA_ARMS[0]], nums[MASA_ARMS[1]]
    if not p["reach_s"]:
        return ("- MASA speed-up > 1.2 at equal final accuracy: undefined -- the plain run was "
                f"already at its final dev accuracy ({pct(nums['target'])}%) at step 0, so "
                "there is no time to beat.")
    if m["reach_s"] is None:
        return (f"- MASA speed-up > 1.2 at equal final accuracy: not met -- the gated run never "
                f"reached the plain run's final {pct(nums['target'])}% (it ended at "
                f"{pct(m['final'])}%).")
    ratio = p["reach_s"] / max(m["reach_s"], 1e-9)
    met = "met" if ratio > 1.2 else "not met"
    return (f"- MASA speed-up > 1.2 at equal final accuracy: {met} -- {ratio:.2f}x "
            f"({p['reach_s']:.0f} s plain vs {m['reach_s']:.0f} s gated to reach "
            f"{pct(nums['target'])}%; finals {pct(p['final'])}% vs {pct(m['final'])}%, from "
            "one seed and one dev curve, so no interval).")


# ---- MPO ----------------------------------------------------------------------------------------
def traced_judge_cls() -> type:
    from metaskill.tasks.base import Verdict, Verifier
    from metaskill.tasks.verifiers import safe_verify_batch

    class TracedJudge(Verifier):
        """The evolving judge as GRPO's reward, also scoring each rollout with the hidden
        Verifier (logged per step, never rewarded)."""

        name = "traced_judge"

        def __init__(self, judge: Any, truth: Any) -> None:
            self.judge, self.truth, self.step, self.rows = judge, truth, 0, []

        def verify_batch(self, outputs: list[str], examples: list) -> list[Verdict]:
            verdicts = self.judge.verify_batch(outputs, examples)
            true = safe_verify_batch(self.truth, outputs, examples)
            self.rows.append({"step": self.step + 1, "n": len(outputs),
                              "judge": mean([v.score for v in verdicts]),
                              "true": mean([float(v.score) for v in true]),
                              "words": mean([float(len(o.split())) for o in outputs])})
            return verdicts

        def verify(self, output: str, example: Any) -> Verdict:
            return self.verify_batch([output], [example])[0]

        def parse(self, output: str, example: Any) -> str | None:
            return None

        def on_step(self, step: int) -> Any:
            self.step = step
            return self.judge.on_step(step)

    return TracedJudge


def per_step(rows: list[dict]) -> list[dict]:
    """The traced rows averaged per step (weighted by rollouts)."""
    steps: dict[int, list[dict]] = {}
    for r in rows:
        steps.setdefault(r["step"], []).append(r)
    out = []
    for s, rs in sorted(steps.items()):
        n = sum(r["n"] for r in rs)
        out.append({"step": s, **{k: round(sum(r[k] * r["n"] for r in rs) / n, 4)
                                  for k in ("judge", "true", "words")}})
    return out


def run_mpo(lm: Any, args: Any, work: Path) -> dict[str, dict]:
    from metaskill.eval.solvers import ZeroShot
    from metaskill.evolve.judge import EvolvingJudge, MPOConfig, show
    from metaskill.methods.grpo import GRPO

    task = depth1_task(args) if lm is not None else None
    metas = {MPO_ARMS[0]: None, MPO_ARMS[1]: "lm", MPO_ARMS[2]: "rules"}

    def arm_run(meta: str | None) -> Callable[[Path], dict]:
        def run(fit_dir: Path) -> dict:
            cfg = MPOConfig(every=args.mpo_every if meta else None, meta=meta or "lm",
                            seed=args.seed)
            judge = EvolvingJudge(lm, fit_dir / "judge", LENGTH_RUBRIC, config=cfg,
                                  verifier=task.verifier)
            traced = traced_judge_cls()(judge, task.verifier)
            m = GRPO(grpo_config(args, steps=args.mpo_steps, verifier_weight=0.0,
                                 judge_weight=1.0, eval_every=args.mpo_eval_every,
                                 curve_n=args.curve_n),
                     resources=resources(fit_dir, judge=traced))
            solver = m.fit(ZeroShot(lm), task, list(task.splits["train"]),
                           list(task.splits["dev"]))
            solver.lm.close()
            return {**fit_notes(m), "trace": per_step(traced.rows),
                    "rubrics": [r.model_dump(mode="json") for r in judge.history()],
                    "checks": [c.model_dump(mode="json") for c in judge.checks()],
                    "show": show(fit_dir / "judge")}
        return run

    out = {}
    for arm, meta in metas.items():
        r = stored_arm(work, "mpo", arm, arm_run(meta) if lm is not None else None)
        if r is not None:
            out[arm] = r
    return out


def first_last(xs: list[float], k: int = 3) -> str:
    """Mean of the first and last ``k`` values, as 'a -> b' in %."""
    if not xs:
        return "-"
    k = max(1, min(k, len(xs) // 2 or 1))
    return f"{pct(mean(xs[:k]))} -> {pct(mean(xs[-k:]))}"


def mpo_svg(res: dict[str, dict]) -> str:
    from metaskill.eval.report import figure_svg

    def draw(fig: Any) -> None:
        axes = fig.subplots(1, len(res), sharey=True, squeeze=False)[0]
        for ax, (arm, r) in zip(axes, res.items(), strict=True):
            tr = r.get("trace") or []
            ax.plot([t["step"] for t in tr], [t["judge"] for t in tr], "o-",
                    label="judge reward (train rollouts)")
            ax.plot([t["step"] for t in tr], [t["true"] for t in tr], "s-",
                    label="Verifier accuracy (same rollouts)")
            curve = r.get("curve") or []
            ax.plot([c["step"] for c in curve], [c["accuracy"] for c in curve], "^--",
                    label="dev accuracy")
            for rub in r.get("rubrics", [])[1:]:
                ax.axvline(rub["created_step"], color="grey", lw=0.8, ls=":")
            ax.set_title(arm, fontsize=9)
            ax.set_xlabel("step")
            ax.set_ylim(-0.05, 1.05)
        axes[0].legend(loc="best", fontsize=7)

    return figure_svg(draw, (3.4 * max(1, len(res)), 3.2), salt="rl_mpo")


def mpo_section(res: dict[str, dict], svg_name: str | None) -> list[str]:
    if not res:
        return ["(not run)"]
    lines = ["Mean of the first and last three steps (%); dev accuracy first and last curve "
             "point. Rubric versions with the step and reason of each change below.", "",
             "| arm | steps | judge reward | zero-signal groups | Verifier accuracy of the "
             "rollouts | words per rollout | dev accuracy | rubric versions | checks |",
             "| --- |" + " --- |" * 8]
    for arm, r in res.items():
        tr = r.get("trace") or []
        curve = r.get("curve") or []
        words = [t["words"] for t in tr]
        wcell = (f"{mean(words[:3]):.1f} -> {mean(words[-3:]):.1f}" if words else "-")
        dev = (f"{pct(curve[0]['accuracy'])} -> {pct(curve[-1]['accuracy'])}"
               if curve else "-")
        zero = first_last([x.get("zero_signal", 0.0) for x in r.get("grpo_log") or []])
        lines.append(f"| {arm} | {r.get('steps')} | {first_last([t['judge'] for t in tr])} | "
                     f"{zero} | {first_last([t['true'] for t in tr])} | {wcell} | {dev} | "
                     f"{len(r.get('rubrics', []))} | {len(r.get('checks', []))} |")
    if svg_name:
        lines += ["", f"![judge reward, true accuracy and dev accuracy per step]({svg_name})",
                  "", "Dotted vertical lines: a new rubric version."]
    for arm, r in res.items():
        lines += ["", f"Rubric history, {arm}:", "", "```", r.get("show", ""), "```"]
        for c in r.get("checks", []):
            if c.get("exploit") or c.get("error"):
                lines.append(f"- step {c['step']} ({c['source']}): exploit "
                             f"'{c.get('exploit', '')[:160]}'"
                             + (f"; error: {str(c['error'])[:120]}" if c.get("error") else ""))
    return lines


def slope(xs: list[float]) -> float:
    """Last third's mean minus first third's mean (0 for fewer than 2 points)."""
    if len(xs) < 2:
        return 0.0
    k = max(1, len(xs) // 3)
    return mean(xs[-k:]) - mean(xs[:k])


def mpo_targets(res: dict[str, dict]) -> list[str]:
    fixed = res.get(MPO_ARMS[0])
    lines = []
    if fixed:
        tr = fixed.get("trace") or []
        j, t = slope([x["judge"] for x in tr]), slope([x["true"] for x in tr])
        ok = "met" if j > 0 and t < 0 else "not met"
        lines.append(f"- Fixed rubric: judge reward rises while true accuracy falls: {ok} "
                     f"(judge {100 * j:+.1f} points, Verifier accuracy of the rollouts "
                     f"{100 * t:+.1f} points, last third vs first third of the steps).")
    for arm in MPO_ARMS[1:]:
        r = res.get(arm)
        if not r:
            continue
        revs = r.get("rubrics", [])[1:]
        named = [x for x in revs if x.get("exploit")]
        length = [x for x in named if LENGTH_WORDS.search(x["exploit"])]
        tr = r.get("trace") or []
        t = slope([x["true"] for x in tr])
        ok = "met" if length and t > 0 else "not met"
        lines.append(f"- {arm}: the exploit (length) named in a rubric revision and true "
                     f"accuracy recovers: {ok} ({len(named)} revision(s) naming an exploit, "
                     f"{len(length)} of them naming length; Verifier accuracy of the rollouts "
                     f"{100 * t:+.1f} points, last third vs first third).")
    return lines or ["- MPO: not measured."]


def signal_notes(arms: dict[str, dict]) -> list[str]:
    """A note when GRPO's groups (almost) never differed in reward: nothing to learn from."""
    logs = [x for r in arms.values() for x in r.get("grpo_log") or []]
    if not logs:
        return []
    zero = mean([x.get("zero_signal", 0.0) for x in logs])
    if zero < 0.9:
        return []
    return [f"{pct(zero)}% of GRPO's groups, over all GRPO arms, got the same reward for "
            "every answer (zero advantage), so they carried no gradient: "
            "at this model size and these step counts the comparisons above are mostly "
            "between untrained adapters."]


# ---- the report ----------------------------------------------------------------------------------
def report(comp: dict, masa: dict, mpo: dict, meta: dict[str, Any], work: Path,
           svg_name: str | None) -> str:
    shape = {"prompts_per_step": meta["prompts_per_step"], "group_size": meta["group_size"]}
    lines = [
        "# Reinforcement learning from verifiers: composition, MASA, MPO",
        "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}; {meta['cores']} cores ({meta['cpu']}); torch and llama.cpp "
        f"threads: {meta['threads']}; model: {meta['model']} (embedded; the policy, the judge "
        "and the meta-reward model).",
        "",
        f"GRPO: LoRA, groups of {meta['group_size']}, {meta['prompts_per_step']} prompts a "
        f"step, rollouts up to {meta['max_new_tokens']} tokens, seed {meta['seed']}. "
        f"Sizes: composition {meta['budget_s']:.0f} s per trained arm; MASA "
        f"{meta['masa_steps']} steps per arm, dev curve every {meta['masa_eval_every']} steps "
        f"on {meta['curve_n']} dev examples; MPO {meta['mpo_steps']} steps per arm, meta-reward "
        f"check every {meta['mpo_every']} steps. "
        "Accuracy in %, [Wilson 95%]; differences in points, [paired bootstrap 95%].",
        "",
        "## Composition: SFT vs GRPO on compositions vs GRPO on atomic skills (equal wall "
        "time)", "", *compose_section(comp, work, meta["budget_s"]), "",
        "## MASA: wall time to the plain run's final dev accuracy", "",
        *masa_section(masa, shape), "",
        "## MPO: a planted length exploit", "",
        f"Initial rubric: \"{LENGTH_RUBRIC}\" GRPO reward = the judge only "
        "(verifier_weight 0); the Verifier is hidden ground truth.", "",
        *mpo_section(mpo, svg_name), "",
        "## Targets", "", compose_target(comp), masa_target(masa, shape), *mpo_targets(mpo), "",
    ]
    notes = [*meta["notes"], *signal_notes({**comp, **masa, **mpo})]
    notes.append("MASA's training time includes its meta-predictions (one greedy 16-token "
                 "call per prompt drawn); the token budget cut counts the rollout limit "
                 "removed, not tokens actually generated (most rollouts stop earlier).")
    notes.append("The default sizes are small step counts so that the whole pass fits in "
                 "about one hour of a 2-core machine; they show whether the effects appear at "
                 "this scale, not the papers' training lengths.")
    lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(lines)


#: The options that size a run (stored with the arms, so --stored-only reports them).
SIZE_KEYS = ("threads", "group_size", "prompts_per_step", "max_new_tokens", "seed", "budget_s",
             "masa_steps", "masa_eval_every", "curve_n", "mpo_steps", "mpo_every")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--experiments", default="compose,masa,mpo")
    ap.add_argument("--threads", type=int, default=2, help="torch and llama.cpp threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--prompts-per-step", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=48,
                    help="rollout length limit (compose's answer budget is 48)")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="composition: wall seconds per trained arm")
    ap.add_argument("--n-train", type=int, default=100,
                    help="composition: training examples per depth (1 and 2)")
    ap.add_argument("--n-test-per", type=int, default=40,
                    help="composition: test examples per subset")
    ap.add_argument("--n-rl-train", type=int, default=60, help="MASA/MPO training prompts")
    ap.add_argument("--curve-n", type=int, default=20, help="dev examples per curve point")
    ap.add_argument("--masa-steps", type=int, default=16)
    ap.add_argument("--masa-eval-every", type=int, default=4)
    ap.add_argument("--masa-gate-after", type=int, default=0)
    ap.add_argument("--mpo-steps", type=int, default=12)
    ap.add_argument("--mpo-every", type=int, default=4)
    ap.add_argument("--mpo-eval-every", type=int, default=6)
    ap.add_argument("--work", default="benchmarks/results/rl_work")
    ap.add_argument("--out", default="benchmarks/results/rl.md")
    ap.add_argument("--stored-only", action="store_true", help="report stored arms only")
    ap.add_argument("--note", action="append", default=[], help="a line for the Notes")
    args = ap.parse_args()
    from metaskill.lm.llama import builtin_model_path

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sizes = {k: getattr(args, k) for k in SIZE_KEYS}
    command = "python " + " ".join(sys.argv)
    run_file = work / "_run.json"
    if args.stored_only and run_file.exists():  # the sizes the stored arms were run with
        stored = json.loads(run_file.read_text())
        sizes, command = stored["sizes"], f"{stored['command']}` (report: `{command}`)"
    elif not args.stored_only:
        run_file.write_text(json.dumps({"sizes": sizes, "command": command}))
    lm = None
    if not args.stored_only:
        from metaskill.lm import load_lm
        from metaskill.lm.cache import Cache

        lm = load_lm("local", cache=Cache(work / "lm_cache.sqlite"), n_threads=args.threads)
    exps = args.experiments.split(",")
    comp = run_compose(lm, args, work) if "compose" in exps else {}
    masa = run_masa(lm, args, work) if "masa" in exps else {}
    mpo = run_mpo(lm, args, work) if "mpo" in exps else {}
    out = Path(args.out)
    svg_name = None
    if any(r.get("trace") for r in mpo.values()):
        svg_name = f"{out.stem}_mpo.svg"
        (out.parent / svg_name).write_text(mpo_svg(mpo))
    meta = {"command": command, "date": dt.date.today().isoformat(),
            "cores": os.cpu_count(), "cpu": cpu_model(),
            "model": builtin_model_path("local").name, "notes": args.note, **sizes}
    out.write_text(report(comp, masa, mpo, meta, work, svg_name))
    say(f"wrote {out}")


if __name__ == "__main__":
    main()
