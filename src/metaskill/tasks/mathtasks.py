"""GSM8K and MATH (Hendrycks et al. 2021; MATH-500 too), loaded from a path.

These are larger than what ships in the package; point ``path`` at the folder with the
original files (the layout of ``../shared/data/gsm8k`` and ``../shared/data/math``) or set
``METASKILL_DATA`` to a folder holding ``gsm8k/`` and ``math/``.

Splits follow :mod:`metaskill.tasks.splits`: dev is the first ``n_dev`` records of the
train file's permutation, train the next ``n_train`` (default: all the rest), test the
first ``n_test`` of the test file's permutation (default: all).

Example:
    >>> t = load_gsm8k(path="/work/shared/data/gsm8k", n_test=5)   # doctest: +SKIP
    >>> t.splits["test"][0].answer                                   # doctest: +SKIP
    '18'
"""

from __future__ import annotations

import re
from pathlib import Path

from metaskill.core.errors import TaskError
from metaskill.core.types import Example
from metaskill.tasks.base import Task
from metaskill.tasks.builtin import data_dir
from metaskill.tasks.sources import Record, read_records
from metaskill.tasks.splits import SplitSlice, plan_indices, protocol_metadata
from metaskill.tasks.verifiers import MathVerifier, NumericVerifier


def _need_dir(name: str, path: str | None, must_have: str) -> Path:
    d = data_dir(name, path)
    if d is None:
        raise TaskError(
            f"task '{name}' loads from a path: pass path=DIR (a folder with {must_have}) "
            "or set METASKILL_DATA to a folder that holds "
            f"'{name}/' (e.g. ../shared/data)."
        )
    if not d.is_dir():
        raise TaskError(f"task '{name}': '{d}' is not a folder; pass path=DIR with {must_have}.")
    return d


def _train_test_plan(
    train_file: str, test_file: str, n_train: int | None, n_dev: int, n_test: int | None
) -> list[SplitSlice]:
    return [
        SplitSlice("dev", train_file, 0, n_dev),
        SplitSlice("train", train_file, n_dev, None if n_train is None else n_dev + n_train),
        SplitSlice("test", test_file, 0, n_test),
    ]


def gsm8k_final_answer(solution: str) -> str:
    """The number after ``####`` in a GSM8K solution, without thousands separators.

    Example:
        >>> gsm8k_final_answer("... so 1,200 in all.\\n#### 1,200")
        '1200'
    """
    if "####" not in solution:
        raise TaskError("a GSM8K answer must end with '#### <number>'.")
    return solution.rsplit("####", 1)[1].strip().replace(",", "")


def load_gsm8k(
    *, path: str | None = None, seed: int = 0, n_train: int | None = None, n_dev: int = 200,
    n_test: int | None = None, test_file: str = "test.jsonl",
) -> Task:
    """GSM8K grade-school math word problems; the numeric verifier checks ``#### N``.

    Args:
        path: folder with train.jsonl and test.jsonl (``{question, answer}`` lines).
        seed: permutation seed.
        n_train: train pool size (default: all of train.jsonl after dev).
        n_dev: dev size, carved from train.jsonl.
        n_test: test size (default: all of the test file).
        test_file: ``test.jsonl`` or ``test_socratic.jsonl``.

    The answer is the final number; the full worked solution is in
    ``metadata["solution"]`` (demonstrations may use it).
    """
    d = _need_dir("gsm8k", path, "train.jsonl and test.jsonl")
    files = {f: read_records(d / f) for f in ("train.jsonl", test_file)}
    counts = {f: len(r) for f, r in files.items()}
    plan = _train_test_plan("train.jsonl", test_file, n_train, n_dev, n_test)
    idx = plan_indices(plan, counts, seed)

    def ex(r: Record) -> Example:
        for k in ("question", "answer"):
            if k not in r.data:
                raise TaskError(f"{r.file}:{r.line}: missing field '{k}' (fields there: "
                                f"{', '.join(sorted(r.data))}); GSM8K lines need question "
                                "and answer.")
        return Example(id=r.id, input=r.data["question"],
                       answer=gsm8k_final_answer(r.data["answer"]),
                       metadata={"solution": r.data["answer"]})

    file_of = {s.split: s.file for s in plan}
    splits = {sp: [ex(files[file_of[sp]][i]) for i in idx[sp]] for sp in ("train", "dev", "test")}
    return Task(
        name="gsm8k", version="1", description="GSM8K grade-school math word problems",
        splits=splits, template="Question: {input}\nAnswer:",
        instructions="Solve the problem step by step. End with a line '#### N' where N is "
                     "the final number.",
        kind="generative", verifier=NumericVerifier(),
        metadata={"source": "openai/grade-school-math @3101c7d", "licence": "MIT",
                  "data": str(d), "split_protocol": protocol_metadata(plan, counts, seed)},
    )


def subject_skill(subject: str) -> str:
    """A MATH subject as a skill name.

    Example:
        >>> subject_skill("Counting & Probability")
        'counting_and_probability'
    """
    s = subject.strip().lower().replace("&", "and")
    return re.sub(r"[^0-9a-z]+", "_", s).strip("_")


