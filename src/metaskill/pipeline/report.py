"""The main job's report: a terminal summary and one self-contained HTML file.

Sections: the headline (baseline versus the candidate selected on dev, with the test gain
and its paired-bootstrap 95% interval), per-skill before/after bars, accuracy versus
tokens for every candidate with the Pareto front marked, the Missing-Skill Profile, the
training curve of each LoRA-trained task, the archive search of each task run with
``--evolve`` (its tree and progress curve, linking to its own page), and examples the
model fixed and still fails.

Example:
    >>> paired_gain([1, 1, 0, 1], [0, 1, 0, 0], seed=0)[0]
    0.5
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metaskill.eval.report import (
    Section,
    figure_svg,
    pct,
    render_html,
    skill_tip,
    svg_titles,
)
from metaskill.eval.stats import paired_gain, wilson


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _runs(task: Any, store: Any) -> dict[str, Any]:
    """Candidate name -> test Run (with records)."""
    return {c.name: store.get(c.test_run) for c in task.candidates if c.test_run}


def _scores(run: Any) -> dict[str, float]:
    return {r.example_id: r.score for r in run.records}


def headline(task: Any, store: Any) -> dict[str, Any] | None:
    """Baseline versus the selected candidate on test, with the paired gain."""
    runs = _runs(task, store)
    if "zero-shot" not in runs or task.selected not in runs:
        return None
    base, best = runs["zero-shot"], runs[task.selected]
    sb, sa = _scores(base), _scores(best)
    ids = [i for i in sa if i in sb]
    gain, lo, hi = paired_gain([sa[i] for i in ids], [sb[i] for i in ids])
    return {"task": task.task, "selected": task.selected, "n": len(ids),
            "baseline": base.accuracy, "baseline_ci": base.interval,
            "best": best.accuracy, "best_ci": best.interval,
            "gain": gain, "gain_ci": (lo, hi),
            "baseline_tokens": base.tokens_per_example,
            "best_tokens": best.tokens_per_example}


def headline_text(task: Any, store: Any) -> str | None:
    """:func:`headline` as one line of text (None when there is no headline)."""
    h = headline(task, store)
    if h is None:
        return None
    lo, hi = h["gain_ci"]
    return (f"{task.task}: zero-shot {pct(h['baseline'])} -> {h['selected']} {pct(h['best'])} "
            f"({100 * h['gain']:+.1f} pts, paired-bootstrap 95% CI "
            f"[{100 * lo:+.1f}, {100 * hi:+.1f}], n={h['n']})")


def evolve_text(task: Any) -> str | None:
    """A task's archive search in one line (None without one).

    Example:
        >>> from types import SimpleNamespace as NS
        >>> print(evolve_text(NS(task="sst2", evolve={
        ...     "root_dev": 0.5, "best": 3, "best_dev": 0.75, "nodes": 6,
        ...     "spend": {"lm_calls": 120}, "page": "a.html"})))
        sst2 archive: zero-shot dev 50.0% -> node 3 dev 75.0% (5 children, 120 LM calls); a.html
    """
    ev = getattr(task, "evolve", None)
    if not ev:
        return None
    return (f"{task.task} archive: zero-shot dev {pct(ev['root_dev'])} -> node "
            f"{ev['best']} dev {pct(ev['best_dev'])} ({ev['nodes'] - 1} children, "
            f"{ev['spend']['lm_calls']} LM calls); {ev['page']}")


def pareto(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both fewer tokens and higher accuracy.

    Example:
        >>> pareto([(10, 0.5), (20, 0.7), (30, 0.6)])
        [0, 1]
    """
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 <= x and y2 >= y) and (x2 < x or y2 > y)
                        for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


