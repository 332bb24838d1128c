"""The archive page: an archive search (:mod:`metaskill.evolve.archive`) as one HTML file.

Sections, built like the other reports (:func:`metaskill.eval.report.render_html`, plots by
matplotlib inlined as SVG, so the file needs nothing outside itself):

* **summary** -- root and best dev score, the children by status, what the search spent
  and why it stopped, the search's settings;
* **tree** -- the archive as a tree, as in the Darwin Gödel Machine paper's figure (Zhang
  et al. 2025, Fig. 3): one marker per node coloured by its dev score, edges parent ->
  child (a dashed edge from a crossover's second parent), the path from the root to the
  best node in red; circles are valid nodes, squares pruned ones (coloured by their
  small-subset score), grey crosses invalid ones. Rest the pointer on a node to read its
  mutation, score, cost and reason;
* **progress** -- the best valid dev score so far against the LM calls spent so far (every
  node's calls, the root's, invalid children's and the mutator's included), with each
  node's own score;
* **mutations** -- for each mutation kind, the share of its children that are valid and
  the share that *improve* (fully scored on dev and above their parent's dev score);
* **best path** and **nodes** -- tables of the path to the best node and of every node.

The numbers behind the plots are plain functions (:func:`tree_layout`,
:func:`best_so_far`, :func:`kind_stats`), so they can be checked and reused without
matplotlib.

Example:
    >>> from metaskill.evolve.node import Node, Score
    >>> def n(i, parent, kind, score, status="valid"):
    ...     return Node(id=i, parent=parent, kind=kind, status=status,
    ...                 scores=[Score(stage="full", n=8, score=score)], lm_calls=10)
    >>> nodes = [n(0, None, "root", 0.5), n(1, 0, "edit", 0.75), n(2, 0, "edit", 0.25)]
    >>> best_so_far(nodes)
    [(10, 0.5), (20, 0.75), (30, 0.75)]
    >>> [(k.kind, k.children, k.valid, k.improving) for k in kind_stats(nodes)]
    [('edit', 2, 2, 1)]
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metaskill.eval.report import Section, figure_svg, pct, render_html, svg_titles
from metaskill.evolve.node import Node

#: Colours: the best path, invalid nodes, ordinary edges.
PATH_RED = "#C44E52"
INVALID_GREY = "#9A9A9A"
EDGE_GREY = "#B8B8B8"
#: The colour map of dev scores (0 -> 1).
SCORE_CMAP = "viridis"


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


# ---- the numbers ----------------------------------------------------------------------
def full_score(node: Node) -> float | None:
    """The node's score on the full dev set (None if it never got one).

    Example:
        >>> from metaskill.evolve.node import Score
        >>> full_score(Node(id=1, scores=[Score(stage="small", n=4, score=1.0)])) is None
        True
    """
    full = [s.score for s in node.scores if s.stage == "full"]
    return full[-1] if full else None


def improves(node: Node, parent: Node | None) -> bool:
    """Whether a child improves on its parent: both fully scored on dev, the child higher.

    Example:
        >>> from metaskill.evolve.node import Score
        >>> a = Node(id=0, scores=[Score(stage="full", n=4, score=0.5)])
        >>> b = Node(id=1, parent=0, scores=[Score(stage="full", n=4, score=0.75)])
        >>> improves(b, a), improves(a, b)
        (True, False)
    """
    if parent is None:
        return False
    mine, theirs = full_score(node), full_score(parent)
    return mine is not None and theirs is not None and mine > theirs


def best_node_of(nodes: Sequence[Node]) -> Node | None:
    """The valid node with the highest dev score, ties to the earliest (as
    :meth:`~metaskill.evolve.archive.Archive.best_node`), or None."""
    valid = [n for n in nodes if n.status == "valid" and n.score is not None]
    return max(valid, key=lambda n: (n.score, -n.id)) if valid else None


def path_ids(nodes: Sequence[Node], node_id: int) -> list[int]:
    """Ids from the root to ``node_id``.

    Example:
        >>> path_ids([Node(id=0), Node(id=1, parent=0), Node(id=2, parent=1)], 2)
        [0, 1, 2]
    """
    by_id = {n.id: n for n in nodes}
    out = [node_id]
    while by_id[out[-1]].parent is not None and by_id[out[-1]].parent in by_id:
        out.append(by_id[out[-1]].parent)  # type: ignore[arg-type]
    return out[::-1]


def best_so_far(nodes: Sequence[Node]) -> list[tuple[int, float | None]]:
    """After each node (in the order made): the LM calls spent so far and the best valid
    dev score so far (None until a valid node exists)."""
    out: list[tuple[int, float | None]] = []
    calls, best = 0, None
    for n in sorted(nodes, key=lambda n: n.id):
        calls += n.lm_calls
        if n.status == "valid" and n.score is not None:
            best = n.score if best is None else max(best, n.score)
        out.append((calls, best))
    return out


@dataclass(frozen=True)
class KindStats:
    """What one mutation kind's children came to.

    Attributes:
        kind: the mutation kind.
        children: its children (every status).
        valid: those fully scored and kept as parent candidates.
        pruned: those pruned (small-subset score too low, or ``keep=better``).
        invalid: those that could not be built or scored.
        improving: those whose full dev score beats their parent's.
        lm_calls: LM calls its children cost.
    """

    kind: str
    children: int
    valid: int
    pruned: int
    invalid: int
    improving: int
    lm_calls: int

    @property
    def valid_share(self) -> float:
        """Valid children over all of this kind's children."""
        return self.valid / self.children if self.children else 0.0

    @property
    def improving_share(self) -> float:
        """Improving children over all of this kind's children."""
        return self.improving / self.children if self.children else 0.0


