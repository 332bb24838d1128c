"""Reports of Runs: rich terminal tables and one self-contained HTML file.

The HTML page is a list of sections, each built by a *section builder*: a function
``(runs) -> Section | None`` (None leaves the section out). :data:`DEFAULT_SECTIONS` holds
the built-ins -- overview table, per-skill bars with Wilson intervals, accuracy versus
tokens across runs, a few failed examples with their outputs. A later report part (a
Missing-Skill Profile chart, before/after, a Pareto front) is one more builder:

    >>> def notes(runs):
    ...     return Section("notes", "Notes", f"<p>{len(runs)} runs</p>")
    >>> html = render_html([], sections=(*DEFAULT_SECTIONS, notes))
    >>> "<p>0 runs</p>" in html
    True

Plots are drawn with matplotlib (imported only when a plot is made; the ``report``
extra) and inlined as SVG, so the file needs nothing outside itself: no scripts, no
fonts, no URLs.
"""

from __future__ import annotations

import html
import io
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metaskill.core.errors import MetaskillError
from metaskill.eval.run import Record, Run, SkillStat
from metaskill.eval.store import Comparison

MAX_SKILLS_PLOTTED = 40


@dataclass(frozen=True)
class Section:
    """One section of the HTML report.

    Attributes:
        id: anchor id (letters, digits, dashes).
        title: heading shown in the page and its table of contents.
        html: the section body (already escaped; inline SVG allowed).
    """

    id: str
    title: str
    html: str


SectionBuilder = Callable[[Sequence[Run]], "Section | None"]


# ---- formatting helpers ------------------------------------------------------------
def pct(x: float | None, digits: int = 1) -> str:
    """A fraction as a percentage string (``-`` for None).

    Example:
        >>> pct(0.8123)
        '81.2%'
    """
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def interval_text(lo: float, hi: float) -> str:
    """A Wilson interval as ``[lo, hi]`` in percent."""
    return f"[{100 * lo:.1f}, {100 * hi:.1f}]"


def human_tokens(n: float) -> str:
    """A token count, shortened (``12.3k``, ``4.5M``).

    Example:
        >>> human_tokens(12345)
        '12.3k'
    """
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}k"
    return f"{n:.0f}"


def human_seconds(s: float) -> str:
    """Seconds as ``1h02m``, ``3m05s`` or ``4.2s``."""
    if s >= 3600:
        return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"
    if s >= 60:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{s:.1f}s"


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(t))