# ---- sections --------------------------------------------------------------------------
def _headline_section(job: Any, store: Any) -> Section:
    rows = []
    for t in job.tasks:
        h = headline(t, store)
        if h is None:
            continue
        lo, hi = h["gain_ci"]
        rows.append(
            f"<tr><td>{_esc(t.task)}</td><td>{pct(h['baseline'])}</td>"
            f"<td>{_esc(h['selected'])}</td><td>{pct(h['best'])}</td>"
            f"<td><b>{100 * h['gain']:+.1f} pts</b> [{100 * lo:+.1f}, {100 * hi:+.1f}]</td>"
            f"<td>n={h['n']}; tokens/ex {h['baseline_tokens']:.0f} → {h['best_tokens']:.0f}"
            f"</td></tr>")
    body = ("<p>Test accuracy of the zero-shot baseline and of the candidate selected on "
            "<b>dev</b> (never on test). The gain's interval is a paired bootstrap over "
            "test examples (95%).</p><table><tr><th>task</th><th>baseline</th>"
            "<th>selected</th><th>accuracy</th><th>gain [95% CI]</th><th>details</th></tr>"
            + "".join(rows) + "</table>")
    cfg = job.config
    body += (f"<p class='note'>model <code>{_esc(cfg['model'])}</code>, "
             f"{job.seconds / 60:.1f} min wall time, token budget "
             f"{_esc(cfg.get('budget_tokens') or 'none')}, time budget "
             f"{_esc(cfg.get('time_budget_s') or 'none')} s.</p>")
    if job.skipped:
        body += "<p class='note'>Skipped: " + "; ".join(_esc(s) for s in job.skipped) + "</p>"
    plan = getattr(job, "plan", None) or {}
    if plan.get("lines"):
        body += ("<p class='note'>Time plan (measured at the start): "
                 + "<br>".join(_esc(x.strip()) for x in plan["lines"]) + "</p>")
    return Section("headline", "Headline", body)