def kind_stats(nodes: Sequence[Node]) -> list[KindStats]:
    """Per mutation kind (the root left out), in order of first use."""
    by_id = {n.id: n for n in nodes}
    kinds: dict[str, list[Node]] = {}
    for n in sorted(nodes, key=lambda n: n.id):
        if n.parent is not None:
            kinds.setdefault(n.kind, []).append(n)
    return [KindStats(kind=k, children=len(ns),
                      valid=sum(n.status == "valid" for n in ns),
                      pruned=sum(n.status == "pruned" for n in ns),
                      invalid=sum(n.status == "invalid" for n in ns),
                      improving=sum(improves(n, by_id.get(n.parent))  # type: ignore[arg-type]
                                    for n in ns),
                      lm_calls=sum(n.lm_calls for n in ns))
            for k, ns in kinds.items()]


def tree_layout(nodes: Sequence[Node]) -> dict[int, tuple[float, int]]:
    """Node id -> (x, depth): leaves one unit apart in depth-first order (children by id),
    a parent centred over its children, the root at depth 0.

    Example:
        >>> ns = [Node(id=0), Node(id=1, parent=0), Node(id=2, parent=0), Node(id=3, parent=1)]
        >>> tree_layout(ns)
        {3: (0.0, 2), 1: (0.0, 1), 2: (1.0, 1), 0: (0.5, 0)}
    """
    ids = {n.id for n in nodes}
    kids: dict[int, list[int]] = {n.id: [] for n in nodes}
    roots = []
    for n in sorted(nodes, key=lambda n: n.id):
        if n.parent is None or n.parent not in ids:
            roots.append(n.id)
        else:
            kids[n.parent].append(n.id)
    pos: dict[int, tuple[float, int]] = {}
    next_leaf = [0.0]

    def place(i: int, depth: int) -> float:
        stack = [(i, depth, False)]
        while stack:  # iterative: an archive may be a chain hundreds of nodes deep
            node, d, done = stack.pop()
            if kids[node] and not done:
                stack.append((node, d, True))
                stack.extend((c, d + 1, False) for c in reversed(kids[node]))
            elif kids[node]:
                xs = [pos[c][0] for c in kids[node]]
                pos[node] = ((min(xs) + max(xs)) / 2, d)
            else:
                pos[node] = (next_leaf[0], d)
                next_leaf[0] += 1.0
        return pos[i][0]

    for r in roots:
        place(r, 0)
    return pos


# ---- the plots ------------------------------------------------------------------------
def node_tip(n: Node) -> str:
    """The hover text of one node.

    Example:
        >>> print(node_tip(Node(id=3, parent=1, kind="tweak_config", status="invalid",
        ...                     reason="k out of bounds", lm_calls=2)))
        #3 [tweak_config] invalid, child of #1
        no score; 2 LM calls, 0 tokens
        k out of bounds
    """
    head = f"#{n.id} [{n.kind}] {n.status}" + (
        f", child of #{n.parent}" if n.parent is not None else "")
    if n.parent2 is not None:
        head += f" and #{n.parent2}"
    scores = ", ".join(f"{s.stage} dev {s.score:.3f} (n={s.n})" for s in n.scores)
    lines = [head, f"{scores or 'no score'}; {n.lm_calls} LM calls, {n.tokens} tokens"]
    if n.description:
        lines.append(n.description[:300])
    if n.reason:
        lines.append(n.reason[:300])
    return "\n".join(lines)