def _esc(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


# ---- terminal tables (rich) ------------------------------------------------------------
def runs_table(runs: Sequence[Run], title: str | None = None) -> Any:
    """A rich Table with one row per run: task, solver, model, n, accuracy, tokens, time."""
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for col, just in [("run", "left"), ("created (UTC)", "left"), ("task", "left"),
                      ("split", "left"), ("solver", "left"), ("model", "left"),
                      ("status", "left"), ("n", "right"), ("accuracy", "right"),
                      ("95% CI", "right"), ("err", "right"), ("tokens", "right"),
                      ("wall", "right")]:
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in runs:
        status = {"done": "[green]done[/]", "failed": "[red]failed[/]",
                  "interrupted": "[yellow]interrupted[/]"}.get(r.status, r.status)
        n = f"{r.n}/{len(r.selection)}" if r.selection and r.n < len(r.selection) else str(r.n)
        t.add_row(r.id, _when(r.created), f"{r.task} v{r.task_version}", r.split, r.label,
                  str(r.model or "-"), status, n, pct(r.accuracy), interval_text(*r.interval),
                  str(r.totals.errors), human_tokens(r.totals.tokens),
                  human_seconds(r.totals.wall_s))
    return t


def skills_table(run: Run) -> Any:
    """A rich Table of one run's per-skill accuracy with Wilson intervals (``all`` first)."""
    from rich.table import Table

    t = Table(title=f"per-skill accuracy, run {run.id}", title_justify="left")
    for col, just in [("skill", "left"), ("n", "right"), ("accuracy", "right"),
                      ("95% CI", "right")]:
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    t.add_row("[bold]all[/]", str(run.n), f"[bold]{pct(run.accuracy)}[/]",
              interval_text(*run.interval))
    for s in run.per_skill:
        t.add_row(s.skill, str(s.n), pct(s.accuracy), interval_text(s.low, s.high))
    return t


def comparison_table(cmp: Comparison) -> Any:
    """A rich Table of runs side by side: accuracy per skill and delta vs the first run."""
    from rich.table import Table

    t = Table(title="per-skill accuracy (delta vs the first run)", title_justify="left")
    t.add_column("skill")
    for i, r in enumerate(cmp.runs):
        t.add_column(f"{r.id}\n{r.label}", justify="right")
        if i:
            t.add_column("delta", justify="right")

    def cells(row: Any) -> list[str]:
        out = []
        for i, (a, n) in enumerate(zip(row.accuracy, row.n, strict=True)):
            out.append(f"{pct(a)} (n={n})" if a is not None else "-")
            if i:
                d = row.delta[i]
                if d is None:
                    out.append("-")
                else:
                    colour = "green" if d > 0 else "red" if d < 0 else "white"
                    out.append(f"[{colour}]{100 * d:+.1f}[/]")
        return out

    t.add_row("[bold]all[/]", *cells(cmp.overall))
    for row in cmp.skills:
        t.add_row(row.skill, *cells(row))
    return t


def print_run(run: Run, console: Any = None, failures: int = 0) -> None:
    """Print one run: summary line, per-skill table, and up to ``failures`` failed examples."""
    from rich.console import Console

    console = console or Console()
    lo, hi = run.interval
    console.print(
        f"run [bold]{run.id}[/]  {run.task} v{run.task_version}/{run.split}  {run.label}  "
        f"model {run.model or '-'}  status {run.status}"
        + (f"  ({run.note})" if run.note else ""),
        highlight=False, soft_wrap=True,
    )
    console.print(
        f"accuracy [bold]{pct(run.accuracy)}[/] (95% CI {interval_text(lo, hi)}) on "
        f"{run.n} examples, {run.totals.errors} errors; tokens "
        f"{run.totals.tokens:,} ({run.totals.prompt_tokens:,} prompt + "
        f"{run.totals.completion_tokens:,} completion); wall {human_seconds(run.totals.wall_s)}",
        highlight=False, soft_wrap=True,
    )
    if run.records:
        console.print(skills_table(run))
    from rich.markup import escape

    for r in run.failures[:failures]:
        console.print(
            "[red]x[/] " + escape(
                f"{r.example_id}: output {_clip(r.raw.strip(), 80)!r} -> {r.parsed!r}, "
                f"reference {r.reference!r}: {r.error or r.reason}"),
            highlight=False, soft_wrap=True,
        )


# ---- plots (matplotlib -> inline SVG) ------------------------------------------------
def _mpl() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MetaskillError(
            "HTML reports need matplotlib: pip install 'metaskill[report]' (or matplotlib)."
        ) from e
    return matplotlib, Figure


_RC = {
    "svg.fonttype": "none",  # text stays text: small files, crisp at any zoom
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],  # ships with matplotlib
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}


def figure_svg(draw: Callable[[Any], None], size: tuple[float, float], salt: str) -> str:
    """Draw on a fresh matplotlib Figure and return it as an inline ``<svg>`` element.

    Args:
        draw: called with the Figure; adds axes and artists.
        size: figure size in inches.
        salt: makes the SVG's internal ids unique within the page.
    """
    matplotlib, figure_cls = _mpl()
    with matplotlib.rc_context({**_RC, "svg.hashsalt": salt}):
        fig = figure_cls(figsize=size, layout="constrained")
        draw(fig)
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None,
                                                 "Format": None, "Type": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]  # drop the XML declaration and DOCTYPE
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    svg = re.sub(r'(<svg[^>]*?) width="[^"]*" height="[^"]*"',
                 r'\1 class="plot" preserveAspectRatio="xMinYMin meet"', svg, count=1)
    return svg


_GROUP = re.compile(r'<g id="([A-Za-z0-9_-]+)">')


