"""Each verifier: scores, reasons, parsed answers, specs that round-trip, crash handling."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from metaskill.core.errors import NotFoundError, TaskError
from metaskill.core.types import Example
from metaskill.lm.fake import ScriptedLM
from metaskill.tasks.base import Verdict
from metaskill.tasks.sandbox import network_isolation_prefix, run_code
from metaskill.tasks.verifiers import (
    VERIFIERS,
    CodeVerifier,
    ContainsVerifier,
    ExactVerifier,
    JudgeVerifier,
    LabelVerifier,
    MathVerifier,
    NumericVerifier,
    RegexVerifier,
    parse_judge_score,
    parse_number,
    safe_verify,
    safe_verify_batch,
    verifier_from_spec,
)


def ex(answer: str | None, **meta: object) -> Example:
    return Example(id="e1", input="question?", answer=answer, metadata=dict(meta))


# ------------------------------------------------------------------------ exact -------


def test_exact_normalizes_case_space_and_trailing_period() -> None:
    v = ExactVerifier()
    r = v.verify("  Paris.\n", ex("paris"))
    assert (r.score, r.parsed, r.reason) == (1.0, "paris", "exact match")
    bad = v.verify("Lyon", ex("Paris"))
    assert bad.score == 0.0 and "'lyon' != 'Paris'" in bad.reason
    assert v.verify("gelatine stick", ex("x", answers=["gelatine stick"])).score == 1.0
    assert ExactVerifier(casefold=False).verify("paris", ex("Paris")).score == 0.0
    assert ExactVerifier(strip_punct=True).verify("Hello, world!", ex("hello world")).score == 1
    assert ExactVerifier(first_line=True).verify("\n42\nbecause...", ex("42")).score == 1.0


# ------------------------------------------------------------------------ label -------


def test_label_first_matching_word_case_insensitive() -> None:
    v = LabelVerifier(labels=["negative", "positive"])
    r = v.verify("POSITIVE. Not negative at all.", ex("positive"))
    assert (r.score, r.parsed) == (1.0, "positive")
    r = v.verify("It is negative, I think; positive things aside", ex("positive"))
    assert (r.score, r.parsed) == (0.0, "negative") and "expected 'positive'" in r.reason


def test_label_whole_words_aliases_and_nothing_parsed() -> None:
    v = LabelVerifier(labels=["World", "Sports", "Business", "Sci-Tech"],
                      aliases={"Sci-Tech": ["science", "technology"]})
    assert v.verify("Technology news", ex("Sci-Tech")).parsed == "Sci-Tech"
    assert v.verify("sci-tech", ex("Sci-Tech")).score == 1.0
    # "Worldwide" is not the word "World"
    r = v.verify("Worldwide trends", ex("World"))
    assert r.score == 0.0 and r.parsed is None
    assert r.reason.startswith("no label word in output (labels: World, Sports")
    # longest label wins where two start at the same place
    v2 = LabelVerifier(labels=["pos", "pos tive"])
    assert v2.find_label("pos tive!", ["pos", "pos tive"]) == "pos tive"
    # parse reads the label without the reference: "" when the output names none
    assert v2.parse("pos tive!", ex("pos")) == "pos tive"
    assert v2.parse("neutral", ex("pos")) == ""


def test_choice_uses_example_choices_and_accepts_all_top_answers() -> None:
    v = verifier_from_spec({"name": "choice"})
    e = ex("apple", choices=["white", "apple", "red"], answers=["apple", "red"])
    assert v.verify("red", e).score == 1.0
    assert v.verify("white!", e).score == 0.0
    with pytest.raises(TaskError, match="no labels"):
        v.verify("x", ex("a"))


# ---------------------------------------------------------------------- numeric -------


@pytest.mark.parametrize(("output", "value"), [
    ("Janet makes 9 * 2 = $18 every day.\n#### 18", 18.0),
    ("#### 1,234", 1234.0),
    ("so -3.5 degrees", -3.5),
    ("It is 3/4 of the cake", 0.75),
    ("first 5 then 7 apples", 7.0),
    ("50% of them", 50.0),
])
def test_parse_number(output: str, value: float) -> None:
    assert parse_number(output) == pytest.approx(value)


def test_numeric_gsm8k_and_tolerance() -> None:
    v = NumericVerifier()
    assert v.verify("The answer is 18.", ex("18")).score == 1.0
    assert v.verify("#### 18.0000001", ex("#### 18"), ).score == 1.0
    r = v.verify("I get 17", ex("18"))
    assert r.score == 0.0 and r.parsed == "17" and "expected 18" in r.reason
    r = v.verify("no idea", ex("18"))
    assert (r.score, r.parsed, r.reason) == (0.0, None, "no number in output")
    assert NumericVerifier(abs_tol=0.5).verify("17.6", ex("18")).score == 1.0
    assert NumericVerifier(rel_tol=0.01).verify("1005", ex("1000")).score == 1.0
    with pytest.raises(TaskError, match="no numeric reference"):
        v.verify("1", ex("banana"))


# ------------------------------------------------------------------------- math -------


@pytest.mark.parametrize(("output", "gold", "ok"), [
    ("The answer is $\\frac{1}{2}$", "\\frac{1}{2}", True),
    ("so we get \\boxed{0.5}", "\\frac12", True),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("$x = 2\\sqrt{2}$", "\\sqrt{8}", True),
    ("\\boxed{3}", "4", False),
    ("The final answer is $\\boxed{10\\%}$", "10", True),
    ("The total is \\boxed{32348}", "\\$32,\\!348", True),
    ("so \\boxed{3\\sqrt{13}}", "3\\sqrt{13}", True),
    ("\\boxed{3}", "3\\sqrt{13}", False),
])
def test_math_verify_equivalences(output: str, gold: str, ok: bool) -> None:
    pytest.importorskip("math_verify")
    r = MathVerifier().verify(output, ex(gold))
    assert r.score == float(ok), r
    assert r.parsed


def test_math_no_answer_and_threads() -> None:
    pytest.importorskip("math_verify")
    r = MathVerifier().verify("I don't know", ex("7"))
    assert r.score == 0.0
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:  # no signal-based timeout outside the main thread
        out = list(pool.map(lambda o: MathVerifier().verify(o, ex("\\frac{2}{4}")).score,
                            ["$0.5$", "$1/2$", "$3$"]))
    assert out == [1.0, 1.0, 0.0]


# ------------------------------------------------------------------ regex, contains ---


def test_regex_extract_and_match() -> None:
    v = RegexVerifier(pattern=r"answer:\s*(\w+)")
    r = v.verify("Answer: Blue. Final answer: red", ex("red"))
    assert (r.score, r.parsed) == (1.0, "red")
    assert RegexVerifier(pattern=r"answer:\s*(\w+)", which="first").verify(
        "Answer: Blue. Final answer: red", ex("red")).score == 0.0
    assert v.verify("nothing", ex("red")).reason == "pattern found nothing in output"
    m = RegexVerifier(pattern=r"^\s*{answer}\b", mode="match")
    assert m.verify(" 42 is it", ex("42")).score == 1.0
    assert m.verify("it is 42", ex("42")).score == 0.0
    with pytest.raises(TaskError, match="invalid"):
        RegexVerifier(pattern="(unclosed")
    with pytest.raises(TaskError, match="mode"):
        RegexVerifier(mode="fuzzy")


def test_contains() -> None:
    v = ContainsVerifier()
    assert v.verify("I believe it's PARIS, France", ex("Paris")).score == 1.0
    assert v.verify("Lyon", ex("Paris", answers=["Lutetia"])).score == 0.0
    assert v.verify("old Lutetia", ex("Paris", answers=["Lutetia"])).parsed == "Lutetia"


# -------------------------------------------------------------------------- code ------


@pytest.mark.sandbox
def test_run_code_basic_stdin_and_files() -> None:
    r = run_code("import sys; print(sys.stdin.read()[::-1]); print(open('data.txt').read())",
                 timeout_s=10, stdin="abc", files={"data.txt": "hello"})
    assert r.ok and r.stdout.split() == ["cba", "hello"]
    assert {"tempdir", "rlimits", "audit-hook", "python-isolated"} <= set(r.isolation)


@pytest.mark.sandbox
def test_run_code_wall_time_limit() -> None:
    r = run_code("import time\ntime.sleep(30)", timeout_s=1)
    assert r.timed_out and not r.ok and r.duration_s < 10
    r = run_code("while True:\n    pass", timeout_s=1)
    assert r.timed_out and r.summary() == "timed out"


@pytest.mark.sandbox
def test_run_code_memory_limit() -> None:
    r = run_code("x = bytearray(1024 * 1024 * 1024)\nprint('allocated')", timeout_s=10,
                 mem_mb=200)
    assert r.memory_exceeded and not r.ok and "allocated" not in r.stdout
    ok = run_code("x = bytearray(20 * 1024 * 1024)\nprint(len(x))", timeout_s=10, mem_mb=200)
    assert ok.ok and ok.stdout.strip() == str(20 * 1024 * 1024)


@pytest.mark.sandbox
def test_run_code_cannot_write_outside_its_directory(tmp_path: Path) -> None:
    target = tmp_path / "owned.txt"
    r = run_code(f"open({str(target)!r}, 'w').write('x')", timeout_s=10)
    assert not r.ok and "PermissionError" in r.stderr and not target.exists()
    r = run_code(f"import os\nos.makedirs({str(tmp_path / 'd')!r})", timeout_s=10)
    assert not r.ok and not (tmp_path / "d").exists()
    (tmp_path / "keep.txt").write_text("x")
    r = run_code(f"import os\nos.remove({str(tmp_path / 'keep.txt')!r})", timeout_s=10)
    assert not r.ok and (tmp_path / "keep.txt").exists()
    r = run_code(f"print(open({str(tmp_path / 'keep.txt')!r}).read())", timeout_s=10)
    assert not r.ok and "reading" in r.stderr
    # inside its own directory it may write and read
    r = run_code("open('out.txt', 'w').write('ok')\nprint(open('out.txt').read())")
    assert r.ok and r.stdout.strip() == "ok"


@pytest.mark.sandbox
def test_run_code_no_processes_no_network_no_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    marker = Path("/tmp") / f"metaskill-sandbox-marker-{os.getpid()}"
    r = run_code(f"import os\nos.system('touch {marker}')", timeout_s=10)
    assert not r.ok and not marker.exists()
    r = run_code("import subprocess\nsubprocess.run(['true'])", timeout_s=10)
    assert not r.ok
    r = run_code("import socket\ns = socket.create_connection(('127.0.0.1', 80), timeout=2)",
                 timeout_s=10)
    assert not r.ok
    monkeypatch.setenv("METASKILL_SECRET_TOKEN", "hunter2")
    r = run_code("import os\nprint(sorted(os.environ))", timeout_s=10)
    assert r.ok and "METASKILL_SECRET_TOKEN" not in r.stdout


@pytest.mark.sandbox
def test_run_code_network_namespace_where_available() -> None:
    prefix = network_isolation_prefix()
    if not prefix:
        pytest.skip("unshare cannot create a network namespace here (the audit hook still "
                    "refuses sockets)")
    r = run_code("print(1)", timeout_s=10)
    assert "netns" in r.isolation and r.ok


@pytest.mark.sandbox
def test_code_verifier_tests_and_stdout() -> None:
    v = CodeVerifier(timeout_s=10)
    out = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```"
    assert v.verify(out, ex(None, tests="assert add(2, 3) == 5")).score == 1.0
    r = v.verify(out, ex(None, tests=["assert add(2, 3) == 6"]))
    assert r.score == 0.0 and "AssertionError" in r.reason
    assert v.verify("print(sum(range(4)))", ex("6")).score == 1.0
    r = v.verify("print(5)", ex("6"))
    assert r.score == 0.0 and "output '5' != '6'" in r.reason
    r = CodeVerifier(timeout_s=1).verify("while True: pass", ex("1"))
    assert (r.score, r.reason) == (0.0, "timed out")


# ------------------------------------------------------------------------- judge ------


def test_parse_judge_score_variants() -> None:
    assert parse_judge_score("Fine.\nScore: 7", 10) == pytest.approx(0.7)
    assert parse_judge_score("**Score:** 4/5", 10) == pytest.approx(0.8)
    assert parse_judge_score("score = 10", 10) == 1.0
    assert parse_judge_score("no number here", 10) is None
    assert parse_judge_score("Score: 11", 10) is None


def test_judge_scores_and_critique() -> None:
    lm = ScriptedLM(default="The answer is right but terse.\nScore: 8")
    v = JudgeVerifier(lm=lm, rubric="Correct and complete.")
    r = v.verify("Paris", ex("Paris"))
    assert r.score == pytest.approx(0.8)
    assert r.meta["critique"] == "The answer is right but terse."
    assert r.reason.startswith("judge 0.80: The answer is right")
    assert "Correct and complete." in lm.calls[0] and "Paris" in lm.calls[0]


def test_judge_retries_once_then_scores_zero() -> None:
    def fixed_on_retry(prompt: str, _req: object) -> str:
        return "Score: 6" if "no valid score" in prompt else "Looks fine to me."

    lm = ScriptedLM(fixed_on_retry)
    r = JudgeVerifier(lm=lm).verify("x", ex("x"))
    assert r.score == pytest.approx(0.6) and r.meta["tries"] == 2 and len(lm.calls) == 2

    lm2 = ScriptedLM(default="I refuse to grade.")
    r = JudgeVerifier(lm=lm2).verify("x", ex("x"))
    assert r.score == 0.0 and "no parseable score after 2 tries" in r.reason
    assert len(lm2.calls) == 2


def test_judge_batch_uses_one_call_per_round() -> None:
    lm = ScriptedLM(lambda p, r: "Score: 10" if "good" in p else "meh")
    v = JudgeVerifier(lm=lm, retries=1)
    out = v.verify_batch(["good answer", "bad answer"], [ex("a"), ex("b")])
    assert [o.score for o in out] == [1.0, 0.0]
    assert len(lm.calls) == 3  # two first tries, one retry


def test_judge_needs_an_lm_and_spec_excludes_it() -> None:
    v = verifier_from_spec({"name": "judge", "rubric": "R", "scale": 5})
    with pytest.raises(TaskError, match="needs an LM"):
        v.verify("x", ex("x"))
    lm = ScriptedLM(default="Score: 5")
    v2 = verifier_from_spec(v.to_spec(), lm=lm)
    assert v2.to_spec() == {"name": "judge", "rubric": "R", "scale": 5, "max_tokens": 256,
                            "retries": 1}
    assert v2.verify("x", ex("x")).score == 1.0


# ------------------------------------------------------------- specs and crashes ------


@pytest.mark.parametrize("spec", [
    {"name": "exact", "casefold": False, "strip_punct": True, "first_line": True},
    {"name": "label", "labels": ["a", "b"], "aliases": {"a": ["alpha"]}},
    {"name": "choice", "labels": None, "aliases": {}},
    {"name": "numeric", "abs_tol": 0.01, "rel_tol": 0.0},
    {"name": "math", "float_rounding": 4, "timeout_s": 3},
    {"name": "regex", "pattern": "(\\d+)", "mode": "extract", "which": "first",
     "ignore_case": False},
    {"name": "contains", "casefold": True},
    {"name": "code", "timeout_s": 3.0, "mem_mb": 256, "site_packages": False},
])
def test_specs_round_trip_through_json_and_yaml(spec: dict) -> None:
    v = verifier_from_spec(spec)
    assert v.to_spec() == spec
    assert verifier_from_spec(json.loads(json.dumps(v.to_spec()))) == v
    assert verifier_from_spec(yaml.safe_load(yaml.safe_dump(v.to_spec()))) == v


def test_spec_errors() -> None:
    with pytest.raises(NotFoundError, match="Did you mean: numeric"):
        verifier_from_spec({"name": "numerc"})
    with pytest.raises(TaskError, match=r"no parameter\(s\) tol; it accepts: abs_tol, rel_tol"):
        verifier_from_spec({"name": "numeric", "tol": 1})
    with pytest.raises(TaskError, match="mapping with a 'name'"):
        verifier_from_spec({"labels": ["a"]})
    assert verifier_from_spec("exact") == ExactVerifier()
    assert "reasoning_gym" in VERIFIERS and "judge" in VERIFIERS


def test_safe_verify_turns_a_crash_into_a_verdict() -> None:
    class Crashing(ExactVerifier):
        def verify(self, output: str, example: Example) -> Verdict:
            raise ZeroDivisionError("division by zero")

    r = safe_verify(Crashing(), "x", ex("x"))
    assert r.score == 0.0 and r.reason == "verifier error: ZeroDivisionError: division by zero"
    out = safe_verify_batch(Crashing(), ["a", "b"], [ex("a"), ex("b")])
    assert [o.reason.startswith("verifier error") for o in out] == [True, True]
    # a verifier's own errors are catchable the same way
    r = safe_verify(NumericVerifier(), "1", ex("not a number"))
    assert r.score == 0.0 and "TaskError" in r.reason