def tree_svg(nodes: Sequence[Node], salt: str = "tree") -> str:
    """The archive tree (see the module doc); each node's marker has a hover title."""
    pos = tree_layout(nodes)
    best = best_node_of(nodes)
    on_path = set(path_ids(nodes, best.id)) if best else set()
    width = max(pos[i][0] for i in pos) + 1 if pos else 1
    depth = max(d for _, d in pos.values()) + 1 if pos else 1
    size = (min(14.0, max(6.0, 0.42 * width + 2.0)), min(12.0, max(2.6, 0.75 * depth + 1.2)))
    big = len(nodes) <= 60

    def draw(fig: Any) -> None:
        from matplotlib import colormaps
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        ax = fig.add_subplot()
        cmap, norm = colormaps[SCORE_CMAP], Normalize(0.0, 1.0)
        for n in nodes:
            for parent, dashed in ((n.parent, False), (n.parent2, True)):
                if parent is None or parent not in pos:
                    continue
                (x0, y0), (x1, y1) = pos[parent], pos[n.id]
                red = not dashed and n.id in on_path and parent in on_path
                ax.plot([x0, x1], [-y0, -y1], color=PATH_RED if red else EDGE_GREY,
                        lw=2.4 if red else 0.9, ls="--" if dashed else "-",
                        zorder=2 if red else 1)
        for n in nodes:
            x, y = pos[n.id][0], -pos[n.id][1]
            ring = PATH_RED if n.id in on_path else "#333333"
            if n.status == "invalid":
                art = ax.scatter([x], [y], marker="X", s=60, color=INVALID_GREY, zorder=3)
            else:
                art = ax.scatter([x], [y], marker="o" if n.status == "valid" else "s",
                                 s=(190 if big else 70) if n.status == "valid" else 80,
                                 color=cmap(norm(n.score or 0.0)), edgecolors=ring,
                                 linewidths=2.2 if n.id in on_path else 0.6,
                                 alpha=1.0 if n.status == "valid" else 0.55, zorder=3)
            art.set_gid(f"{salt}-node-{n.id}")
            if big:
                ax.annotate(str(n.id), (x, y), textcoords="offset points", xytext=(0, 9),
                            ha="center", fontsize=7, color=ring)
        if best is not None:
            bx, by = pos[best.id]
            ax.annotate(f"best: #{best.id} ({best.score:.2f})", (bx, -by),
                        textcoords="offset points", xytext=(10, -14), fontsize=8,
                        color=PATH_RED, weight="bold")
        ax.set_axis_off()
        ax.margins(x=0.06, y=0.18)
        fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, shrink=0.8, pad=0.01,
                     label="dev score")

    svg = figure_svg(draw, size, salt=salt)
    return svg_titles(svg, {f"{salt}-node-{n.id}": node_tip(n) for n in nodes})


def progress_svg(nodes: Sequence[Node], budget_calls: int | None = None,
                 salt: str = "progress") -> str:
    """Best-so-far dev score against cumulative LM calls, with each node's own score."""
    curve = best_so_far(nodes)
    ordered = sorted(nodes, key=lambda n: n.id)

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        pts = [(c, b) for c, b in curve if b is not None]
        if pts:
            ax.step([0, *[c for c, _ in pts]], [pts[0][1], *[b for _, b in pts]],
                    where="post", color=PATH_RED, lw=1.8, label="best valid dev score so far")
        for status, colour, marker, label in (
                ("valid", "#4C72B0", "o", "valid node (full dev)"),
                ("pruned", "#8C8C8C", "s", "pruned node (small subset)")):
            xs = [c for (c, _), n in zip(curve, ordered, strict=True)
                  if n.status == status and n.score is not None]
            ys = [n.score for n in ordered if n.status == status and n.score is not None]
            if xs:
                ax.scatter(xs, ys, s=18, color=colour, marker=marker, alpha=0.8, label=label,
                           zorder=3)
        bad = [c for (c, _), n in zip(curve, ordered, strict=True) if n.status == "invalid"]
        if bad:
            ax.scatter(bad, [0.0] * len(bad), s=22, marker="x", color=INVALID_GREY,
                       label="invalid node", zorder=3)
        if budget_calls:
            ax.axvline(budget_calls, color="#555", lw=0.8, ls=":", label="LM-call budget")
        ax.set_xlabel("LM calls spent (cumulative)")
        ax.set_ylabel("dev score")
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlim(left=0)
        ax.legend(loc="lower right", fontsize=7)

    return figure_svg(draw, (7.5, 3.4), salt=salt)