def svg_titles(svg: str, titles: Mapping[str, str]) -> str:
    """Give the groups of an SVG whose ids are in ``titles`` a ``<title>`` (a hover tooltip).

    matplotlib writes an artist whose gid is set (``artist.set_gid("tip-0")``) as
    ``<g id="tip-0">``; the title becomes that group's first child, which browsers show
    when the pointer rests on the artist. Ids not in ``titles`` are left alone.

    Example:
        >>> svg_titles('<svg><g id="tip-0"><text>x</text></g></svg>', {"tip-0": "a < b"})
        '<svg><g id="tip-0"><title>a &lt; b</title><text>x</text></g></svg>'
    """
    def add(m: re.Match[str]) -> str:
        text = titles.get(m.group(1))
        return m.group(0) if not text else f"{m.group(0)}<title>{_esc(text)}</title>"

    return _GROUP.sub(add, svg)


def skill_tip(name: str, description: str = "", example: str = "") -> str:
    """The hover text of one skill: its name, description and one member example.

    Example:
        >>> print(skill_tip("numeric", "Mostly 'numeric'.", "How far is the moon?"))
        numeric: Mostly 'numeric'.
        e.g. How far is the moon?
    """
    head = f"{name}: {description}" if description else name
    return f"{head}\ne.g. {_clip(example, 300)}" if example else head


def _colours(n: int) -> list[str]:
    base = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3",
            "#8C8C8C", "#CCB974", "#64B5CD"]
    return [base[i % len(base)] for i in range(n)]


