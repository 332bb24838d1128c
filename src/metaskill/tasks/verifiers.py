"""Verifiers: exact, label/choice, numeric, math-equivalent, regex, contains, code, LM judge.

Each returns a :class:`~metaskill.tasks.base.Verdict`: a score in [0, 1], a short reason
and the answer it parsed. A verifier is plain data: :meth:`Verifier.to_spec` gives a
JSON-able dict and :func:`verifier_from_spec` rebuilds it, so a Task's verifier
round-trips through JSON and YAML (an LM judge gets its LM passed in explicitly).

``verify`` may raise (a scorer that crashes, a judge LM that is down). The harness
catches it and records the example as failed; :func:`safe_verify` does the same for any
caller, turning the exception into ``Verdict(score=0, reason="verifier error: ...")``.

Example:
    >>> from metaskill.core.types import Example
    >>> v = verifier_from_spec({"name": "numeric"})
    >>> v.verify("so she makes $18.", Example(id="1", input="q", answer="#### 18")).score
    1.0
    >>> verifier_from_spec(v.to_spec()) == v
    True
"""

from __future__ import annotations

import math
import re
import string
import threading
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

from metaskill.core.errors import TaskError
from metaskill.core.registry import Registry
from metaskill.core.types import Example, Request
from metaskill.tasks.base import Verdict, Verifier

# ---------------------------------------------------------------- helpers -----------


def normalize(
    text: str,
    *,
    casefold: bool = True,
    strip_punct: bool = False,
    collapse_ws: bool = True,
    strip_chars: str = " \t\n.\"'`",
) -> str:
    """Normalize text for comparison.

    Example:
        >>> normalize("  The  Answer. ")
        'the answer'
        >>> normalize("Hello, world!", strip_punct=True)
        'hello world'
    """
    if casefold:
        text = text.casefold()
    if strip_punct:
        text = text.translate(str.maketrans("", "", string.punctuation))
    if collapse_ws:
        text = " ".join(text.split())
    return text.strip(strip_chars)


def references(example: Example) -> list[str]:
    """The accepted answers: ``example.answer`` plus ``metadata["answers"]`` if present.

    Example:
        >>> references(Example(id="1", input="", answer="a", metadata={"answers": ["b"]}))
        ['a', 'b']
    """
    refs = [] if example.answer is None else [example.answer]
    extra = example.metadata.get("answers")
    if isinstance(extra, list):
        refs += [str(a) for a in extra if str(a) not in refs]
    return refs


