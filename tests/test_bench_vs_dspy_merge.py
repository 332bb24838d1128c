"""benchmarks/vs_dspy_merge.py, run as a user runs it, on small reports in vs_dspy's format."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "vs_dspy_merge.py"
HEADER = ("| side | solver | adapter | accuracy [95% CI] | infer tokens (prompt/ex) | "
          "compile tokens | LM calls (compile + infer) | wall s | parse failures |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")


def report(rows: list[str], n_test: int = 100, extra: str = "") -> str:
    return (f"# metaskill vs DSPy\n\nSplit: cut to the first **{n_test} test** and **50 dev** "
            f"examples.\n\n## sst2\n\n{HEADER}" + "\n".join(rows) + f"\n\n{extra}Targets:\n\n"
            "- **dynaicl matches the best fixed k with >= 50% fewer prompt tokens** (x)\n")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True,
                          text=True, cwd=ROOT)


def test_later_report_wins_and_targets_are_recomputed(tmp_path: Path) -> None:
    a = tmp_path / "a.md"
    b = tmp_path / "b.md"
    a.write_text(report([
        "| dspy | dspy:Predict | chat | 46.0 [36.6, 55.7] | 47460 (394) | 0 | 0 + 200 | 229 "
        "| 29.0% |",
        "| baseline | hand_knn4 | - | 84.0 [75.6, 89.9] | 15402 (152) | 0 | 0 + 100 | 59 | 0.0% |",
        "| metaskill | raml | - | 77.0 [67.8, 84.2] | 24002 (240) | 24656 | 100 + 100 | 173 "
        "| 0.0% |",
    ], extra="- adaptmi gate on test: fired on 3/100\n\n"))
    b.write_text(report([
        "| dspy | dspy:MIPROv2 | chat | failed: AdapterParseError: no field | 0 (0) | 30434 | "
        "56 + 0 | 158 | 100.0% |",
        "| metaskill | raml | - | 90.0 [82.6, 94.5] | 5000 (50) | 10000 | 100 + 100 | 100 | 0.0% |",
    ]))
    out = tmp_path / "merged.md"
    res = run(str(a), str(b), "--out", str(out))
    assert res.returncode == 0, res.stderr
    text = out.read_text()
    raml = [line for line in text.splitlines() if "| raml |" in line]
    assert len(raml) == 1 and "90.0 [82.6, 94.5]" in raml[0] and raml[0].endswith("| b.md |")
    assert "failed: AdapterParseError" in text  # a failed optimizer keeps its row
    # 90 vs Predict's 46 at 15,000 vs 47,460 tokens: 0.32x; +6 over hand_knn4 at 50 <= 152
    assert "**beats DSPy's best at <= half its tokens**: MET" in text
    assert "0.32x" in text
    assert "at <= its prompt tokens**: MET" in text and "+6.0 points" in text
    assert "[a.md] adaptmi gate on test: fired on 3/100" in text
    assert text.count("- **dynaicl matches") == 2  # quoted from both sources


def test_reports_of_different_splits_are_refused(tmp_path: Path) -> None:
    row = "| metaskill | raml | - | 77.0 [67.8, 84.2] | 24002 (240) | 0 | 0 + 100 | 1 | 0.0% |"
    a, b = tmp_path / "a.md", tmp_path / "b.md"
    a.write_text(report([row]))
    b.write_text(report([row], n_test=20))
    res = run(str(a), str(b), "--out", str(tmp_path / "m.md"))
    assert res.returncode != 0
    assert "b.md: split 20 test / 50 dev differs" in res.stderr
    res = run(str(tmp_path / "missing.md"), "--out", str(tmp_path / "m.md"))
    assert res.returncode != 0 and "no such report" in res.stderr


def test_the_better_dspy_adapter_stays_and_the_other_is_listed(tmp_path: Path) -> None:
    chat = ("| dspy | dspy:BootstrapFewShot | chat | 34.0 [25.5, 43.7] | 83361 (747) | 12928 | "
            "32 + 200 | 409 | 21.0% |")
    json_row = ("| dspy | dspy:BootstrapFewShot | json | 30.0 [22.0, 39.4] | 80000 (700) | "
                "12000 | 30 + 100 | 300 | 5.0% |")
    lfs_chat = ("| dspy | dspy:LabeledFewShot | chat | 25.0 [17.5, 34.3] | 114809 (1093) | 0 | "
                "0 + 200 | 489 | 17.0% |")
    lfs_json = ("| dspy | dspy:LabeledFewShot | json | 40.0 [30.9, 49.8] | 90000 (880) | 0 | "
                "0 + 100 | 400 | 2.0% |")
    a, b = tmp_path / "a.md", tmp_path / "b.md"
    a.write_text(report([chat, lfs_chat]))
    b.write_text(report([json_row, lfs_json]))
    out = tmp_path / "m.md"
    res = run(str(a), str(b), "--out", str(out))
    assert res.returncode == 0, res.stderr
    rows = [ln for ln in out.read_text().splitlines() if ln.startswith("| dspy")]
    assert len(rows) == 2
    assert "| chat | 34.0" in rows[0] and rows[0].endswith("| a.md |")  # chat was better
    assert "| json | 40.0" in rows[1] and rows[1].endswith("| b.md |")  # json was better
    text = out.read_text()
    assert "[b.md] Other adapter: dspy:BootstrapFewShot json: 30.0%" in text
    assert "[a.md] Other adapter: dspy:LabeledFewShot chat: 25.0%" in text


def test_a_missed_token_target_names_the_cheapest_row_above_dspy(tmp_path: Path) -> None:
    a = tmp_path / "a.md"
    a.write_text(report([
        "| dspy | dspy:LabeledFewShot | json | 49.0 [39.4, 58.7] | 110468 (1095) | 0 | 0 + 100 "
        "| 74 | 0.0% |",
        "| metaskill | raml_joint | - | 81.0 [72.2, 87.5] | 43115 (431) | 54539 | 150 + 100 | "
        "456 | 0.0% |",
        "| metaskill | skill_demos | - | 72.0 [62.5, 79.9] | 42577 (425) | 20567 | 50 + 100 | "
        "304 | 0.0% |",
        "| metaskill | zero_shot | - | 23.0 [15.8, 32.2] | 13124 (121) | 0 | 0 + 100 | 59 "
        "| 63.0% |",
    ]))
    out = tmp_path / "m.md"
    res = run(str(a), "--out", str(out))
    assert res.returncode == 0, res.stderr
    text = out.read_text()
    # the most accurate row decides: 97,654 vs 110,468 tokens = 0.88x
    assert "**beats DSPy's best at <= half its tokens**: MISSED" in text and "0.88x" in text
    assert ("(cheapest metaskill row above DSPy's best: `skill_demos` 72.0 at 63144 total "
            "tokens = 0.57x.)") in text