def kinds_svg(stats: Sequence[KindStats], salt: str = "kinds") -> str:
    """Per mutation kind: the share of its children that are valid and that improve."""

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        h = 0.38
        for j, (attr, count, colour, label) in enumerate((
                ("valid_share", "valid", "#4C72B0", "valid"),
                ("improving_share", "improving", "#55A868", "improves on its parent"))):
            ys = [i + (j - 0.5) * h for i in range(len(stats))]
            xs = [getattr(k, attr) for k in stats]
            ax.barh(ys, xs, height=h * 0.92, color=colour, label=label)
            for y, x, k in zip(ys, xs, stats, strict=True):
                ax.annotate(f"{getattr(k, count)}/{k.children}", (x, y),
                            textcoords="offset points", xytext=(3, -3), fontsize=7)
        ax.set_yticks(range(len(stats)))
        ax.set_yticklabels([f"{k.kind} ({k.children})" for k in stats])
        ax.invert_yaxis()
        ax.set_xlim(0, 1.08)
        ax.xaxis.set_major_formatter(lambda x, _: f"{100 * x:.0f}%")
        ax.set_xlabel("share of the kind's children")
        fig.legend(loc="outside lower center", ncols=2, fontsize=7, frameon=False)

    return figure_svg(draw, (7.5, 1.6 + 0.45 * max(1, len(stats))), salt=salt)


# ---- the sections ---------------------------------------------------------------------
def _summary_section(archive: Any, nodes: Sequence[Node], sid: str) -> Section:
    spend = archive.spend()
    best = best_node_of(nodes)
    root = nodes[0]
    counts = {s: sum(n.status == s for n in nodes[1:]) for s in ("valid", "pruned", "invalid")}
    cfg = archive.get_meta("config") or {}
    rows = [("root (node 0)", f"dev {pct(root.score)} on {root.n_scored}"),
            ("best on dev", f"node {best.id}: dev {pct(best.score)} on {best.n_scored} -- "
             f"{best.recipe.describe()}" if best else "no valid node"),
            ("children", f"{len(nodes) - 1}: {counts['valid']} valid, {counts['pruned']} "
             f"pruned, {counts['invalid']} invalid"),
            ("spent", spend.line())]
    keys = ("selection", "lam", "alpha0", "keep", "stage_size", "margin", "seed",
            "mutations", "max_children", "max_calls", "max_tokens", "max_seconds")
    settings = ", ".join(f"{k}={cfg[k]}" for k in keys if k in cfg)
    rows.append(("settings", settings or "-"))
    body = "<table>" + "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>"
                               for k, v in rows) + "</table>"
    body += ("<p class='note'>Scores are on dev: the search never reads the test split. "
             "Only the node selected on dev (the best) is meant to be evaluated on test.</p>")
    return Section(f"{sid}summary", "Archive search", body)


def _tree_section(nodes: Sequence[Node], sid: str) -> Section:
    svg = tree_svg(nodes, salt=f"{sid}tree")
    note = ("<p class='note'>Each marker is a Solver; colour is its dev score. Circles: "
            "valid (fully scored, parent candidates); squares: pruned (their small-subset "
            "score); grey crosses: invalid. Edges run parent to child (dashed: a "
            "crossover's second parent); the red path leads from the root to the best node "
            "on dev. Rest the pointer on a node for its mutation, scores and cost.</p>")
    return Section(f"{sid}tree", "Archive tree", f"<figure>{svg}</figure>{note}")


def _progress_section(archive: Any, nodes: Sequence[Node], sid: str) -> Section:
    cfg = archive.get_meta("config") or {}
    svg = progress_svg(nodes, cfg.get("max_calls"), salt=f"{sid}progress")
    curve = best_so_far(nodes)
    note = (f"<p class='note'>{len(nodes)} nodes, {curve[-1][0] if curve else 0} LM calls "
            "in all (building, scoring and the mutator's proposals). The red step is the "
            "best valid dev score reached within that many calls.</p>")
    return Section(f"{sid}progress", "Best dev score against LM calls",
                   f"<figure>{svg}</figure>{note}")


