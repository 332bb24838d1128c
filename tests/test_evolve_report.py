"""The archive page (evolve/report.py): its numbers on hand-made nodes, the page built from
an archive grown with the scripted fake LM, its render in headless Chromium, the CLI."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from metaskill.evolve.archive import Archive, EvolveConfig
from metaskill.evolve.mutations import MUTATIONS
from metaskill.evolve.node import Node, Score
from metaskill.evolve.report import (
    best_so_far,
    kind_stats,
    path_ids,
    render_archive_html,
    tree_layout,
    write_archive_html,
)
from test_evolve_archive import METASKILL, edit, run

VIRIDIS_TOP = (0xFD, 0xE7, 0x25)  # dev score 1.0
PATH_RED = (0xC4, 0x4E, 0x52)


def node(i: int, parent: int | None, kind: str, status: str = "valid",
         small: float | None = None, full: float | None = None, calls: int = 10) -> Node:
    scores = ([Score(stage="small", n=4, score=small)] if small is not None else []) + (
        [Score(stage="full", n=10, score=full)] if full is not None else [])
    return Node(id=i, parent=parent, kind=kind, status=status, scores=scores, lm_calls=calls)


NODES = [node(0, None, "root", full=0.5, calls=20),
         node(1, 0, "edit", full=0.7),                          # improves
         node(2, 0, "edit", status="pruned", small=0.9),       # small score only: never
         node(3, 1, "add_method", full=0.6),                   # valid, below its parent
         node(4, 1, "edit", status="invalid", calls=2),
         node(5, 3, "add_method", full=0.8),                   # improves, best
         node(6, 5, "crossover", status="pruned", full=0.1)]   # keep=better: full, lower


def test_numbers_behind_the_plots() -> None:
    stats = {k.kind: k for k in kind_stats(NODES)}
    assert list(stats) == ["edit", "add_method", "crossover"]
    e, a, c = stats["edit"], stats["add_method"], stats["crossover"]
    assert (e.children, e.valid, e.pruned, e.invalid, e.improving) == (3, 1, 1, 1, 1)
    assert (a.children, a.valid, a.improving) == (2, 2, 1)
    assert (c.children, c.valid, c.pruned, c.improving) == (1, 0, 1, 0)
    assert e.valid_share == pytest.approx(1 / 3) and a.improving_share == 0.5
    assert e.lm_calls == 22
    # best-so-far: only valid nodes count, against calls spent after each node
    assert best_so_far(NODES) == [(20, 0.5), (30, 0.7), (40, 0.7), (50, 0.7), (52, 0.7),
                                  (62, 0.8), (72, 0.8)]
    assert best_so_far([node(0, None, "root", status="invalid")]) == [(10, None)]
    assert path_ids(NODES, 5) == [0, 1, 3, 5]
    pos = tree_layout(NODES)
    assert {i: d for i, (_, d) in pos.items()} == {0: 0, 1: 1, 2: 1, 3: 2, 4: 2, 5: 3, 6: 4}
    leaves = sorted(pos[i][0] for i in (2, 4, 6))
    assert leaves == [0.0, 1.0, 2.0]  # one unit apart
    assert pos[1][0] == (pos[3][0] + pos[4][0]) / 2 and pos[6][0] == pos[5][0] == pos[3][0]
    # a deep chain lays out without recursion limits
    chain = [Node(id=0)] + [Node(id=i, parent=i - 1) for i in range(1, 3000)]
    assert tree_layout(chain)[2999] == (0.0, 2999)


def _crash(parent, ctx, rng):
    raise RuntimeError("boom")


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Archive:
    """An archive grown with the scripted fake LM: good and bad instruction edits, a
    crashing mutation, structural ones."""
    cfg = EvolveConfig(mutations=("good", "bad", "crash", "prompt_format", "add_method"),
                       methods=("knn_demos",), stage_size=6, max_children=14, seed=1)
    return run(tmp_path_factory.mktemp("arch"), cfg,
               mutations={"good": edit("GOOD"), "bad": edit("BAD"), "crash": _crash,
                          "prompt_format": MUTATIONS.get("prompt_format"),
                          "add_method": MUTATIONS.get("add_method")})


def test_page_from_a_scripted_archive(archive: Archive) -> None:
    nodes = archive.nodes()
    statuses = {n.status for n in nodes}
    assert statuses == {"valid", "pruned", "invalid"}, "the fixture should show all three"
    page = render_archive_html(archive)
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    for sid, title in (("summary", "Archive search"), ("tree", "Archive tree"),
                       ("progress", "Best dev score against LM calls"),
                       ("mutations", "Mutation kinds"), ("path", "Best path"),
                       ("nodes", "Nodes")):
        assert f"<section id='{sid}'><h2>{title}</h2>" in page
    assert page.count("<svg") == 3
    tree = page.split("<section id='tree'>")[1].split("</section>")[0]
    # one hover title per node, naming its mutation and status
    titles = re.findall(r"<title>#(\d+) \[([a-z_]+)\] (valid|pruned|invalid)", tree)
    assert sorted(int(i) for i, _, _ in titles) == [n.id for n in nodes]
    assert {(int(i), k, s) for i, k, s in titles} == {(n.id, n.kind, n.status) for n in nodes}
    best = archive.best_node()
    assert best.score == 1.0 and f"best: #{best.id} (1.00)" in tree
    assert "#c44e52" in tree.lower()  # the best path is drawn in red
    # the kinds table holds the same numbers as kind_stats
    table = page.split("<section id='mutations'>")[1].split("</section>")[0]
    for k in kind_stats(nodes):
        cells = (k.kind, k.children, k.valid, k.pruned, k.invalid, k.improving)
        assert "<tr>" + "".join(f"<td>{c}</td>" for c in cells) in table, k
    assert any(k.improving for k in kind_stats(nodes))
    path = page.split("<section id='path'>")[1]
    assert all(f"<td>#{i}</td>" in path for i in path_ids(nodes, best.id))
    assert str(archive.spend().lm_calls) in page


def test_page_renders_in_headless_chromium(archive: Archive, tmp_path: Path,
                                           chromium) -> None:
    from PIL import Image

    page = write_archive_html(archive, tmp_path / "sub" / "archive.html")
    url = page.resolve().as_uri()
    dom = chromium(["--dump-dom", url])
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = dom.stdout.decode()
    assert text.count("<svg") == 3
    for title in ("Archive tree", "Best dev score against LM calls", "Mutation kinds"):
        assert title in text
    shot = tmp_path / "shot.png"
    res = chromium([f"--screenshot={shot}", "--window-size=1200,2400", "--hide-scrollbars",
                    url])
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    colours = Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50

    def count(ref: tuple[int, int, int], tol: int = 30) -> int:
        return sum(n for n, c in colours
                   if all(abs(a - b) <= tol for a, b in zip(c, ref, strict=True)))

    # the best nodes (dev 1.0) and the colour bar's top in viridis yellow; the red path
    assert count(VIRIDIS_TOP) > 300, count(VIRIDIS_TOP)
    assert count(PATH_RED) > 300, count(PATH_RED)


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "METASKILL_HOME": str(home), "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([*METASKILL, *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_cli_writes_the_page(archive: Archive, tmp_path: Path) -> None:
    folder = archive.path.parent
    out = tmp_path / "pages" / "a.html"
    res = _cli("evolve", "show", str(folder), "--html", str(out), home=tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"archive page: {out}" in res.stdout.replace("\n", "")
    assert out.read_text().count("<svg") == 3
    # `evolve archive` writes OUT/archive.html when it ends
    arch = tmp_path / "arch"
    res = _cli("evolve", "archive", "--out", str(arch), "--task", "sst2", "--model", "fake",
               "--budget-calls", "40", "--limit-dev", "6", "--limit-train", "20",
               "--embedder", "hash:64", "--stage-size", "4", "--no-progress", home=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    page = (arch / "archive.html").read_text()
    assert "archive page:" in res.stdout and "metaskill archive: sst2" in page
    assert len(re.findall(r"<title>#\d+ \[", page)) == len(Archive(arch))


def test_random_archive_shapes_render() -> None:
    """Wide and deep random trees, crossovers and missing scores all draw."""
    rng = random.Random(0)
    nodes = [node(0, None, "root", full=0.3)]
    for i in range(1, 80):
        status = rng.choice(["valid", "valid", "pruned", "invalid"])
        parent = rng.choice([n.id for n in nodes if n.status == "valid"])
        n = node(i, parent, rng.choice(["a", "b", "crossover"]), status=status,
                 small=rng.random() if status != "invalid" else None,
                 full=rng.random() if status == "valid" else None)
        if n.kind == "crossover":
            n.parent2 = rng.choice([m.id for m in nodes])
        nodes.append(n)

    class Fake:
        path = Path("/tmp/x/archive.sqlite")

        def nodes(self):
            return nodes

        def get_meta(self, key):
            return {"config": {"max_calls": 500}}.get(key)

        def spend(self):
            from metaskill.evolve.archive import Spend

            return Spend(children=79, lm_calls=sum(n.lm_calls for n in nodes))

    page = render_archive_html(Fake())
    assert page.count("<svg") == 3 and page.count("<title>#") == 80
    tree = page.split("<section id='tree'>")[1].split("</section>")[0]
    assert "stroke-dasharray" in tree  # the crossovers' second-parent edges
    nodes[:] = [n.model_copy(update={"parent2": None}) for n in nodes]
    tree = render_archive_html(Fake()).split("<section id='tree'>")[1].split("</section>")[0]
    assert "stroke-dasharray" not in tree