def _clip(text: str, n: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def safe_verify(verifier: Verifier, output: str, example: Example) -> Verdict:
    """``verifier.verify`` that never raises: an exception becomes a score-0 Verdict.

    Example:
        >>> class Broken(ExactVerifier):
        ...     def verify(self, output, example): raise RuntimeError("boom")
        >>> safe_verify(Broken(), "x", Example(id="1", input="", answer="x")).reason
        'verifier error: RuntimeError: boom'
    """
    try:
        return verifier.verify(output, example)
    except Exception as e:
        msg = " ".join(str(e).split())
        return Verdict(score=0.0, reason=_clip(f"verifier error: {type(e).__name__}: {msg}", 300),
                       meta={"error": type(e).__name__})


def safe_verify_batch(
    verifier: Verifier, outputs: list[str], examples: list[Example]
) -> list[Verdict]:
    """``verify_batch`` that never raises; falls back to per-example :func:`safe_verify`."""
    try:
        return verifier.verify_batch(outputs, examples)
    except Exception:
        return [safe_verify(verifier, o, e) for o, e in zip(outputs, examples, strict=True)]


class _Spec(Verifier):
    """Dataclass-backed verifiers: every field is a spec parameter."""

    def to_spec(self) -> dict[str, Any]:
        """The verifier as ``{"name": ..., **parameters}`` (JSON-able)."""
        spec: dict[str, Any] = {"name": self.name}
        for f in fields(self):  # type: ignore[arg-type]
            if f.metadata.get("spec", True):
                spec[f.name] = getattr(self, f.name)
        return spec


# ---------------------------------------------------------------- verifiers ---------


@dataclass
class ExactVerifier(_Spec):
    """Exact match after normalization, against the answer or any ``metadata["answers"]``.

    Attributes:
        casefold: ignore case.
        strip_punct: drop ASCII punctuation.
        first_line: compare only the output's first non-empty line.
    """

    name: ClassVar[str] = "exact"
    casefold: bool = True
    strip_punct: bool = False
    first_line: bool = False

    def _norm(self, text: str) -> str:
        return normalize(text, casefold=self.casefold, strip_punct=self.strip_punct)

    def parse(self, output: str, example: Example) -> str | None:
        """The normalized output (its first non-empty line with ``first_line``).

        Example:
            >>> ExactVerifier(first_line=True).parse("\\n Paris.\\nis", Example(id="1", input=""))
            'paris'
        """
        text = output
        if self.first_line:
            text = next((ln for ln in output.splitlines() if ln.strip()), "")
        return self._norm(text)

    def verify(self, output: str, example: Example) -> Verdict:
        """Score 1 if the normalized output equals a normalized reference."""
        got = self.parse(output, example) or ""
        refs = references(example)
        ok = any(got == self._norm(r) for r in refs)
        reason = "exact match" if ok else f"'{_clip(got)}' != '{_clip(refs[0] if refs else '')}'"
        return Verdict(score=float(ok), reason=reason, parsed=got)


@dataclass
class LabelVerifier(_Spec):
    """Classification: the output's first label word (case-insensitive) is its label.

    Labels come from ``labels`` or, for multiple choice, from the example's
    ``metadata["choices"]``. ``aliases`` maps a label to other words that mean it
    (``{"Sci/Tech": ["science", "technology"]}``). A label must appear as a whole word;
    where several start at the same place the longest wins.
    """

    name: ClassVar[str] = "label"
    labels: list[str] | None = None
    aliases: dict[str, list[str]] = field(default_factory=dict)

    def find_label(self, output: str, labels: list[str]) -> str | None:
        """The label whose word (or alias) appears first in ``output``, else None.

        Example:
            >>> LabelVerifier().find_label("It is Positive, not negative",
            ...                            ["negative", "positive"])
            'positive'
        """
        best: tuple[int, int, str] | None = None
        for label in labels:
            for word in [label, *self.aliases.get(label, [])]:
                if not word.strip():
                    continue
                pat = r"(?<![0-9A-Za-z])" + re.escape(word.strip()) + r"(?![0-9A-Za-z])"
                m = re.search(pat, output, flags=re.IGNORECASE)
                if m and (best is None or (m.start(), -len(word)) < (best[0], best[1])):
                    best = (m.start(), -len(word), label)
        return best[2] if best else None

    def parse(self, output: str, example: Example) -> str | None:
        """The label ``output`` names ("" if none; None if there are no labels to read).

        Example:
            >>> LabelVerifier(["no", "yes"]).parse("Yes, it is.", Example(id="1", input=""))
            'yes'
            >>> LabelVerifier(["no", "yes"]).parse("maybe", Example(id="1", input=""))
            ''
        """
        labels = self.labels or example.metadata.get("choices")
        if not labels:
            return None
        return self.find_label(output, [str(x) for x in labels]) or ""

    def verify(self, output: str, example: Example) -> Verdict:
        """Score 1 if the first label word in ``output`` is the reference label."""
        labels = self.labels or example.metadata.get("choices")
        if not labels:
            raise TaskError(
                f"verifier '{self.name}' has no labels for example '{example.id}'; "
                "give the verifier labels or the example metadata['choices']."
            )
        got = self.find_label(output, [str(x) for x in labels])
        if got is None:
            return Verdict(score=0.0, reason="no label word in output "
                           f"(labels: {_clip(', '.join(map(str, labels)), 80)})", parsed=None)
        ok = got.casefold() in {r.casefold() for r in references(example)}
        return Verdict(score=float(ok), reason=f"parsed label '{got}'"
                       + ("" if ok else f", expected '{example.answer}'"), parsed=got)


@dataclass
class ChoiceVerifier(LabelVerifier):
    """Multiple choice: a label verifier over each example's ``metadata["choices"]``."""

    name: ClassVar[str] = "choice"


_NUM = re.compile(
    r"(?<![\w.])[-−]?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s?/\s?\d+(?:\.\d+)?)?%?"
)


def parse_number(text: str) -> float | None:
    """The number after the last ``####``, else the last number in ``text``.

    Handles thousands separators, ``$``, ``%`` (dropped), a leading minus and ``a/b``.

    Example:
        >>> parse_number("She pays $1,200.50 in total")
        1200.5
        >>> parse_number("step 1 ... #### -7")
        -7.0
        >>> parse_number("no digits") is None
        True
    """
    if "####" in text:
        tail = text.rsplit("####", 1)[1]
        m = _NUM.search(tail)
        if m:
            return _to_float(m.group(0))
    found = _NUM.findall(text)
    return _to_float(found[-1]) if found else None


def _to_float(tok: str) -> float | None:
    tok = tok.replace("−", "-").replace("$", "").replace(",", "").replace("%", "")
    tok = tok.replace(" ", "")
    try:
        if "/" in tok:
            a, b = tok.split("/", 1)
            return float(a) / float(b) if float(b) != 0 else None
        return float(tok)
    except ValueError:
        return None


@dataclass
class NumericVerifier(_Spec):
    """Numbers: GSM8K's ``#### N`` or the last number of the output, within a tolerance.

    Attributes:
        abs_tol: absolute tolerance.
        rel_tol: relative tolerance.
    """

    name: ClassVar[str] = "numeric"
    abs_tol: float = 1e-6
    rel_tol: float = 0.0

    def parse(self, output: str, example: Example) -> str | None:
        """The output's number (``#### N``, else the last one), None if it has none.

        Example:
            >>> NumericVerifier().parse("so 3 + 4 = 7.0", Example(id="1", input=""))
            '7'
        """
        got = parse_number(output)
        return None if got is None else f"{got:g}"

    def verify(self, output: str, example: Example) -> Verdict:
        """Score 1 if the parsed number is within tolerance of the reference number."""
        ref = parse_number(example.answer or "")
        if ref is None:
            raise TaskError(f"example '{example.id}' has no numeric reference answer "
                            f"({_clip(example.answer or '', 40)!r}).")
        got = parse_number(output)
        if got is None:
            return Verdict(score=0.0, reason="no number in output", parsed=None)
        ok = math.isclose(got, ref, abs_tol=self.abs_tol, rel_tol=self.rel_tol)
        shown = f"{got:g}"
        return Verdict(score=float(ok), reason=f"parsed {shown}"
                       + ("" if ok else f", expected {ref:g}"), parsed=shown)


@dataclass
class MathVerifier(_Spec):
    """Mathematical equivalence with the ``math-verify`` library (LaTeX, boxed, sympy).

    Attributes:
        float_rounding: decimals compared for floats.
        timeout_s: parse/compare timeout (signal-based, so only in the main thread).
    """

    name: ClassVar[str] = "math"
    float_rounding: int = 6
    timeout_s: int = 5

    def _timeout(self) -> int | None:
        main = threading.current_thread() is threading.main_thread()
        return self.timeout_s if main else None

    def parse(self, output: str, example: Example) -> str | None:
        """The output's final math answer as math-verify reads it (None if none)."""
        try:
            from math_verify import parse
        except ImportError:
            raise TaskError("the 'math' verifier needs math-verify; pip install math-verify"
                            ) from None
        pred = parse(output, parsing_timeout=self._timeout())
        return str(pred[-1]) if pred else None

    def verify(self, output: str, example: Example) -> Verdict:
        """Score 1 if the output's final answer is equivalent to the reference."""
        try:
            from math_verify import parse, verify
        except ImportError:
            raise TaskError("the 'math' verifier needs math-verify; pip install math-verify"
                            ) from None
        ref = (example.answer or "").strip()
        timeout = self._timeout()
        # A bare reference ("\\frac{1}{2}", "\\$32,\\!348") parses best inside $...$;
        # one that is already boxed or delimited parses as it is.
        tries = [ref] if ref.startswith("$") or "\\boxed" in ref else [
            f"${ref}$", f"\\boxed{{{ref}}}", ref]
        gold: list[Any] = []
        for text in tries:
            gold = parse(text, parsing_timeout=timeout)
            if gold:
                break
        if not gold:
            raise TaskError(f"math-verify cannot parse the reference of example "
                            f"'{example.id}': {_clip(example.answer or '', 60)!r}")
        pred = parse(output, parsing_timeout=timeout)
        if not pred:
            return Verdict(score=0.0, reason="no math answer found in output", parsed=None)
        shown = str(pred[-1])
        ok = bool(verify(gold, pred, float_rounding=self.float_rounding, timeout_seconds=timeout))
        return Verdict(score=float(ok), reason="equivalent" if ok else
                       f"'{_clip(shown, 40)}' not equivalent to '{_clip(str(gold[-1]), 40)}'",
                       parsed=shown)


@dataclass
class RegexVerifier(_Spec):
    """Regular expressions, two ways.

    ``mode="extract"``: the pattern pulls the answer out of the output (group 1 if the
    pattern has groups; the last match by default) and it is compared with the reference
    after normalization. ``mode="match"``: the output passes if the pattern matches it
    (``{answer}`` in the pattern is replaced by the escaped reference).
    """

    name: ClassVar[str] = "regex"
    pattern: str = r"(.+)"
    mode: str = "extract"
    which: str = "last"
    ignore_case: bool = True

    def __post_init__(self) -> None:
        if self.mode not in ("extract", "match"):
            raise TaskError(f"regex verifier mode must be 'extract' or 'match', got '{self.mode}'.")
        if self.which not in ("first", "last"):
            raise TaskError(
                f"regex verifier 'which' must be 'first' or 'last', got '{self.which}'.")
        try:
            re.compile(self.pattern.replace("{answer}", "x"))
        except re.error as e:
            raise TaskError(f"regex verifier pattern {self.pattern!r} is invalid: {e}.") from None

    def parse(self, output: str, example: Example) -> str | None:
        """``extract`` mode: the text the pattern pulls out (None if none); ``match``
        mode reads no answer (None).

        Example:
            >>> RegexVerifier(pattern=r"Answer: (\\w+)").parse("Answer: B",
            ...                                              Example(id="1", input=""))
            'B'
        """
        if self.mode == "match":
            return None
        flags = re.IGNORECASE if self.ignore_case else 0
        matches = list(re.finditer(self.pattern, output, flags))
        if not matches:
            return None
        m = matches[-1] if self.which == "last" else matches[0]
        return (m.group(1) if m.re.groups else m.group(0)) or ""

    def verify(self, output: str, example: Example) -> Verdict:
        """Score by extraction-and-compare or by match (see the class docstring)."""
        flags = re.IGNORECASE if self.ignore_case else 0
        if self.mode == "match":
            refs = references(example) or [""]
            for ref in refs:
                pat = self.pattern.replace("{answer}", re.escape(ref))
                m = re.search(pat, output, flags)
                if m:
                    return Verdict(score=1.0, reason="pattern matched", parsed=m.group(0))
            return Verdict(score=0.0, reason="pattern did not match", parsed=None)
        got = self.parse(output, example)
        if got is None:
            return Verdict(score=0.0, reason="pattern found nothing in output", parsed=None)
        ok = any(normalize(got) == normalize(r) for r in references(example))
        return Verdict(score=float(ok), reason=f"extracted '{_clip(got)}'"
                       + ("" if ok else f", expected '{_clip(example.answer or '')}'"), parsed=got)


@dataclass
class ContainsVerifier(_Spec):
    """Score 1 if a normalized reference occurs in the normalized output."""

    name: ClassVar[str] = "contains"
    casefold: bool = True

    def verify(self, output: str, example: Example) -> Verdict:
        """Substring test against each accepted answer."""
        got = normalize(output, casefold=self.casefold, strip_chars="")
        for ref in references(example):
            r = normalize(ref, casefold=self.casefold)
            if r and r in got:
                return Verdict(score=1.0, reason=f"contains '{_clip(ref, 40)}'", parsed=ref)
        return Verdict(score=0.0, reason=f"does not contain '{_clip(example.answer or '', 40)}'",
                       parsed=None)


_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


def extract_code(output: str) -> str:
    """The last fenced code block of ``output``, or the whole output if there is none.

    Example:
        >>> extract_code("Here:\\n```python\\nprint(1)\\n```\\nDone")
        'print(1)\\n'
    """
    blocks = _FENCE.findall(output)
    return blocks[-1] if blocks else output


@dataclass
class CodeVerifier(_Spec):
    """Run the model's program in the sandbox (:func:`metaskill.tasks.sandbox.run_code`).

    With ``metadata["tests"]`` (Python asserts) the program plus the tests must exit 0;
    otherwise its standard output (fed ``metadata["stdin"]``) must equal the reference.

    Attributes:
        timeout_s: wall-time limit per run.
        mem_mb: memory limit per run.
        site_packages: allow installed packages in the sandbox.
    """

    name: ClassVar[str] = "code"
    timeout_s: float = 10.0
    mem_mb: int = 512
    site_packages: bool = False

    def parse(self, output: str, example: Example) -> str | None:
        """The program in ``output`` (its last fenced block), without running it."""
        return _clip(extract_code(output), 2000)

    def verify(self, output: str, example: Example) -> Verdict:
        """Execute and score (1 = tests pass / output matches)."""
        from metaskill.tasks.sandbox import run_code

        code = extract_code(output)
        tests = example.metadata.get("tests")
        if isinstance(tests, list):
            tests = "\n".join(str(t) for t in tests)
        program = f"{code}\n\n{tests}\n" if tests else code
        res = run_code(program, timeout_s=self.timeout_s, mem_mb=self.mem_mb,
                       stdin=example.metadata.get("stdin"), site_packages=self.site_packages)
        meta = {"stderr": res.stderr[-2000:], "returncode": res.returncode,
                "duration_s": round(res.duration_s, 3), "isolation": res.isolation}
        if tests or example.answer is None:
            return Verdict(score=float(res.ok), reason=("tests passed" if res.ok and tests else
                           res.summary()), parsed=_clip(code, 2000), meta=meta)
        if not res.ok:
            return Verdict(score=0.0, reason=res.summary(), parsed=_clip(code, 2000), meta=meta)
        ok = res.stdout.strip() == example.answer.strip()
        return Verdict(score=float(ok), reason="output matches" if ok else
                       f"output '{_clip(res.stdout)}' != '{_clip(example.answer)}'",
                       parsed=_clip(code, 2000), meta=meta)


JUDGE_PROMPT = """You are a strict grader. Grade the response with this rubric:
{rubric}

Question:
{question}

Reference answer (may be empty):
{reference}

Response to grade:
{response}

Write a short critique, then end with a last line of the form "Score: N" where N is an
integer from 0 (worst) to {scale} (best)."""

_SCORE = re.compile(
    r"score\s*\**\s*[:=]?\s*\**\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*(\d+(?:\.\d+)?))?", re.IGNORECASE
)


def parse_judge_score(text: str, scale: int) -> float | None:
    """The judge's score in [0, 1] from text like ``Score: 7``, ``**Score:** 7/10``.

    Returns None if there is no score or it is outside ``[0, scale]``.

    Example:
        >>> parse_judge_score("Good but terse.\\n**Score:** 8/10", 10)
        0.8
        >>> parse_judge_score("Score: 12", 10) is None
        True
    """
    matches = list(_SCORE.finditer(text))
    if not matches:
        return None
    m = matches[-1]
    value = float(m.group(1))
    top = float(m.group(2)) if m.group(2) else float(scale)
    if top <= 0 or value < 0 or value > top:
        return None
    return value / top


@dataclass
class JudgeVerifier(_Spec):
    """An LM judge: a rubric prompt that returns a score and a critique.

    The LM is passed explicitly (``JudgeVerifier(lm=..., rubric=...)``, or
    ``verifier_from_spec(spec, lm=...)``); it is not part of the spec. A reply with no
    parseable score is retried once with a reminder; after that the score is 0 and the
    reason says so. The full critique goes to ``Verdict.meta["critique"]``.

    Attributes:
        rubric: what a good answer is.
        scale: scores are integers 0..scale, divided by scale.
        max_tokens: length of the judge's reply.
        retries: extra tries when the reply has no score.
    """

    name: ClassVar[str] = "judge"
    rubric: str = "The response answers the question correctly and completely."
    scale: int = 10
    max_tokens: int = 256
    retries: int = 1
    lm: Any = field(default=None, repr=False, compare=False, metadata={"spec": False})

    def _request(self, messages: list[dict[str, str]]) -> Request:
        if getattr(self.lm, "chat", True):
            return Request(messages=messages, max_tokens=self.max_tokens, temperature=0.0)
        prompt = "\n\n".join(m["content"] for m in messages) + "\n"
        return Request(prompt=prompt, max_tokens=self.max_tokens, temperature=0.0)

    def parse(self, output: str, example: Example) -> str | None:
        """None: a judge grades answers but reads none (and is not asked here)."""
        return None

    def verify(self, output: str, example: Example) -> Verdict:
        """Ask the judge LM once (plus retries) and parse its score."""
        return self.verify_batch([output], [example])[0]

    def verify_batch(self, outputs: list[str], examples: list[Example]) -> list[Verdict]:
        """Judge a batch with one LM call per round (first try, then each retry)."""
        if self.lm is None:
            raise TaskError("the 'judge' verifier needs an LM: JudgeVerifier(lm=...) or "
                            "verifier_from_spec(spec, lm=...).")
        convs = [[{"role": "user", "content": JUDGE_PROMPT.format(
            rubric=self.rubric, question=e.text, reference=e.answer or "", response=o,
            scale=self.scale)}] for o, e in zip(outputs, examples, strict=True)]
        verdicts: list[Verdict | None] = [None] * len(outputs)
        replies = [""] * len(outputs)
        todo = list(range(len(outputs)))
        for attempt in range(self.retries + 1):
            comps = self.lm.complete([self._request(convs[i]) for i in todo])
            left = []
            for i, c in zip(todo, comps, strict=True):
                replies[i] = c.text
                score = parse_judge_score(c.text, self.scale)
                if score is None:
                    left.append(i)
                    convs[i] = [*convs[i], {"role": "assistant", "content": c.text},
                                {"role": "user", "content": "Your reply had no valid score. Reply "
                                 f"with one line: Score: N (N an integer 0 to {self.scale})."}]
                    continue
                critique = _SCORE.split(c.text)[0].strip() or c.text.strip()
                verdicts[i] = Verdict(score=score,
                                      reason=_clip(f"judge {score:.2f}: {critique}", 160),
                                      parsed=f"{score:.4g}",
                                      meta={"critique": critique, "tries": attempt + 1})
            todo = left
            if not todo:
                break
        for i in todo:
            verdicts[i] = Verdict(score=0.0, reason=f"judge gave no parseable score after "
                                  f"{self.retries + 1} tries: {_clip(replies[i], 80)!r}",
                                  parsed=None, meta={"critique": replies[i]})
        return [v for v in verdicts if v is not None]


# ---------------------------------------------------------------- registry ----------

VERIFIERS: Registry[type[Verifier]] = Registry("verifier")
for _cls in (ExactVerifier, LabelVerifier, ChoiceVerifier, NumericVerifier, MathVerifier,
             RegexVerifier, ContainsVerifier, CodeVerifier, JudgeVerifier):
    VERIFIERS.register(_cls.name, _cls)
VERIFIERS.register("reasoning_gym", "metaskill.tasks.rgym:ReasoningGymVerifier")


def verifier_from_spec(spec: dict[str, Any] | str, *, lm: Any = None) -> Verifier:
    """Build a Verifier from its spec (``{"name": ..., **params}`` or just a name).

    Args:
        spec: what :meth:`Verifier.to_spec` returned, or a verifier name.
        lm: the LM for verifiers that need one (``judge``).

    Raises:
        NotFoundError: unknown verifier name (close names suggested).
        TaskError: an unknown or invalid parameter (the accepted ones are listed).

    Example:
        >>> verifier_from_spec({"name": "label", "labels": ["no", "yes"]}).labels
        ['no', 'yes']
    """
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        raise TaskError(f"a verifier spec is a mapping with a 'name', got {spec!r}; "
                        "e.g. {name: exact}.")
    params = {k: v for k, v in spec.items() if k != "name"}
    cls = VERIFIERS.get(str(spec["name"]))
    known = [f.name for f in fields(cls) if f.metadata.get("spec", True)] if hasattr(
        cls, "__dataclass_fields__") else []
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise TaskError(f"verifier '{spec['name']}' has no parameter(s) {', '.join(unknown)}; "
                        f"it accepts: {', '.join(known) or 'none'}.")
    if "lm" in {f.name for f in fields(cls)} if hasattr(cls, "__dataclass_fields__") else False:
        params["lm"] = lm
    try:
        return cls(**params)
    except TypeError as e:
        raise TaskError(f"verifier '{spec['name']}': {e}.") from None


def verifier_spec(verifier: Verifier) -> dict[str, Any]:
    """JSON-able spec of any verifier (``to_spec``, made JSON-safe)."""
    spec = verifier.to_spec()
    return {k: (asdict(v) if hasattr(v, "__dataclass_fields__") else v) for k, v in spec.items()}