def skill_tips(skills: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Skill name -> hover text (description and one member example) from a task's skills.

    A skill found from the task's own labels is also reachable under its raw label (the
    name test records carry).

    Example:
        >>> tips = skill_tips([{"name": "numeric", "description": "Mostly 'numeric'.",
        ...                     "metadata": {"example": "How far is the moon?"}}])
        >>> print(tips["numeric"])
        numeric: Mostly 'numeric'.
        e.g. How far is the moon?
    """
    out: dict[str, str] = {}
    for s in skills:
        meta = s.get("metadata") or {}
        tip = skill_tip(s["name"], s.get("description", ""), str(meta.get("example") or ""))
        out[s["name"]] = tip
        if s.get("source") == "labels" and isinstance(meta.get("label"), str):
            out.setdefault(meta["label"], tip)
    return out


def _skills_before_after(job: Any, store: Any) -> Section | None:
    parts = []
    for k, t in enumerate(job.tasks):
        runs = _runs(t, store)
        if "zero-shot" not in runs or t.selected not in runs:
            continue
        rows = []
        for label, run in (("baseline", runs["zero-shot"]), (t.selected, runs[t.selected])):
            per: dict[str, list[float]] = {}
            for r in run.records:
                for s in (r.skills or t.skill_map.get(r.example_id, [])) or ["(none)"]:
                    per.setdefault(s, []).append(r.score)
            rows.append((label, per))
        skills = sorted(set(rows[0][1]) | set(rows[1][1]),
                        key=lambda s: -len(rows[0][1].get(s, [])))[:25]

        gid = f"batip{k}"
        tips = skill_tips(t.skills)

        def draw(fig: Any, rows: Any = rows, skills: list[str] = skills, gid: str = gid,
                 tips: dict[str, str] = tips) -> None:
            ax = fig.add_subplot()
            colours = ["#8C8C8C", "#4C72B0"]
            h = 0.38
            for j, (label, per) in enumerate(rows):
                ys, xs, lo, hi = [], [], [], []
                for i, s in enumerate(skills):
                    v = per.get(s, [])
                    if not v:
                        continue
                    acc = sum(v) / len(v)
                    w_lo, w_hi = wilson(sum(v), len(v))
                    ys.append(i + (j - 0.5) * h)
                    xs.append(acc)
                    lo.append(max(0.0, acc - w_lo))
                    hi.append(max(0.0, w_hi - acc))
                bars = ax.barh(ys, xs, height=h * 0.92, color=colours[j], label=label,
                               xerr=[lo, hi], error_kw={"elinewidth": 0.7, "capsize": 2})
                drawn = [i for i, s in enumerate(skills) if per.get(s)]
                for i, bar in zip(drawn, bars.patches, strict=True):
                    if skills[i] in tips:
                        bar.set_gid(f"{gid}-{i}-bar{j}")
            ax.set_yticks(range(len(skills)))
            ax.set_yticklabels([f"{s} (n={len(rows[0][1].get(s, []))})" for s in skills])
            for i, tick in enumerate(ax.get_yticklabels()):
                if skills[i] in tips:
                    tick.set_gid(f"{gid}-{i}-label")
            ax.invert_yaxis()
            ax.set_xlim(0, 1)
            ax.xaxis.set_major_formatter(lambda x, _: f"{100 * x:.0f}%")
            ax.set_xlabel("test accuracy (Wilson 95% interval)")
            ax.legend(loc="lower right", fontsize=7)

        svg = figure_svg(draw, (7.5, 1.2 + 0.32 * len(skills)), salt=f"ba-{t.task}")
        svg = svg_titles(svg, {f"{gid}-{i}-{part}": tips[s] for i, s in enumerate(skills)
                               if s in tips for part in ("label", "bar0", "bar1")})
        parts.append(f"<h3>{_esc(t.task)}</h3><figure>{svg}</figure>")
    if not parts:
        return None
    note = ("<p class='note'>Skills come from the task's labels or from the discovered "
            "SkillBook (each test input is assigned its nearest skill by embedding; the "
            "reference answer is never used). A discovered cluster is named by the majority "
            "label of its training examples where the task has labels, else by a teacher, "
            "else by its distinctive words; rest the pointer on a skill to see one of its "
            "training examples.</p>")
    return Section("skills", "Per-skill accuracy, before and after", note + "".join(parts))


def _pareto_section(job: Any, store: Any) -> Section | None:
    parts = []
    for t in job.tasks:
        runs = _runs(t, store)
        if not runs:
            continue
        names = list(runs)
        pts = [(runs[n].tokens_per_example, runs[n].accuracy) for n in names]
        front = set(pareto(pts))

        def draw(fig: Any, names: list[str] = names, pts: Any = pts, front: set[int] = front,
                 runs: Any = runs, sel: str | None = t.selected) -> None:
            ax = fig.add_subplot()
            fx = sorted(pts[i] for i in front)
            # the front is the best accuracy reachable within x tokens: a step that
            # carries its last level on to the costliest candidate
            fx.append((max(p[0] for p in pts), fx[-1][1]))
            ax.step([p[0] for p in fx], [p[1] for p in fx], where="post", color="#55A868",
                    lw=1.2, label="Pareto front")
            for i, n in enumerate(names):
                lo, hi = runs[n].interval
                x, y = pts[i]
                ax.errorbar([x], [y], yerr=[[y - lo], [hi - y]], fmt="o",
                            color="#C44E52" if n == sel else
                            ("#55A868" if i in front else "#4C72B0"),
                            markersize=7 if n == sel else 5, capsize=3, elinewidth=0.8)
                ax.annotate(n + (" (selected)" if n == sel else ""), (x, y),
                            textcoords="offset points", xytext=(6, 4), fontsize=7)
            ax.set_xlabel("tokens per example (prompt + completion)")
            ax.set_ylabel("test accuracy")
            ax.yaxis.set_major_formatter(lambda y, _: f"{100 * y:.0f}%")
            ax.margins(x=0.18, y=0.08)  # room for the end points and their labels
            ax.legend(loc="best", fontsize=7)

        svg = figure_svg(draw, (7.5, 3.4), salt=f"pareto-{t.task}")
        rows = "".join(
            f"<tr><td>{_esc(n)}{' ★' if n == t.selected else ''}</td>"
            f"<td>{pct(c.dev_accuracy)}</td><td>{pct(runs[n].accuracy)} "
            f"[{pct(runs[n].interval[0])}, {pct(runs[n].interval[1])}]</td>"
            f"<td>{runs[n].tokens_per_example:.0f}</td><td>{runs[n].totals.wall_s:.0f}</td>"
            f"<td>{'yes' if i in front else ''}</td><td>{_esc(c.note)}</td></tr>"
            for i, n in enumerate(names)
            for c in [next(c for c in t.candidates if c.name == n)])
        parts.append(
            f"<h3>{_esc(t.task)}</h3><figure>{svg}</figure><table><tr><th>candidate</th>"
            "<th>dev acc</th><th>test acc [95%]</th><th>tokens/ex</th><th>wall s</th>"
            f"<th>Pareto</th><th>note</th></tr>{rows}</table>")
    if not parts:
        return None
    return Section("pareto", "Accuracy versus tokens", "".join(parts))


def _profile_section(job: Any, store: Any) -> Section | None:
    from metaskill.skills.profile import Profile, profile_section_html

    parts = []
    for t in job.tasks:
        if not t.profile:
            continue
        p = Profile.model_validate(t.profile)
        parts.append(f"<h3>{_esc(t.task)}</h3>{profile_section_html(p, examples=4)}")
    if not parts:
        return None
    return Section("profile", "Missing-Skill Profile (baseline, dev)", "".join(parts))


def _training_section(job: Any, store: Any) -> Section | None:
    parts = []
    for t in job.tasks:
        tr = t.training
        if not tr or not tr.get("curve"):
            continue
        curve = tr["curve"]

        n = tr.get("curve_n", "?")

        def draw(fig: Any, curve: list[dict[str, Any]] = curve, n: Any = n,
                 tr: dict[str, Any] = tr) -> None:
            ax = fig.add_subplot()
            lines = ax.plot([c["step"] for c in curve], [c["accuracy"] for c in curve], "o-",
                            color="#4C72B0", label=f"dev accuracy (n={n})")
            ax.set_xlabel("training step")
            ax.set_ylabel("accuracy")
            ax.set_ylim(0, 1.02)
            ax.yaxis.set_major_formatter(lambda y, _: f"{100 * y:.0f}%")
            losses = tr.get("losses") or []
            if losses:  # every step's batch loss
                xs, ys = list(range(1, len(losses) + 1)), losses
            else:  # older results: the loss at each checkpoint only
                with_loss = [c for c in curve if c.get("loss") is not None]
                xs, ys = [c["step"] for c in with_loss], [c["loss"] for c in with_loss]
            if ys:
                ax2 = ax.twinx()
                lines += ax2.plot(xs, ys, "-", color="#DD8452", lw=0.9, alpha=0.8,
                                  label="training loss (batch)")
                ax2.set_ylabel("loss")
                ax2.set_ylim(bottom=0)
            ax.legend(lines, [ln.get_label() for ln in lines], loc="center right",
                      fontsize=7)

        svg = figure_svg(draw, (7.0, 3.0), salt=f"train-{t.task}")
        cost = ""
        if tr.get("steps"):
            skills = ", ".join(f"{_esc(k)} x{v}" for k, v in
                               sorted((tr.get("data_skills") or {}).items(),
                                      key=lambda kv: -kv[1])[:8])
            cost = (f"{tr['steps']} steps on {tr.get('n_examples', '?')} examples "
                    f"({skills or 'no skill labels'}); {tr.get('seconds', 0):.0f} s of "
                    f"training, {tr.get('seconds_per_step', 0):.2f} s/step, peak memory "
                    f"{tr.get('peak_rss_mb', 0):.0f} MiB. Adapter: "
                    f"<code>{_esc(tr.get('adapter', ''))}</code>")
        parts.append(f"<h3>{_esc(t.task)}: LoRA ({_esc(tr.get('method', ''))})</h3>"
                     f"<figure>{svg}</figure>"
                     f"<p class='note'>{_esc(tr.get('note', ''))}. {cost}</p>")
    if not parts:
        return None
    return Section("training", "Training", "".join(parts))


def _evolve_section(job: Any, store: Any) -> Section | None:
    """Each task's archive search: the numbers, its tree and progress curve, and a link to
    its own page (``evolve-TASK/archive.html`` next to this report)."""
    from metaskill.core.errors import MetaskillError
    from metaskill.evolve.archive import ARCHIVE_FILE, Archive
    from metaskill.evolve.report import archive_sections

    parts = []
    for k, t in enumerate(job.tasks):
        ev = getattr(t, "evolve", None)
        if not ev:
            continue
        sp, ch = ev["spend"], ev["children"]
        lo, hi = ev["dev_gain"][1:]
        parts.append(
            f"<h3>{_esc(t.task)}</h3><p>Root (zero-shot) dev {pct(ev['root_dev'])}; best "
            f"node #{ev['best']} dev {pct(ev['best_dev'])} (n={ev['best_n']}; paired gain "
            f"{100 * ev['dev_gain'][0]:+.1f} pts [{100 * lo:+.1f}, {100 * hi:+.1f}]): "
            f"<code>{_esc(ev['recipe'])}</code>. {ev['nodes'] - 1} children ({ch['valid']} "
            f"valid, {ch['pruned']} pruned, {ch['invalid']} invalid), {sp['lm_calls']} LM "
            f"calls, {sp['tokens']:,} tokens, {sp['wall_s']:.0f} s"
            + (f"; stopped: {_esc(sp['stopped'])}" if sp.get("stopped") else "")
            + f". <a href='{_esc(ev['page_href'])}'>The archive page</a> has the mutation "
            "kinds, the best path and every node.</p>")
        folder = Path(ev["folder"])
        if not (folder / ARCHIVE_FILE).is_file():
            parts.append("<p class='note'>(the archive file is gone)</p>")
            continue
        try:
            secs = {s.id: s for s in archive_sections(Archive(folder), prefix=f"ev{k}-")}
        except MetaskillError as e:
            parts.append(f"<p class='note'>{_esc(e)}</p>")
            continue
        parts += [secs[i].html for i in (f"ev{k}-tree", f"ev{k}-progress") if i in secs]
    if not parts:
        return None
    note = ("<p class='note'>The archive search (<code>--evolve</code>) grows Solvers from "
            "zero-shot in the manner of the Darwin Gödel Machine and selects on dev only; "
            "its best node is the <code>evolve</code> candidate above.</p>")
    return Section("evolve", "Archive search", note + "".join(parts))


def _examples_section(job: Any, store: Any, n: int = 4) -> Section | None:
    parts = []
    for t in job.tasks:
        runs = _runs(t, store)
        if "zero-shot" not in runs or t.selected not in runs:
            continue
        base = {r.example_id: r for r in runs["zero-shot"].records}
        best = {r.example_id: r for r in runs[t.selected].records}
        fixed = [i for i in best if i in base and best[i].score > base[i].score][:n]
        still = [i for i in best if i in base and best[i].score == 0 and base[i].score == 0][:n]

        def block(ids: list[str], title: str, t: Any = t, base: Any = base,
                  best: Any = best) -> str:
            items = "".join(
                f"<div class='fail'><b>{_esc(i)}</b> reference <code>{_esc(best[i].reference)}"
                f"</code><br>baseline: <code>{_esc(base[i].raw.strip()[:200])}</code><br>"
                f"{_esc(t.selected)}: <code>{_esc(best[i].raw.strip()[:200])}</code>"
                "<details><summary>prompt</summary>"
                f"<pre>{_esc(best[i].prompt[-1500:])}</pre></details></div>" for i in ids)
            return f"<h4>{title} ({len(ids)} shown)</h4>{items or '<p>none</p>'}"

        parts.append(f"<h3>{_esc(t.task)}</h3>" + block(fixed, "Fixed")
                     + block(still, "Still failing"))
    if not parts:
        return None
    return Section("examples", "Examples fixed and still failing", "".join(parts))


def write_job_report(job: Any, store: Any, path: str | Path) -> Path:
    """Write the main job's HTML report and return its path."""
    builders = [_headline_section, _skills_before_after, _pareto_section, _profile_section,
                _training_section, _evolve_section, _examples_section]
    sections = [lambda runs, b=b: b(job, store) for b in builders]
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    title = f"metaskill run: {job.config['model']} on {', '.join(job.config['tasks'])}"
    page = render_html([], sections=sections, title=title)
    # render_html counts the runs it was given; this report reads them from the store.
    page = page.replace("<p>No runs.</p>", "").replace("0 run(s); generated", "Generated")
    p.write_text(page, encoding="utf-8")
    return p