def _kinds_section(nodes: Sequence[Node], sid: str) -> Section | None:
    stats = kind_stats(nodes)
    if not stats:
        return None
    valid_all = sum(k.valid for k in stats)
    imp_all = sum(k.improving for k in stats)
    head = ("kind", "children", "valid", "pruned", "invalid", "improving", "valid share",
            "improving share", "of all valid", "of all improving", "LM calls")
    rows = "".join(
        "<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in (
            k.kind, k.children, k.valid, k.pruned, k.invalid, k.improving, pct(k.valid_share),
            pct(k.improving_share), pct(k.valid / valid_all) if valid_all else "-",
            pct(k.improving / imp_all) if imp_all else "-", k.lm_calls)) + "</tr>"
        for k in stats)
    table = ("<table><thead><tr>" + "".join(f"<th>{h}</th>" for h in head)
             + f"</tr></thead><tbody>{rows}</tbody></table>")
    note = ("<p class='note'>A child <b>improves</b> when it was fully scored on dev and "
            "beats its parent's dev score; pruned and invalid children never do. The shares "
            "are of the kind's own children; the last two columns are the kind's part of all "
            "valid and all improving children.</p>")
    return Section(f"{sid}mutations", "Mutation kinds",
                   f"<figure>{kinds_svg(stats, salt=f'{sid}kinds')}</figure>{table}{note}")


def _path_section(nodes: Sequence[Node], sid: str) -> Section | None:
    best = best_node_of(nodes)
    if best is None:
        return None
    by_id = {n.id: n for n in nodes}
    rows = "".join(
        f"<tr><td>#{i}</td><td>{_esc(by_id[i].kind)}</td><td>{pct(by_id[i].score)}</td>"
        f"<td>{by_id[i].n_scored}</td><td>{_esc(by_id[i].description)}</td>"
        f"<td><code>{_esc(by_id[i].recipe.describe())}</code></td></tr>"
        for i in path_ids(nodes, best.id))
    return Section(f"{sid}path", "Best path",
                   "<table><thead><tr><th>node</th><th>mutation</th><th>dev</th><th>n</th>"
                   f"<th>what changed</th><th>recipe</th></tr></thead><tbody>{rows}</tbody>"
                   "</table>")


def _nodes_section(nodes: Sequence[Node], sid: str) -> Section:
    head = ("node", "parent", "mutation", "status", "dev", "n", "LM calls", "tokens", "s",
            "what changed", "reason")
    rows = "".join(
        "<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in (
            f"#{n.id}", "-" if n.parent is None else f"#{n.parent}", n.kind, n.status,
            pct(n.score), n.n_scored, n.lm_calls, n.tokens, f"{n.wall_s:.1f}",
            n.description[:200], n.reason[:200])) + "</tr>"
        for n in nodes)
    return Section(f"{sid}nodes", "Nodes",
                   "<details><summary>every node</summary><table><thead><tr>"
                   + "".join(f"<th>{h}</th>" for h in head)
                   + f"</tr></thead><tbody>{rows}</tbody></table></details>")


def archive_sections(archive: Any, prefix: str = "") -> list[Section]:
    """The archive page's sections, for this page or for another report to embed.

    Args:
        archive: an :class:`~metaskill.evolve.archive.Archive` with at least its root.
        prefix: prepended to the section ids and SVG salts (several archives on one page).
    """
    nodes = archive.nodes()
    if not nodes:
        return [Section(f"{prefix}summary", "Archive search",
                        "<p>The archive has no node yet.</p>")]
    parts = [_summary_section(archive, nodes, prefix), _tree_section(nodes, prefix),
             _progress_section(archive, nodes, prefix), _kinds_section(nodes, prefix),
             _path_section(nodes, prefix), _nodes_section(nodes, prefix)]
    return [p for p in parts if p is not None]


def render_archive_html(archive: Any, title: str | None = None) -> str:
    """The archive page as one self-contained HTML string (no scripts, no URLs).

    Args:
        archive: the :class:`~metaskill.evolve.archive.Archive`.
        title: the page title (default: names the archive's task).
    """
    sections = archive_sections(archive)
    ident = archive.get_meta("identity") or {}
    title = title or f"metaskill archive: {ident.get('task', archive.path.parent.name)}"
    stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    return render_html([], sections=[lambda _runs, s=s: s for s in sections], title=title,
                       subtitle=f"{archive.path}; generated {stamp} UTC by metaskill.")


def write_archive_html(archive: Any, path: str | Path, title: str | None = None) -> Path:
    """Write :func:`render_archive_html` to ``path`` (folders created) and return it."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(render_archive_html(archive, title=title), encoding="utf-8")
    return p


__all__ = ["KindStats", "archive_sections", "best_node_of", "best_so_far", "full_score",
           "improves", "kind_stats", "kinds_svg", "node_tip", "path_ids", "progress_svg",
           "render_archive_html", "tree_layout", "tree_svg", "write_archive_html"]