def _level(value: object) -> int | None:
    m = re.search(r"\d+", str(value))
    return int(m.group(0)) if m else None


def load_math(
    *, path: str | None = None, subset: str = "full", seed: int = 0,
    n_train: int | None = None, n_dev: int = 200, n_test: int | None = None,
    subjects: list[str] | None = None, levels: list[int] | None = None,
) -> Task:
    """MATH competition problems: one skill per subject, the level kept in metadata.

    Args:
        path: folder with ``train/<subject>.jsonl``, ``test/<subject>.jsonl`` and
            ``math500_test.jsonl`` (records ``{unique_id, subject, level, problem,
            solution, answer}``).
        subset: ``math500`` (test = MATH-500) or ``full`` (test = all 5,000 test problems).
        seed: permutation seed.
        n_train: train pool size (default: all of train after dev).
        n_dev: dev size, carved from train.
        n_test: test size (default: all).
        subjects: keep only these subjects (skill names, e.g. ``["algebra"]``).
        levels: keep only these levels (1-5).

    The verifier is math-equivalence (``math-verify``). Train files are pooled in sorted
    subject order before the permutation; ids are the dataset's ``unique_id``. Records
    without a reference answer (4 in MATH train) are dropped and listed in the metadata.
    """
    if subset not in ("math500", "full"):
        raise TaskError(f"math subset must be 'math500' or 'full', got '{subset}'.")
    d = _need_dir("math", path, "train/, test/ and math500_test.jsonl")
    for sub in ("train", "test"):
        if not (d / sub).is_dir():
            raise TaskError(f"task 'math': '{d}' has no '{sub}/' folder of <subject>.jsonl files.")

    def pooled(sub: str) -> list[Record]:
        recs: list[Record] = []
        for f in sorted((d / sub).glob("*.jsonl")):
            recs.extend(read_records(f))
        return recs

    train_recs = pooled("train")
    test_recs = read_records(d / "math500_test.jsonl") if subset == "math500" else pooled("test")

    def keep(r: Record) -> bool:
        ok = subjects is None or subject_skill(str(r.data.get("subject", ""))) in subjects
        return ok and (levels is None or _level(r.data.get("level")) in levels)

    no_answer = [r.id for r in train_recs + test_recs if r.data.get("answer") in (None, "")]
    train_recs = [r for r in train_recs if keep(r) and r.data.get("answer") not in (None, "")]
    test_recs = [r for r in test_recs if keep(r) and r.data.get("answer") not in (None, "")]
    test_name = "math500_test.jsonl" if subset == "math500" else "test/*.jsonl"
    counts = {"train/*.jsonl": len(train_recs), test_name: len(test_recs)}
    plan = _train_test_plan("train/*.jsonl", test_name, n_train, n_dev, n_test)
    idx = plan_indices(plan, counts, seed)

    def ex(r: Record) -> Example:
        for k in ("problem", "answer", "subject"):
            if k not in r.data:
                raise TaskError(f"{r.file}:{r.line}: missing field '{k}' (fields there: "
                                f"{', '.join(sorted(r.data))}).")
        return Example(
            id=str(r.data.get("unique_id", r.id)), input=r.data["problem"],
            answer=str(r.data["answer"]), skills=[subject_skill(str(r.data["subject"]))],
            metadata={"level": _level(r.data.get("level")), "level_raw": r.data.get("level"),
                      "subject": r.data["subject"], "solution": r.data.get("solution", "")},
        )

    src = {"dev": train_recs, "train": train_recs, "test": test_recs}
    splits = {sp: [ex(src[sp][i]) for i in idx[sp]] for sp in ("train", "dev", "test")}
    proto = protocol_metadata(plan, counts, seed, pooling="train/ and test/ files are "
                              "concatenated in sorted file-name order, then filtered by "
                              "subjects/levels, before the permutation; records without an "
                              "answer are dropped", dropped_no_answer=no_answer)
    return Task(
        name="math" if subset == "full" else "math500", version="1",
        description="MATH competition problems" + (" (MATH-500 test)" if subset == "math500"
                                                   else ""),
        splits=splits, template="Problem: {input}\nSolution:",
        instructions="Solve the problem. Put the final answer in \\boxed{}.",
        kind="generative", verifier=MathVerifier(),
        metadata={"source": "hendrycks/math (MIT) via ../shared/data/math; MATH-500 from "
                            "HuggingFaceH4/MATH-500", "licence": "MIT", "data": str(d),
                  "subset": subset, "split_protocol": proto},
    )


def load_math500(
    *, path: str | None = None, seed: int = 0, n_train: int | None = None, n_dev: int = 200,
    n_test: int | None = None, subjects: list[str] | None = None,
    levels: list[int] | None = None,
) -> Task:
    """MATH with the MATH-500 test set (train/dev from MATH train); see :func:`load_math`."""
    return load_math(path=path, subset="math500", seed=seed, n_train=n_train, n_dev=n_dev,
                     n_test=n_test, subjects=subjects, levels=levels)