def summary_rows(job: Any, store: Any) -> list[dict[str, Any]]:
    """One row per (task, candidate): dev and test accuracy, tokens, wall time."""
    rows = []
    for t in job.tasks:
        runs = _runs(t, store)
        for c in t.candidates:
            run = runs.get(c.name)
            rows.append({
                "task": t.task, "candidate": c.name, "selected": c.name == t.selected,
                "dev": c.dev_accuracy, "test": run.accuracy if run else None,
                "ci": run.interval if run else None,
                "tokens": run.tokens_per_example if run else None,
                "wall_s": run.totals.wall_s if run else None, "note": c.note,
            })
    return rows


def summary_markdown(job: Any, store: Any) -> str:
    """The summary as Markdown (for the README and benchmarks/results): the per-candidate
    table, one headline line per task, the training cost and what was skipped."""
    lines = ["| task | candidate | dev acc | test acc [95% CI] | tokens/ex | wall s |",
             "|---|---|---|---|---|---|"]
    for r in summary_rows(job, store):
        ci = f" [{pct(r['ci'][0])}, {pct(r['ci'][1])}]" if r["ci"] else ""
        name = f"**{r['candidate']}** (selected)" if r["selected"] else r["candidate"]
        tok = f"{r['tokens']:.0f}" if r["tokens"] is not None else "-"
        wall = f"{r['wall_s']:.0f}" if r["wall_s"] is not None else "-"
        lines.append(f"| {r['task']} | {name} | {pct(r['dev'])} | {pct(r['test'])}{ci} "
                     f"| {tok} | {wall} |")
    lines.append("")
    lines += [f"- {line}" for t in job.tasks if (line := headline_text(t, store))]
    for t in job.tasks:
        tr = t.training
        if tr and tr.get("curve"):
            curve = ", ".join(f"step {c['step']} {pct(c['accuracy'])}" for c in tr["curve"])
            lines.append(f"- {t.task} training ({tr.get('method')}): dev curve (n="
                         f"{tr.get('curve_n')}) {curve}; {tr.get('steps')} steps on "
                         f"{tr.get('n_examples')} examples, {tr.get('seconds', 0):.0f} s, "
                         f"{tr.get('seconds_per_step', 0):.2f} s/step, peak memory "
                         f"{tr.get('peak_rss_mb', 0):.0f} MiB")
    lines += [f"- {line}" for t in job.tasks if (line := evolve_text(t))]
    for sk in job.skipped:
        lines.append(f"- skipped: {sk}")
    for p in (getattr(job, "plan", None) or {}).get("lines", []):
        lines.append(f"- {p.strip()}")
    lines.append(f"- wall time of the job: {job.seconds / 60:.1f} min")
    return "\n".join(lines) + "\n"


