"""BIG-bench JSON tasks: any ``task.json`` (or a folder of subtasks) as a Task.

Subtask names and the tasks' keywords become skills. Multiple-choice examples
(``target_scores``) are scored by the choice verifier (every top-scoring choice is
accepted); generative ones (``target``, a string or a list of accepted strings) by exact
match after normalization, or by the task's ``output_regex`` where it has one.

Prompt format follows BIG-bench's JSON-task defaults: ``task_prefix`` becomes the
instructions; each example is ``example_input_prefix`` (default ``"Q: "``) + input, the
choices as ``"\\n  choice: X"`` lines unless ``append_choices_to_input`` is false, then
``example_output_prefix`` (default ``"\\nA:"``). Choices are shuffled per example with a
fixed seed (``random.Random("choices:<subtask>:<n>")``), as BIG-bench shuffles them: the
JSON files list the correct choice in a fixed place (last in ``arithmetic``, first in
``cause_and_effect``), which a few demonstrations would otherwise give away.

Split protocol: the examples of all subtasks (sorted by folder name, then in file order)
form one pool with ids ``"<subtask>:<1-based example number>"``; the pool is permuted
with ``numpy.random.default_rng(seed)`` and sliced into train, dev, test (in that order).

Example:
    >>> t = load_bigbench(path="/work/shared/data/bigbench/tasks/odd_one_out")  # doctest: +SKIP
    >>> t.kind, t.splits["test"][0].metadata["choices"][:2]                      # doctest: +SKIP
    ('multiple_choice', ['white', 'black'])
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from metaskill.core.errors import TaskError
from metaskill.core.readers import check_depth, loads, read_text
from metaskill.core.types import Example
from metaskill.tasks.base import Task, TaskKind
from metaskill.tasks.splits import SplitSlice, plan_indices, protocol_metadata
from metaskill.tasks.verifiers import ChoiceVerifier, ExactVerifier, RegexVerifier, Verifier


def _read_json(p: Path) -> dict[str, Any]:
    text = read_text(p, "BIG-bench file", TaskError)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise TaskError(f"{p}:{e.lineno}: malformed JSON ({e.msg}); fix the file.") from None
    except (RecursionError, ValueError):
        loads(text, str(p), TaskError)  # raises its one-line error (too deep, too long)
        raise
    check_depth(data, str(p), TaskError)
    if not isinstance(data, dict):
        raise TaskError(f"{p}: a BIG-bench task.json is a JSON object with 'examples'.")
    return data


def _find_tasks(path: Path, subtasks: list[str] | None) -> tuple[dict[str, Any], list[
        tuple[str, Path, dict[str, Any]]]]:
    if not path.exists():
        raise TaskError(f"BIG-bench path '{path}' does not exist; pass a task.json or a "
                        "task folder.")
    file = path if path.is_file() else path / "task.json"
    parent = _read_json(file) if file.exists() else {}
    if parent.get("examples"):
        return parent, [(str(parent.get("name") or file.parent.name), file, parent)]
    folder = file.parent
    subs = sorted(p for p in folder.glob("*/task.json"))
    if not subs:
        raise TaskError(f"'{path}' has no examples and no subtask folders with task.json; "
                        "point path at a BIG-bench JSON task.")
    found = [(p.parent.name, p, _read_json(p)) for p in subs]
    if subtasks is not None:
        names = [n for n, _, _ in found]
        missing = [s for s in subtasks if s not in names]
        if missing:
            raise TaskError(f"BIG-bench task '{folder.name}' has no subtask(s) "
                            f"{', '.join(missing)}; it has: {', '.join(names)}.")
        found = [f for f in found if f[0] in subtasks]
    return parent, found


def _fmt(d: dict[str, Any], key: str, default: str) -> str:
    v = d.get(key, default)
    return default if v is None else str(v)


def _is_mc(task: dict[str, Any], mode: str) -> bool:
    exs = task.get("examples", [])
    has_scores = all("target_scores" in e for e in exs)
    has_target = all("target" in e for e in exs)
    if mode == "multiple_choice":
        if not has_scores:
            raise TaskError(f"BIG-bench task '{task.get('name')}' has examples without "
                            "target_scores; use mode='generative'.")
        return True
    if mode == "generative":
        if not has_target:
            raise TaskError(f"BIG-bench task '{task.get('name')}' has examples without "
                            "target; use mode='multiple_choice'.")
        return False
    if has_scores and (task.get("preferred_score") == "multiple_choice_grade" or not has_target):
        return True
    if has_target:
        return False
    raise TaskError(f"BIG-bench task '{task.get('name')}' mixes examples with and without "
                    "target/target_scores; it cannot be loaded as one kind.")


def load_bigbench(
    *, path: str, subtasks: list[str] | None = None, mode: str = "auto", seed: int = 0,
    n_train: int | None = None, n_dev: int | None = None, n_test: int | None = None,
) -> Task:
    """Load a BIG-bench JSON task (and its subtasks) as one Task.

    Args:
        path: a ``task.json`` file, or a task folder (with ``task.json`` and/or
            subtask folders holding ``task.json``).
        subtasks: keep only these subtasks.
        mode: ``auto`` (multiple choice where the task prefers it, else generative),
            ``multiple_choice`` or ``generative``.
        seed: permutation seed.
        n_train: train size (default min(100, 25% of the pool)).
        n_dev: dev size (default min(50, 10% of the pool)).
        n_test: test size (default: the rest, at most 1000).
    """
    if mode not in ("auto", "multiple_choice", "generative"):
        raise TaskError(f"BIG-bench mode must be auto, multiple_choice or generative, "
                        f"got '{mode}'.")
    parent, found = _find_tasks(Path(path).expanduser(), subtasks)
    kinds = {name: _is_mc(t, mode) for name, _, t in found}
    if len(set(kinds.values())) > 1:
        mc = [n for n, k in kinds.items() if k]
        raise TaskError(f"BIG-bench subtasks mix multiple choice ({', '.join(mc)}) and "
                        "generative ones; pass subtasks=[...] or mode=... to choose one kind.")
    is_mc = next(iter(kinds.values()))
    fmts = {(_fmt(t, "task_prefix", ""), _fmt(t, "example_input_prefix", "\nQ: "),
             _fmt(t, "example_output_prefix", "\nA: "),
             t.get("append_choices_to_input", True) is not False) for _, _, t in found}
    uniform = len(fmts) == 1
    pool: list[Example] = []
    regexes = {t.get("output_regex") for _, _, t in found}
    for name, _file, t in found:
        task_prefix, in_pre, out_pre, append = (
            _fmt(t, "task_prefix", ""), _fmt(t, "example_input_prefix", "\nQ: "),
            _fmt(t, "example_output_prefix", "\nA: "),
            t.get("append_choices_to_input", True) is not False)
        keywords = [str(k) for k in (t.get("keywords") or parent.get("keywords") or [])]
        skills = list(dict.fromkeys([name, *keywords]))
        for i, e in enumerate(t.get("examples", [])):
            if "input" not in e:
                raise TaskError(f"{_file}: example {i + 1} has no 'input' (fields there: "
                                f"{', '.join(sorted(e))}).")
            text = str(e["input"])
            meta: dict[str, Any] = {"subtask": name, "raw_input": text}
            if is_mc:
                scores = {str(k): float(v) for k, v in e["target_scores"].items()}
                top = max(scores.values())
                best = [c for c, s in scores.items() if s == top]
                answer = best[0]
                choices = list(scores)
                random.Random(f"choices:{name}:{i + 1}").shuffle(choices)
                meta.update(choices=choices, target_scores=scores, answers=best)
                if append:
                    text += "".join(f"\n  choice: {c}" for c in choices)
            else:
                target = e["target"]
                targets = [str(x) for x in target] if isinstance(target, list) else [str(target)]
                answer = targets[0]
                meta["answers"] = targets
            if not uniform:
                text = (task_prefix + in_pre + text + out_pre).strip()
            if e.get("comment"):
                meta["comment"] = e["comment"]
            pool.append(Example(id=f"{name}:{i + 1}", input=text, answer=answer,
                                skills=skills, metadata=meta))
    n = len(pool)
    if n == 0:
        raise TaskError(f"BIG-bench task at '{path}' has no examples.")
    n_train = min(100, n // 4) if n_train is None else n_train
    n_dev = min(50, n // 10) if n_dev is None else n_dev
    if n_test is None:
        n_test = min(1000, n - n_train - n_dev)
    sizes = {"train": n_train, "dev": n_dev, "test": n_test}
    plan, pos = [], 0
    for split, size in sizes.items():
        plan.append(SplitSlice(split, "pool", pos, pos + size))
        pos += size
    idx = plan_indices(plan, {"pool": n}, seed)
    splits = {sp: [pool[i] for i in ix] for sp, ix in idx.items()}
    if uniform:
        task_prefix, in_pre, out_pre, _ = next(iter(fmts))
        esc = lambda s: s.replace("{", "{{").replace("}", "}}")  # noqa: E731
        template = esc(in_pre.lstrip("\n")) + "{input}" + esc(out_pre.rstrip())
        instructions = task_prefix.strip()
    else:
        template, instructions = "{input}", ""
    verifier: Verifier
    kind: TaskKind
    if is_mc:
        verifier, kind = ChoiceVerifier(), "multiple_choice"
    else:
        kind = "generative"
        rx = next(iter(regexes)) if len(regexes) == 1 else None
        verifier = RegexVerifier(pattern=rx, which="first") if rx else ExactVerifier()
    root = str(parent.get("name") or Path(path).name or "bigbench")
    name = "bigbench_" + re.sub(r"[^0-9a-z]+", "_", root.lower()).strip("_")
    return Task(
        name=name, version="2",
        description=str(parent.get("description") or found[0][2].get("description") or ""),
        splits=splits, template=template, instructions=instructions, kind=kind,
        verifier=verifier,
        metadata={"source": f"BIG-bench JSON task {path}", "licence": "Apache-2.0",
                  "subtasks": [n for n, _, _ in found],
                  "split_protocol": protocol_metadata(
                      plan, {"pool": n}, seed, pool="examples of all subtasks, subtasks "
                      "sorted by folder name, each in file order; ids '<subtask>:<n>'")},
    )