def skill_bars_svg(runs: Sequence[Run], tips: Mapping[str, str] | None = None) -> str:
    """Horizontal bars of per-skill accuracy (one bar per run) with Wilson 95% intervals.

    Args:
        runs: the runs.
        tips: skill name -> hover text (e.g. :func:`skill_tip`), shown on the skill's label
            and bars.
    """
    rows: list[tuple[str, list[SkillStat | None]]] = []
    overall = [SkillStat(skill="all", n=r.n, score=r.totals.score, low=r.interval[0],
                         high=r.interval[1]) for r in runs]
    rows.append(("all", list(overall)))
    per = [{s.skill: s for s in r.per_skill} for r in runs]
    names = sorted(set().union(*[set(p) for p in per]),
                   key=lambda s: -max(p[s].n if s in p else 0 for p in per))
    for name in sorted(names[:MAX_SKILLS_PLOTTED]):
        rows.append((name, [p.get(name) for p in per]))
    row_tips = _row_tips([name for name, _ in rows], tips or {}, len(runs))
    colours = _colours(len(runs))
    height = 1.0 + 0.22 * len(rows) * max(1, len(runs)) ** 0.8 + 0.15 * (len(runs) > 1) * (
        1 + len(runs) // 3)

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        bar_h = 0.8 / max(1, len(runs))
        for j, run in enumerate(runs):
            ys, xs, lo, hi = [], [], [], []
            for i, (_, stats) in enumerate(rows):
                s = stats[j]
                if s is None:
                    continue
                y = i - 0.4 + bar_h * (j + 0.5)
                ys.append(y)
                xs.append(s.accuracy)
                lo.append(max(0.0, s.accuracy - s.low))
                hi.append(max(0.0, s.high - s.accuracy))
            bars = ax.barh(ys, xs, height=bar_h * 0.9, color=colours[j], alpha=0.85,
                           xerr=[lo, hi], error_kw={"ecolor": "#333", "elinewidth": 0.8,
                                                     "capsize": 2},
                           label=f"{run.id} ({run.label})")
            rows_drawn = [i for i, (_, stats) in enumerate(rows) if stats[j] is not None]
            for i, bar in zip(rows_drawn, bars.patches, strict=True):
                if f"skilltip-{i}-label" in row_tips:
                    bar.set_gid(f"skilltip-{i}-bar{j}")
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([f"{name} (n={max(s.n for s in st if s)})" for name, st in rows])
        for i, tick in enumerate(ax.get_yticklabels()):
            if f"skilltip-{i}-label" in row_tips:
                tick.set_gid(f"skilltip-{i}-label")
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("accuracy (bars: Wilson 95% interval)")
        ax.xaxis.set_major_formatter(lambda x, _: f"{100 * x:.0f}%")
        if len(runs) > 1:
            fig.legend(loc="outside lower center", ncols=min(3, len(runs)), fontsize=7,
                       frameon=False)

    return svg_titles(figure_svg(draw, (7.5, height), salt="skills"), row_tips)


def _row_tips(names: Sequence[str], tips: Mapping[str, str], n_bars: int) -> dict[str, str]:
    """gid -> hover text for the label and bars of each plotted skill row."""
    out: dict[str, str] = {}
    for i, name in enumerate(names):
        if tips.get(name):
            out[f"skilltip-{i}-label"] = tips[name]
            out.update({f"skilltip-{i}-bar{j}": tips[name] for j in range(n_bars)})
    return out


def accuracy_tokens_svg(runs: Sequence[Run]) -> str:
    """Scatter of accuracy (with Wilson intervals) against mean tokens per example."""
    tasks = sorted({r.task for r in runs})
    colour = dict(zip(tasks, _colours(len(tasks)), strict=True))

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        for task in tasks:
            rs = [r for r in runs if r.task == task]
            xs = [max(r.tokens_per_example, 1e-9) for r in rs]
            ys = [r.accuracy for r in rs]
            err = [[r.accuracy - r.interval[0] for r in rs],
                   [r.interval[1] - r.accuracy for r in rs]]
            ax.errorbar(xs, ys, yerr=err, fmt="o", color=colour[task], ecolor=colour[task],
                        elinewidth=0.8, capsize=3, markersize=6, label=task)
            for r, x, y in zip(rs, xs, ys, strict=True):
                ax.annotate(r.label, (x, y), textcoords="offset points", xytext=(6, 4),
                            fontsize=7)
        xs_all = [r.tokens_per_example for r in runs if r.tokens_per_example > 0]
        if xs_all and max(xs_all) / min(xs_all) > 20:
            ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.yaxis.set_major_formatter(lambda y, _: f"{100 * y:.0f}%")
        ax.set_xlabel("tokens per example (prompt + completion)")
        ax.set_ylabel("accuracy")
        ax.legend(loc="lower right", fontsize=7, title="task", title_fontsize=7)

    return figure_svg(draw, (7.5, 3.6), salt="scatter")


# ---- section builders ----------------------------------------------------------------
def overview_section(runs: Sequence[Run]) -> Section | None:
    """A table of the runs: task, solver, model, n, accuracy with interval, tokens, time."""
    if not runs:
        return None
    head = ("run", "created (UTC)", "task", "split", "solver", "model", "status", "n",
            "accuracy", "95% CI", "errors", "tokens", "tokens/ex", "wall")
    rows = []
    for r in runs:
        cells = (r.id, _when(r.created), f"{r.task} v{r.task_version}", r.split, r.label,
                 r.model or "-", r.status + (f" ({r.note})" if r.note else ""), r.n,
                 pct(r.accuracy), interval_text(*r.interval), r.totals.errors,
                 f"{r.totals.tokens:,}", f"{r.tokens_per_example:.0f}",
                 human_seconds(r.totals.wall_s))
        rows.append("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in cells) + "</tr>")
    body = ("<table><thead><tr>" + "".join(f"<th>{h}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")
    return Section("overview", "Runs", body)


def skills_section(runs: Sequence[Run], tips: Mapping[str, str] | None = None) -> Section | None:
    """Per-skill accuracy bars with Wilson 95% intervals, and the numbers in a table.

    Args:
        runs: the runs.
        tips: skill name -> hover text (a member example, :func:`skill_tip`) for the bars'
            labels and the table's skill cells; bind it with ``functools.partial`` to use
            this as a section builder.
    """
    if not runs:
        return None
    tips = tips or {}
    svg = skill_bars_svg(runs, tips)
    per = [{s.skill: s for s in r.per_skill} for r in runs]
    names = sorted(set().union(*[set(p) for p in per]))
    head = "<tr><th>skill</th>" + "".join(
        f"<th>{_esc(r.id)}<br><small>{_esc(r.label)}</small></th>" for r in runs) + "</tr>"
    rows = ["<tr><td><b>all</b></td>" + "".join(
        f"<td><b>{pct(r.accuracy)}</b> <small>{interval_text(*r.interval)} n={r.n}</small></td>"
        for r in runs) + "</tr>"]
    for name in names:
        cells = []
        for p in per:
            s = p.get(name)
            cells.append("<td>-</td>" if s is None else
                         f"<td>{pct(s.accuracy)} <small>{interval_text(s.low, s.high)} "
                         f"n={s.n}</small></td>")
        tip = f" title='{_esc(tips[name])}'" if tips.get(name) else ""
        rows.append(f"<tr><td{tip}>{_esc(name)}</td>{''.join(cells)}</tr>")
    note = "" if names else "<p class='note'>The examples carry no skills; only overall " \
                            "accuracy is shown.</p>"
    if len(names) > MAX_SKILLS_PLOTTED:
        note += (f"<p class='note'>The plot shows the {MAX_SKILLS_PLOTTED} skills with most "
                 "examples; the table has all of them.</p>")
    body = (f"<figure>{svg}</figure>{note}<details><summary>numbers</summary><table>"
            f"<thead>{head}</thead><tbody>{''.join(rows)}</tbody></table></details>")
    return Section("skills", "Per-skill accuracy", body)


def tokens_section(runs: Sequence[Run]) -> Section | None:
    """Accuracy versus tokens per example across runs."""
    if not runs:
        return None
    svg = accuracy_tokens_svg(runs)
    return Section("tokens", "Accuracy versus tokens", f"<figure>{svg}</figure>"
                   "<p class='note'>Each point is a run; error bars are Wilson 95% "
                   "intervals. Up and to the left is better.</p>")


def failures_section(runs: Sequence[Run], per_run: int = 5) -> Section | None:
    """A few failed examples of each run with prompt, raw output, parsed answer, reason."""
    parts = []
    for r in runs:
        bad: list[Record] = r.failures[:per_run]
        if not bad:
            continue
        items = []
        for rec in bad:
            items.append(
                "<div class='fail'>"
                f"<div><b>{_esc(rec.example_id)}</b>"
                + (f" <span class='skill'>{_esc(', '.join(rec.skills))}</span>"
                   if rec.skills else "")
                + (" <span class='err'>error</span>" if rec.error else "")
                + "</div><table class='kv'>"
                f"<tr><th>output</th><td><pre>{_esc(_clip(rec.raw, 2000))}</pre></td></tr>"
                f"<tr><th>parsed</th><td>{_esc(rec.parsed)}</td></tr>"
                f"<tr><th>reference</th><td>{_esc(rec.reference)}</td></tr>"
                f"<tr><th>reason</th><td>{_esc(rec.error or rec.reason)}</td></tr>"
                "</table><details><summary>prompt</summary>"
                f"<pre>{_esc(_clip(rec.prompt, 6000))}</pre></details></div>"
            )
        n_bad = sum(1 for x in r.records if x.score < 1.0)
        parts.append(f"<h3>{_esc(r.id)} <small>{_esc(r.task)} {_esc(r.label)}: "
                     f"{len(bad)} of {n_bad} failed examples</small></h3>" + "".join(items))
    if not parts:
        return None
    return Section("failures", "Failed examples", "".join(parts))


def tools_section(runs: Sequence[Run], per_run: int = 3) -> Section | None:
    """A few examples of each run whose Solver called tools (``meta["tool_trace"]``):
    each call, its arguments, its result or error, and the final answer."""
    parts = []
    for r in runs:
        traced = [x for x in r.records if x.meta.get("tool_trace")][:per_run]
        rows = []
        for rec in traced:
            calls = "".join(
                f"<tr><td>{_esc(c.get('tool'))}</td><td>{_esc(c.get('args'))}</td>"
                f"<td>{_esc(c.get('result'))}</td><td>{_esc(c.get('error') or '')}</td></tr>"
                for c in rec.meta["tool_trace"])
            rows.append(
                f"<div><b>{_esc(rec.example_id)}</b> route {_esc(rec.meta.get('route'))}, "
                f"answer {_esc(rec.output)}, score {rec.score:g}"
                + (f", fallback: {_esc(rec.meta['fallback'])}" if rec.meta.get("fallback")
                   else "")
                + "<table><tr><th>tool</th><th>arguments</th><th>result</th><th>error</th>"
                f"</tr>{calls}</table></div>")
        if rows:
            parts.append(f"<h3>{_esc(r.id)} <small>{_esc(r.task)} {_esc(r.label)}</small></h3>"
                         + "".join(rows))
    if not parts:
        return None
    return Section("tools", "Tool calls", "".join(parts))


DEFAULT_SECTIONS: tuple[SectionBuilder, ...] = (
    overview_section,
    skills_section,
    tokens_section,
    failures_section,
    tools_section,
)
"""The built-in sections, in page order; pass an extended tuple to :func:`render_html`."""

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
 margin:0 auto;max-width:1100px;padding:1.5em;color:#222;background:#fff}
h1{font-size:1.5em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;
 margin-top:1.8em}h3{margin-bottom:.3em}small{color:#666}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f6f6f6}svg.plot{width:100%;height:auto;max-width:900px}
figure{margin:.5em 0}pre{white-space:pre-wrap;margin:0;font-size:.9em;max-height:20em;
 overflow:auto}.fail{border-left:3px solid #C44E52;padding:.3em .8em;margin:.8em 0;
 background:#fdf7f7}.kv th{width:6em}.skill{background:#eef;padding:0 .4em;border-radius:3px;
 font-size:.8em}.err{background:#C44E52;color:#fff;padding:0 .4em;border-radius:3px;
 font-size:.8em}.note{color:#555;font-size:.85em}nav a{margin-right:1em}
"""


def render_html(
    runs: Sequence[Run],
    *,
    sections: Sequence[SectionBuilder] = DEFAULT_SECTIONS,
    title: str = "metaskill report",
    subtitle: str | None = None,
) -> str:
    """One self-contained HTML page (inline CSS and SVG, no scripts or URLs) for ``runs``.

    Args:
        runs: the runs, with their records (``RunStore.get``).
        sections: section builders in page order (default :data:`DEFAULT_SECTIONS`).
        title: the page title.
        subtitle: the line under the title (escaped here); None: the number of runs and
            the time. A page given a subtitle reads its content from its sections only
            (no "No runs." line).

    Example:
        >>> "<html" in render_html([])
        True
    """
    built = [s for s in (b(runs) for b in sections) if s is not None]
    nav = " ".join(f"<a href='#{_esc(s.id)}'>{_esc(s.title)}</a>" for s in built)
    body = "".join(f"<section id='{_esc(s.id)}'><h2>{_esc(s.title)}</h2>{s.html}</section>"
                   for s in built)
    empty = "" if runs or subtitle is not None else "<p>No runs.</p>"
    sub = (_esc(subtitle) if subtitle is not None else
           f"{len(runs)} run(s); generated {_when(time.time())} UTC by metaskill.")
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_esc(title)}</h1><p class='note'>{sub}</p><nav>{nav}</nav>{empty}{body}"
        "</body></html>\n"
    )


def write_html(
    runs: Sequence[Run],
    path: str | Path,
    *,
    sections: Sequence[SectionBuilder] = DEFAULT_SECTIONS,
    title: str = "metaskill report",
) -> Path:
    """Write :func:`render_html` to ``path`` (folders created) and return the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(render_html(runs, sections=sections, title=title), encoding="utf-8")
    return p


__all__ = [
    "DEFAULT_SECTIONS",
    "Section",
    "SectionBuilder",
    "accuracy_tokens_svg",
    "comparison_table",
    "failures_section",
    "figure_svg",
    "overview_section",
    "print_run",
    "render_html",
    "runs_table",
    "skill_bars_svg",
    "skill_tip",
    "skills_section",
    "skills_table",
    "svg_titles",
    "tokens_section",
    "write_html",
]