def print_summary(job: Any, store: Any, console: Any) -> None:
    """Print the headline and the per-candidate table to ``console``."""
    from rich.table import Table

    table = Table(title="metaskill run", title_justify="left")
    for col in ("task", "candidate", "dev acc", "test acc [95% CI]", "tokens/ex", "wall s"):
        table.add_column(col)
    for r in summary_rows(job, store):
        ci = f" [{pct(r['ci'][0])}, {pct(r['ci'][1])}]" if r["ci"] else ""
        table.add_row(r["task"], ("★ " if r["selected"] else "") + r["candidate"],
                      pct(r["dev"]), f"{pct(r['test'])}{ci}",
                      f"{r['tokens']:.0f}" if r["tokens"] is not None else "-",
                      f"{r['wall_s']:.0f}" if r["wall_s"] is not None else "-")
    console.print(table)
    for t in job.tasks:
        line = headline_text(t, store)
        if line:
            console.print(line, highlight=False, markup=False)
    for t in job.tasks:
        line = evolve_text(t)
        if line:
            console.print(line, highlight=False, markup=False)
    for s in job.skipped:
        console.print(f"[yellow]skipped:[/] {s}", highlight=False)
    console.print(f"report: {job.report}  ({job.seconds / 60:.1f} min)", highlight=False)
