"""reasoning-gym datasets as Tasks: generated offline with a seed, scored by their own scorer.

Any of reasoning-gym's procedural datasets, by name (several at once too). The dataset
name is each example's skill; the Verifier calls the dataset's ``score_answer`` on the
regenerated entry, so partial credit is whatever reasoning-gym gives.

Split protocol: for each dataset, one generator ``create_dataset(name, seed=seed,
size=n_train + n_dev + n_test, **config)``; entries ``0 .. n_train-1`` are train, the next
``n_dev`` dev, the rest test (ids ``"<dataset>:<index>"``). Test entries whose question
also appears in train or dev are dropped (their count is in the metadata), so the splits
are disjoint in content, not only in index.

Example:
    >>> t = load_reasoning_gym(dataset="basic_arithmetic", n_train=5, n_dev=2, n_test=5)
    >>> ex = t.splits["test"][0]
    >>> t.verifier.verify(f"<answer>{ex.answer}</answer>", ex).score
    1.0
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from metaskill.core.errors import TaskError
from metaskill.core.types import Example
from metaskill.tasks.base import Task, Verdict
from metaskill.tasks.verifiers import _Spec


def _rg() -> Any:
    try:
        import reasoning_gym
    except ImportError:
        raise TaskError("reasoning-gym tasks need the reasoning-gym package; "
                        "pip install reasoning-gym") from None
    return reasoning_gym


def _create(name: str, seed: int, size: int, config: dict[str, Any]) -> Any:
    rg = _rg()
    import difflib

    known = sorted(rg.factory.DATASETS)
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise TaskError(f"reasoning-gym has no dataset '{name}'.{hint} "
                        f"It has {len(known)}, e.g. {', '.join(known[:8])} ...")
    try:
        return rg.create_dataset(name, seed=seed, size=size, **config)
    except (TypeError, ValueError, AssertionError) as e:
        raise TaskError(f"reasoning-gym dataset '{name}' rejected its config {config}: "
                        f"{' '.join(str(e).split())}") from None


def extract_rg_answer(output: str) -> str:
    """The answer part of a model's output: the last ``<answer>...</answer>``, else the
    text after the last ``Answer:``, else the whole output, stripped.

    Example:
        >>> extract_rg_answer("thinking...<answer> 42 </answer>")
        '42'
        >>> extract_rg_answer("So.\\nAnswer: yes")
        'yes'
    """
    tags = re.findall(r"<answer>\s?(.*?)\s?</answer>", output, flags=re.DOTALL)
    if tags:
        return tags[-1].strip()
    m = list(re.finditer(r"answer\s*:\s*", output, flags=re.IGNORECASE))
    if m:
        return output[m[-1].end():].strip()
    return output.strip()


@dataclass
class ReasoningGymVerifier(_Spec):
    """Scores with the dataset's own ``score_answer``, on the regenerated entry.

    Each example carries ``metadata["rg"] = {dataset, seed, size, config, index}``; the
    entry is rebuilt from it (reasoning-gym generation is deterministic per index), so
    the verifier needs nothing but the example. Datasets built here are memoized on
    this verifier instance.
    """

    name: ClassVar[str] = "reasoning_gym"
    _datasets: dict[str, Any] = field(default_factory=dict, repr=False, compare=False,
                                      metadata={"spec": False})

    def _entry(self, example: Example) -> tuple[Any, dict[str, Any]]:
        info = example.metadata.get("rg")
        if not isinstance(info, dict):
            raise TaskError(f"example '{example.id}' has no metadata['rg'] "
                            "(dataset, seed, size, config, index); it was not made by "
                            "the reasoning_gym loader.")
        key = json.dumps([info["dataset"], info["seed"], info["size"], info.get("config", {})],
                         sort_keys=True)
        if key not in self._datasets:
            self._datasets[key] = _create(info["dataset"], info["seed"], info["size"],
                                          info.get("config", {}))
        ds = self._datasets[key]
        return ds, ds[info["index"]]

    def verify(self, output: str, example: Example) -> Verdict:
        """Extract the answer (``<answer>`` tags, ``Answer:``, or all) and score it."""
        ds, entry = self._entry(example)
        got = extract_rg_answer(output)
        score = float(ds.score_answer(answer=got, entry=entry) or 0.0)
        score = min(1.0, max(0.0, score))
        short = " ".join(got.split())[:60]
        return Verdict(score=score, reason=f"reasoning-gym score {score:.2f} for '{short}'",
                       parsed=got)


def load_reasoning_gym(
    *, dataset: str | list[str], seed: int = 0, n_train: int = 100, n_dev: int = 50,
    n_test: int = 200, config: dict[str, Any] | None = None,
) -> Task:
    """One or several reasoning-gym datasets as a Task.

    Args:
        dataset: a dataset name (e.g. ``"basic_arithmetic"``) or a list of names.
        seed: the generator seed.
        n_train: train examples per dataset.
        n_dev: dev examples per dataset.
        n_test: test examples per dataset (before dropping duplicates of train/dev).
        config: extra generator parameters (applied to every dataset), e.g.
            ``{"min_terms": 2, "max_terms": 3}``.
    """
    names = [dataset] if isinstance(dataset, str) else list(dataset)
    if not names:
        raise TaskError("reasoning_gym needs dataset='name' (or a list of names).")
    size = n_train + n_dev + n_test
    if min(n_train, n_dev, n_test) < 0 or n_test < 1:
        raise TaskError("reasoning_gym sizes must be >= 0 and n_test >= 1.")
    cfg = dict(config or {})
    splits: dict[str, list[Example]] = {"train": [], "dev": [], "test": []}
    dropped: dict[str, int] = {}
    for name in names:
        ds = _create(name, seed, size, cfg)
        seen: set[str] = set()
        dropped[name] = 0
        for i in range(size):
            e = ds[i]
            split = "train" if i < n_train else "dev" if i < n_train + n_dev else "test"
            q = str(e["question"])
            if split == "test" and q in seen:
                dropped[name] += 1
                continue
            if split != "test":
                seen.add(q)
            meta = json.loads(json.dumps(e.get("metadata", {}), default=str))
            splits[split].append(Example(
                id=f"{name}:{i}", input=q, answer=None if e.get("answer") is None
                else str(e["answer"]), skills=[name],
                metadata={"rg": {"dataset": name, "seed": seed, "size": size, "config": cfg,
                                 "index": i}, "rg_metadata": meta}))
    title = names[0] if len(names) == 1 else f"{len(names)} datasets"
    return Task(
        name="rg_" + "_".join(names) if len(names) <= 3 else "rg_mix",
        version="1", description=f"reasoning-gym: {', '.join(names)}",
        splits=splits, template="{input}",
        instructions="Solve the problem. Give only the final answer inside "
                     "<answer></answer> tags.",
        kind="generative", verifier=ReasoningGymVerifier(),
        metadata={"source": f"reasoning-gym {getattr(_rg(), '__version__', '?')} ({title})",
                  "licence": "Apache-2.0 (reasoning-gym)",
                  "split_protocol": {
                      "method": "create_dataset(name, seed=seed, size=n_train+n_dev+n_test, "
                                "**config); indices [0,n_train) train, next n_dev dev, rest "
                                "test; test questions equal to a train/dev question dropped",
                      "seed": seed, "sizes": {"train": n_train, "dev": n_dev, "test": n_test},
                      "config": cfg, "dropped_test_duplicates": dropped}},
    )


def load_word_reversal(*, seed: int = 7, n_train: int = 800, n_dev: int = 50,
                       n_test: int = 100) -> Task:
    """Word-order reversal: a string skill a 135M model lacks and learns by LoRA.

    reasoning-gym ``word_sequence_reversal`` with 3-8 words per list (config
    ``{"min_words": 3, "max_words": 8}``), scored by reasoning-gym's own scorer. The main
    job's default suite trains it (``metaskill run``); the base SmolLM2-135M scores about
    0% (it echoes or rambles) and LoRA SFT lifts it above 50% in a few minutes of CPU.
    Generation is capped at 48 tokens (``metadata["max_tokens"]``): 8 words fit easily.

    Example:
        >>> t = load_word_reversal(n_train=4, n_dev=2, n_test=3)
        >>> t.name, t.kind, len(t.splits["train"])
        ('word_reversal', 'generative', 4)
    """
    task = load_reasoning_gym(dataset="word_sequence_reversal", seed=seed, n_train=n_train,
                              n_dev=n_dev, n_test=n_test,
                              config={"min_words": 3, "max_words": 8})
    return task.model_copy(update={
        "name": "word_reversal",
        "description": "reverse the order of a list of 3-8 words (reasoning-gym "
                       "word_sequence_reversal)",
        "metadata": {**task.metadata, "max_tokens": 48},
    })
