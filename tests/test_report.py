"""Reports: terminal tables, self-contained HTML, rendered in headless Chromium."""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from metaskill.eval.harness import evaluate
from metaskill.eval.report import (
    DEFAULT_SECTIONS,
    Section,
    comparison_table,
    print_run,
    render_html,
    runs_table,
    write_html,
)
from metaskill.eval.solvers import KShot, ZeroShot
from metaskill.eval.store import RunStore
from test_eval_harness import make_task, parity_lm

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BAR_BLUE = (0x4C, 0x72, 0xB0)  # first run's bar colour
BAR_ORANGE = (0xDD, 0x84, 0x52)  # second run's


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    store = RunStore(tmp_path_factory.mktemp("store") / "runs.sqlite")
    task = make_task(40)
    a = evaluate(ZeroShot(parity_lm({1, 2, 3, 15, 22})), task, store=store, progress=False)
    b = evaluate(KShot(parity_lm({12}, crash={7}), k=2), task, store=store, progress=False)
    return store, [store.get(a.id), store.get(b.id)]


def test_html_is_self_contained_and_has_sections(runs):
    _, rs = runs
    html = render_html(rs)
    assert html.startswith("<!DOCTYPE html>")
    for sid in ("overview", "skills", "tokens", "failures"):
        assert f"<section id='{sid}'>" in html
    assert html.count("<svg") == 2
    # nothing is fetched: no scripts, no external src/href/url(), no @import
    assert "<script" not in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html)
    assert "url(http" not in html and "@import" not in html
    # failed examples with their outputs, escaped
    assert "backend crashed on 7" in html and "te12" in html
    assert rs[0].id in html and rs[1].id in html
    # bars: one per (skill row x run); 4 rows (all, big, small, x3) x 2 runs
    skills_svg = html.split("<section id='skills'>")[1].split("</svg>")[0]
    assert skills_svg.count('id="patch_') >= 8


def test_sections_are_extensible(runs):
    _, rs = runs

    def profile(runs_):
        return Section("profile", "Missing-skill profile", f"<p>profile of {len(runs_)}</p>")

    def nothing(runs_):
        return None

    html = render_html(rs, sections=(*DEFAULT_SECTIONS, profile, nothing))
    assert "<section id='profile'><h2>Missing-skill profile</h2><p>profile of 2</p>" in html
    assert "href='#profile'" in html
    only = render_html(rs, sections=(profile,))
    assert "<svg" not in only


def test_terminal_tables(runs):
    from rich.console import Console

    store, rs = runs
    buf = io.StringIO()
    con = Console(file=buf, width=200)
    con.print(runs_table(rs))
    print_run(rs[1], con, failures=2)
    con.print(comparison_table(store.compare([r.id for r in rs])))
    out = buf.getvalue()
    assert rs[0].id in out and "87.5%" in out  # 35/40
    assert "per-skill accuracy" in out and "small" in out and "x3" in out
    assert "backend crashed on 7" in out
    assert "+" in out  # deltas


def _chromium(args: list[str], profile: Path, timeout: int = 90) -> subprocess.CompletedProcess:
    assert CHROMIUM is not None
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--disable-extensions", "--disable-default-apps",
           "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",
           f"--user-data-dir={profile}", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # only the group we started
        out, err = proc.communicate()
        pytest.fail(f"chromium timed out: {err[-2000:]!r}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                    "(apt-get install -y chromium); the HTML render check needs it")
def test_html_renders_in_headless_chromium(runs, tmp_path):
    from PIL import Image

    _, rs = runs
    page = write_html(rs, tmp_path / "report.html")
    url = page.resolve().as_uri()

    dom = _chromium(["--dump-dom", url], tmp_path / "profile1")
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = dom.stdout.decode()
    assert text.count("<svg") == 2 and "Per-skill accuracy" in text
    assert "Accuracy versus tokens" in text and "Failed examples" in text

    shot = tmp_path / "shot.png"
    res = _chromium([f"--screenshot={shot}", "--window-size=1200,1600", "--hide-scrollbars",
                     url], tmp_path / "profile2")
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 1600)
    colours = img.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # not blank

    def near(c: tuple[int, int, int], ref: tuple[int, int, int]) -> bool:
        return all(abs(a - b) <= 40 for a, b in zip(c, ref, strict=True))

    # the bars are drawn: many pixels in each run's bar colour (alpha-blended on white)
    blue = sum(n for n, c in colours if near(c, (0x6C, 0x8C, 0xBF)) or near(c, BAR_BLUE))
    orange = sum(n for n, c in colours if near(c, (0xE1, 0x97, 0x6D)) or near(c, BAR_ORANGE))
    assert blue > 2000 and orange > 2000, (blue, orange)


def test_write_html_creates_folders(runs, tmp_path):
    _, rs = runs
    p = write_html(rs[:1], tmp_path / "a" / "b" / "r.html")
    assert p.is_file() and p.stat().st_size > 5000


def test_empty_report():
    html = render_html([])
    assert "No runs." in html and "<svg" not in html


def test_skill_hover_shows_a_member_example(runs):
    from metaskill.eval.report import skill_tip, skills_section

    _, rs = runs
    tip = skill_tip("small", "Numbers under 10.", "number 3 <b>")
    sec = skills_section(rs, tips={"small": tip})
    assert sec is not None
    svg = sec.html.split("</svg>")[0]
    title = "<title>small: Numbers under 10.\ne.g. number 3 &lt;b&gt;</title>"
    # on the skill's axis label and on its bar of each of the two runs
    assert svg.count(title) == 3 and svg.count("<title>") == 3
    assert "<td title='small: Numbers under 10.\ne.g. number 3 &lt;b&gt;'>small</td>" in sec.html
    plain = skills_section(rs)
    assert plain is not None and "<title>" not in plain.html and " title=" not in plain.html


def test_job_report_skill_chart_has_hover_examples(runs):
    from types import SimpleNamespace

    from metaskill.pipeline.report import _skills_before_after, skill_tips

    store, rs = runs
    skills = [{"name": "small", "description": "Training examples mostly labelled 'even'.",
               "source": "embedding", "metadata": {"example": "number 4", "label": "even"}},
              {"name": "big", "source": "labels",
               "metadata": {"example": "number 12", "label": "Big/Numbers"}}]
    tips = skill_tips(skills)
    assert tips["small"].endswith("e.g. number 4") and "even" not in tips  # label key: labels only
    assert tips["Big/Numbers"] == tips["big"]
    ns = SimpleNamespace
    task = ns(task="parity", selected="kshot", skills=skills, skill_map={},
              candidates=[ns(name="zero-shot", test_run=rs[0].id),
                          ns(name="kshot", test_run=rs[1].id)])
    sec = _skills_before_after(ns(tasks=[task]), store)
    assert sec is not None
    svg = sec.html.split("<figure>")[1]
    small = ("<title>small: Training examples mostly labelled &#x27;even&#x27;.\n"
             "e.g. number 4</title>")
    assert svg.count(small) == 3  # the axis label and the baseline and selected bars
    assert svg.count("<title>big\ne.g. number 12</title>") == 3
    assert svg.count("<title>") == 6  # x3 has no skill record: no hover
