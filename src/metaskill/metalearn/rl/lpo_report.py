"""The HTML report of an LPO / TA-LPO / GROOVE run folder.

One self-contained page (inline SVG via :func:`metaskill.eval.report.figure_svg`, no
scripts or URLs) with: the run's configuration and budget; the meta-training curve (the ES
mean's return, the population's and PPO's on the same levels, per generation); the learned
drift drawn as in the LPO paper's figure (drift against the ratio ``r`` for a positive and
a negative advantage, PPO's clip drift dashed; for TA-LPO one line per training progress);
the levels the sampler chose (uniform or GROOVE) coloured by algorithmic regret; and, when
``eval.json`` exists, final returns and learning curves of the learned drift and PPO on
the test environments.

Example::

    write_report("runs/lpo")        # -> runs/lpo/report.html
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metaskill.core.errors import FileFormatError
from metaskill.eval.report import Section, figure_svg, render_html
from metaskill.metalearn.rl.groove import PARAM_SPACES
from metaskill.metalearn.rl.lpo import (
    SCHEMA_VERSION,
    EvalResult,
    configure_xla_cpu,
    drift_value,
    load_drift,
    read_manifest,
)

PROGRESS_LINES = (0.0, 0.5, 1.0)


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def drift_curves(drift: Mapping[str, Any], ratios: np.ndarray, adv: float,
                 progress: float) -> np.ndarray:
    """The learned drift on a grid of ratios for one advantage and training progress.

    Example::

        drift_curves(load_drift("runs/lpo/drift.json"), np.linspace(0.5, 1.5, 5), 1.0, 0.0)
    """
    configure_xla_cpu()
    import jax.numpy as jnp

    theta = {"w1": jnp.asarray(drift["w1"]), "w2": jnp.asarray(drift["w2"])}
    r = jnp.asarray(ratios, dtype=jnp.float32)
    a = jnp.full_like(r, adv)
    n = float(drift.get("num_updates", 100))
    left = float(np.log1p(n - progress * n) / np.log1p(n))
    d = drift_value(theta, r, a, progress=progress, left=left, temporal=bool(drift["temporal"]),
                    ppo_weight=float(drift["ppo_weight"]), clip_eps=float(drift["clip_eps"]))
    return np.asarray(d, dtype=np.float64)


def _ppo_drift(ratios: np.ndarray, adv: float, eps: float) -> np.ndarray:
    return np.maximum((ratios - np.clip(ratios, 1 - eps, 1 + eps)) * adv, 0.0)


def drift_svg(drift: Mapping[str, Any]) -> str:
    """The LPO-paper-style figure: drift against ``r`` for ``A = +1`` and ``A = -1``."""
    ratios = np.linspace(0.25, 2.0, 141)
    lines = PROGRESS_LINES if drift["temporal"] else (0.0,)
    eps = float(drift["clip_eps"])

    def draw(fig: Any) -> None:
        axes = fig.subplots(1, 2, sharey=True)
        for ax, adv in zip(axes, (1.0, -1.0), strict=True):
            ax.plot(ratios, _ppo_drift(ratios, adv, eps), "--", color="#888", label="PPO (clip)")
            for i, p in enumerate(lines):
                label = f"learned, progress {p:.1f}" if drift["temporal"] else "learned (LPO)"
                colour = ("#4C72B0", "#DD8452", "#C44E52")[i]
                ax.plot(ratios, drift_curves(drift, ratios, adv, p), color=colour, label=label)
            ax.axvline(1.0, color="#ccc", lw=0.8)
            ax.set_title(f"A {'>' if adv > 0 else '<'} 0 (A = {adv:+.0f})")
            ax.set_xlabel("probability ratio r")
        axes[0].set_ylabel("drift D(r, A)")
        axes[1].legend(loc="upper center", fontsize=7)

    return figure_svg(draw, (7.5, 3.0), salt="drift")


def meta_curve_svg(history: Sequence[Mapping[str, Any]]) -> str:
    """Per generation: the ES mean's, the population's and PPO's return on the same levels."""
    g = [h["generation"] for h in history]

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        ax.plot(g, [h["mean_return"] for h in history], "o-", label="ES mean (learned drift)")
        ax.plot(g, [h["pop_mean"] for h in history], ".-", alpha=0.6, label="population mean")
        ax.plot(g, [h["ppo_return"] for h in history], "s--", color="#888", label="PPO")
        ax.set_xlabel("generation")
        ax.set_ylabel("final return (same levels, same seeds)")
        ax.legend(fontsize=7)

    return figure_svg(draw, (7.5, 3.0), salt="meta")


def levels_svg(history: Sequence[Mapping[str, Any]], env: str) -> str | None:
    """The levels trained on (first two box fields), coloured by their algorithmic regret."""
    pts = [(lv, r) for h in history for lv, r in zip(h["levels"], h["regrets"], strict=True)
           if len(lv) >= 2]
    if not pts or env not in PARAM_SPACES:
        return None
    (n0, lo0, hi0), (n1, lo1, hi1) = PARAM_SPACES[env][:2]
    x = np.array([lo0 + p[0] * (hi0 - lo0) for p, _ in pts])
    y = np.array([lo1 + p[1] * (hi1 - lo1) for p, _ in pts])
    c = np.array([r for _, r in pts])

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        sc = ax.scatter(x, y, c=c, cmap="viridis", s=18)
        fig.colorbar(sc, ax=ax, label="algorithmic regret (PPO - learned)")
        ax.set_xlabel(n0)
        ax.set_ylabel(n1)

    return figure_svg(draw, (6.0, 3.2), salt="levels")


def eval_svg(evals: Sequence[EvalResult]) -> str:
    """Learning curves (mean over seeds) per test environment, learned drift vs PPO."""
    envs = list(dict.fromkeys(e.env for e in evals))

    def draw(fig: Any) -> None:
        axes = np.atleast_1d(fig.subplots(1, len(envs)))
        for ax, env in zip(axes, envs, strict=True):
            for e in (e for e in evals if e.env == env):
                curve = np.nanmean(np.asarray(e.curves, dtype=float), axis=0)
                ax.plot(np.arange(1, len(curve) + 1), curve, label=e.algorithm)
            ax.set_title(env)
            ax.set_xlabel("update")
        axes[0].set_ylabel("episode return (training)")
        axes[-1].legend(fontsize=7)

    return figure_svg(draw, (7.5, 2.8), salt="eval")


def load_evals(out: str | Path) -> list[EvalResult]:
    """The ``eval.json`` of a run folder (empty list when there is none)."""
    path = Path(out) / "eval.json"
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"schema {data.get('schema_version')} is not {SCHEMA_VERSION}")
        return [EvalResult(**row) for row in data["results"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FileFormatError(f"{path}: not a readable LPO evaluation ({e})") from e


def save_evals(out: str | Path, evals: Sequence[EvalResult]) -> Path:
    """Write ``eval.json`` (schema-versioned) into the run folder."""
    from dataclasses import asdict

    path = Path(out) / "eval.json"
    rows = [asdict(e) for e in evals]
    path.write_text(json.dumps({"schema_version": SCHEMA_VERSION, "results": rows}),
                    encoding="utf-8")
    return path


def _config_section(man: Mapping[str, Any]) -> Section:
    cfg, hist = man["config"], man["history"]
    ppo = cfg["ppo"]
    wall = sum(h["wall_s"] for h in hist)
    updates = ppo["total_timesteps"] // (ppo["num_envs"] * ppo["num_steps"])
    rows = [("meta-training env", cfg["env"]),
            ("variant", "TA-LPO" if cfg["temporal"] else "LPO"),
            ("level sampler", cfg["sampler"]),
            ("levels per generation", cfg["levels_per_generation"]),
            ("generations done", f"{len(hist)} of {cfg['generations']}"),
            ("population", cfg["pop_size"]),
            ("ES sigma / lr", f"{cfg['es_sigma']} / {cfg['es_lr']}"),
            ("inner budget", f"{ppo['total_timesteps']} steps ({ppo['num_envs']} envs x "
                             f"{ppo['num_steps']} steps x {updates} updates)"),
            ("meta-training wall time", f"{wall:.0f} s"),
            ("libraries", ", ".join(f"{k} {v}" for k, v in man.get("libraries", {}).items()))]
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows)
    return Section("config", "Run", f"<table class='kv'>{body}</table>")


def _eval_table(evals: Sequence[EvalResult]) -> str:
    rows = "".join(
        f"<tr><td>{_esc(e.env)}</td><td>{_esc(e.algorithm)}</td><td>{e.mean:.1f}</td>"
        f"<td>{_esc(', '.join(f'{r:.1f}' for r in e.returns))}</td><td>{e.wall_s:.0f}</td></tr>"
        for e in evals)
    return ("<table><tr><th>env</th><th>algorithm</th><th>mean final return</th>"
            f"<th>per seed</th><th>wall s</th></tr>{rows}</table>")


def render_report(out: str | Path) -> str:
    """The HTML page of a run folder (manifest, drift, and eval.json when present)."""
    out = Path(out)
    man = read_manifest(out)
    drift = load_drift(out / "drift.json")
    evals = load_evals(out)
    secs = [_config_section(man)]
    if man["history"]:
        secs.append(Section("meta", "Meta-training", f"<figure>{meta_curve_svg(man['history'])}"
                            "</figure><p class='note'>Each generation trains every ES candidate, "
                            "the ES mean and PPO on the same levels with the same seeds.</p>"))
    secs.append(Section("drift", "Learned drift function",
                        f"<figure>{drift_svg(drift)}</figure><p class='note'>As in the LPO "
                        "paper's figure: D(r, A) for a positive and a negative advantage; "
                        "D = 0 with zero slope at r = 1 by construction.</p>"))
    lv = levels_svg(man["history"], man["config"]["env"])
    if lv is not None:
        secs.append(Section("levels", "Levels trained on", f"<figure>{lv}</figure>"))
    if evals:
        secs.append(Section("eval", "Test environments",
                            f"{_eval_table(evals)}<figure>{eval_svg(evals)}</figure>"))
    builders = [lambda _runs, s=s: s for s in secs]
    variant = "TA-LPO" if man["config"]["temporal"] else "LPO"
    return render_html([], sections=builders, title=f"metaskill {variant} run",
                       subtitle=f"{out} -- {man['config']['env']}, sampler "
                                f"{man['config']['sampler']}")


def write_report(out: str | Path) -> Path:
    """Write ``report.html`` into the run folder and return its path."""
    path = Path(out) / "report.html"
    path.write_text(render_report(out), encoding="utf-8")
    return path


__all__ = ["drift_curves", "drift_svg", "eval_svg", "levels_svg", "load_evals",
           "meta_curve_svg", "render_report", "save_evals", "write_report"]
