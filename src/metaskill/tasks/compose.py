"""String-transformation skills and their compositions f(g(x)): the ``compose`` task family.

A fixed set of :data:`ATOMIC_SKILLS` -- pure functions on short strings of words, each with
a one-line definition and hand-checked examples -- and seeded compositions of depth 1 to
4. An example's prompt states the functions by their definitions, in the order
they apply, so the model sees what to do and has to do it::

    Apply, in order: reverse the order of the words; then swap the case of every letter.
    Input: red fox
    Output: FOX RED

An example's skills are the atomic functions it uses (its labels for per-skill accuracy,
skill discovery and demonstration choice); ``metadata["steps"]`` holds them in order of
application (``steps[0]`` applies first: ``["reverse_words", "swap_case"]`` is
``swap_case(reverse_words(x))``).

Held-out pairs (unseen compositions, as in "From f(x) and g(x) to f(g(x))", 2025, and
SKILL-MIX, 2024): a seeded share ``holdout`` of the ordered depth-2 pairs ``(g, f)`` is
never adjacent in any train or dev example, at any depth, while every skill keeps pairs
for training in which it comes first and pairs in which it comes second. By default the
test split holds depth-2 examples of held-out pairs only, and depth-3 and depth-4 chains
(with any pairs; ``metadata["unseen_pairs"]`` counts their held-out adjacent pairs).

Splits (defaults): train 200 and dev 50 over ``depth`` (1 and 2), test 100 over
``test_depths`` (2, 3 and 4), each split's size divided evenly over its depths. Inputs are
2-5 distinct words of 3-5 letters from :data:`VOCABULARY`, each capitalized with
probability 1/3 (so the case skills always have work to do). For each example the
generator tries up to 20 inputs and keeps the first on which every step changes the string
and no word vanishes; a depth-3 or depth-4 chain with no such input (sort letters, drop
vowels, sort letters: the last step never changes anything) is replaced by another
chain; a depth-1 or depth-2 example keeps its best input (``metadata["noop_steps"]``
counts steps that changed nothing: none at the default settings). No two examples of the
task share the same steps and input, so no test prompt is also a train or dev prompt. Generation is
deterministic for a seed (Python's ``random.Random`` with string seeds), train is made
first, then dev, then test, so test options never change train.

Verifier: exact match, case-sensitive, after whitespace normalisation, on the output's
first non-empty line (``ExactVerifier(casefold=False, first_line=True)``).

Why not reasoning-gym's generators: its string datasets (``word_sequence_reversal``,
``spell_backward``, ``caesar_cipher``, ``letter_jumble``, ``word_sorting``) each build a
whole question with its own input distribution and wording; the transformations are
inlined in their ``__getitem__`` and are not exposed as functions, so one skill's output
cannot be fed to another. ``string_manipulation`` chains conditional rewrite rules on
a/b/c strings, not named functions. A composition task needs the bare functions over one
input space and its own split over pairs, so the eleven short functions live here (the
task also then needs no optional dependency); the single-skill reasoning-gym datasets
stay available as the ``reasoning_gym`` task.

Options reach the loader as for every parametrized task: ``get_task("compose", depth=2)``,
``metaskill tasks show compose -o depth=2 -o test_depths=[3,4]``,
``metaskill eval --task compose -T depth=2`` (``adapt`` too), or a task file:
``name: compose_d2`` with ``source: {loader: compose, options: {depth: 2}}``.

Example:
    >>> t = load_compose(n_train=20, n_dev=4, n_test=9)
    >>> ex = t.splits["test"][0]
    >>> ex.metadata["depth"], ex.metadata["unseen_pairs"]
    (2, 1)
    >>> t.verifier.verify(ex.answer, ex).score
    1.0
    >>> apply_steps(["reverse_words", "swap_case"], "red fox")
    'FOX RED'
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from metaskill.core.errors import TaskError
from metaskill.core.hashing import stable_hash
from metaskill.core.types import Example
from metaskill.tasks.base import Task
from metaskill.tasks.verifiers import ExactVerifier

MAX_DEPTH = 4
INPUT_TRIES = 20

#: Input words: 64 common lowercase words of 3-5 letters, each with a vowel and a consonant.
VOCABULARY: tuple[str, ...] = (
    "apple", "bird", "blue", "boat", "bread", "cake", "calm", "cat", "cloud", "coin",
    "cold", "desk", "dog", "door", "dream", "fish", "flag", "frog", "game", "gold",
    "green", "hat", "hill", "horse", "house", "jump", "king", "lamp", "leaf", "lemon",
    "light", "lion", "map", "milk", "moon", "mouse", "night", "north", "paper", "pen",
    "piano", "plant", "queen", "rain", "red", "river", "road", "rock", "salt", "ship",
    "silk", "snow", "song", "star", "stone", "sun", "table", "tiger", "train", "tree",
    "water", "whale", "wind", "wolf",
)


# ---- the atomic functions ------------------------------------------------------------
def _join(words: Sequence[str]) -> str:
    return " ".join(w for w in words if w)


def reverse_words(text: str) -> str:
    """The words in reverse order.

    Example:
        >>> reverse_words("red fox runs")
        'runs fox red'
    """
    return _join(text.split()[::-1])


def reverse_letters(text: str) -> str:
    """Each word spelled backwards, the word order kept.

    Example:
        >>> reverse_letters("red fox")
        'der xof'
    """
    return _join([w[::-1] for w in text.split()])


def sort_words(text: str) -> str:
    """The words in alphabetical order, ignoring case (ties: uppercase first).

    Example:
        >>> sort_words("red Fox ant")
        'ant Fox red'
    """
    return _join(sorted(text.split(), key=lambda w: (w.lower(), w)))


def sort_letters(text: str) -> str:
    """The letters of each word in alphabetical order, ignoring case (ties: uppercase first).

    Example:
        >>> sort_letters("lemon Dog")
        'elmno Dgo'
    """
    return _join(["".join(sorted(w, key=lambda c: (c.lower(), c))) for w in text.split()])


def swap_case(text: str) -> str:
    """Every lowercase letter uppercase and every uppercase letter lowercase.

    Example:
        >>> swap_case("Red fox")
        'rED FOX'
    """
    return _join(text.swapcase().split())


def uppercase(text: str) -> str:
    """Every letter uppercase.

    Example:
        >>> uppercase("Red fox")
        'RED FOX'
    """
    return _join(text.upper().split())


def capitalize(text: str) -> str:
    """Each word with its first letter uppercase and the rest lowercase.

    Example:
        >>> capitalize("rED fox")
        'Red Fox'
    """
    return _join([w[:1].upper() + w[1:].lower() for w in text.split()])


def drop_vowels(text: str) -> str:
    """Every a, e, i, o, u (either case) deleted; a word left empty disappears.

    Example:
        >>> drop_vowels("Apple tree")
        'ppl tr'
    """
    return _join([re.sub(r"[aeiouAEIOU]", "", w) for w in text.split()])


def rotate_words(text: str) -> str:
    """The first word moved to the end.

    Example:
        >>> rotate_words("red fox runs")
        'fox runs red'
    """
    words = text.split()
    return _join(words[1:] + words[:1])


def shift_letters(text: str, n: int) -> str:
    """Every letter ``n`` places forward in the alphabet (wrapping z to a), case kept.

    Example:
        >>> shift_letters("Zebra", 1), shift_letters("hello", 13)
        ('Afcsb', 'uryyb')
    """

    def one(c: str) -> str:
        if "a" <= c <= "z":
            return chr((ord(c) - 97 + n) % 26 + 97)
        if "A" <= c <= "Z":
            return chr((ord(c) - 65 + n) % 26 + 65)
        return c

    return _join("".join(one(c) for c in text).split())


def rot1(text: str) -> str:
    """:func:`shift_letters` by 1.

    Example:
        >>> rot1("zoo")
        'app'
    """
    return shift_letters(text, 1)


def rot13(text: str) -> str:
    """:func:`shift_letters` by 13 (its own inverse).

    Example:
        >>> rot13("Moon")
        'Zbba'
    """
    return shift_letters(text, 13)


@dataclass(frozen=True)
class AtomicSkill:
    """One string function with the definition a prompt states and hand-checked examples.

    Attributes:
        name: the skill label (snake_case).
        definition: an imperative phrase that fits "Apply, in order: <definition>; then ...".
        fn: the pure function.
        examples: ``(input, output)`` pairs, checked by hand (and by the tests).

    Example:
        >>> s = skill("drop_vowels")
        >>> s("red fox"), s.examples[0]
        ('rd fx', ('lemon tree', 'lmn tr'))
    """

    name: str
    definition: str
    fn: Callable[[str], str]
    examples: tuple[tuple[str, str], ...]

    def __call__(self, text: str) -> str:
        """Apply the function."""
        return self.fn(text)


#: The atomic skills, in a fixed order (eleven; their names are the task's skill labels).
ATOMIC_SKILLS: tuple[AtomicSkill, ...] = (
    AtomicSkill("reverse_words", "reverse the order of the words", reverse_words,
                (("red fox runs", "runs fox red"), ("cat dog", "dog cat"))),
    AtomicSkill("reverse_letters", "spell each word backwards, keeping the word order",
                reverse_letters, (("red fox", "der xof"), ("moon", "noom"))),
    AtomicSkill("sort_words", "sort the words alphabetically", sort_words,
                (("red fox ant", "ant fox red"), ("tree bird", "bird tree"))),
    AtomicSkill("sort_letters", "sort the letters inside each word alphabetically",
                sort_letters, (("lemon dog", "elmno dgo"), ("star", "arst"))),
    AtomicSkill("swap_case", "swap the case of every letter", swap_case,
                (("Red fox", "rED FOX"), ("cat", "CAT"))),
    AtomicSkill("uppercase", "write every letter in uppercase", uppercase,
                (("Red fox", "RED FOX"), ("cat", "CAT"))),
    AtomicSkill("capitalize", "make the first letter of each word uppercase and the rest "
                "lowercase", capitalize, (("rED fox", "Red Fox"), ("MOON", "Moon"))),
    AtomicSkill("drop_vowels", "delete every vowel (a, e, i, o, u)", drop_vowels,
                (("lemon tree", "lmn tr"), ("Apple", "ppl"))),
    AtomicSkill("rotate_words", "move the first word to the end", rotate_words,
                (("red fox runs", "fox runs red"), ("cat dog", "dog cat"))),
    AtomicSkill("rot1", "replace every letter by the next letter of the alphabet (z "
                "becomes a), keeping its case", rot1, (("cat", "dbu"), ("Zoo", "App"))),
    AtomicSkill("rot13", "replace every letter by the letter 13 places later in the "
                "alphabet, wrapping around (rot13), keeping its case", rot13,
                (("cat", "png"), ("Moon", "Zbba"))),
)


def skill_names() -> list[str]:
    """The names of :data:`ATOMIC_SKILLS`, in order.

    Example:
        >>> skill_names()[:3]
        ['reverse_words', 'reverse_letters', 'sort_words']
    """
    return [s.name for s in ATOMIC_SKILLS]


def skill(name: str) -> AtomicSkill:
    """The atomic skill called ``name``.

    Raises:
        TaskError: an unknown name (the known ones are listed).

    Example:
        >>> skill("rot13")("Hello")
        'Uryyb'
    """
    for s in ATOMIC_SKILLS:
        if s.name == name:
            return s
    raise TaskError(f"compose has no atomic skill '{name}'; it has: {', '.join(skill_names())}.")


def apply_steps(steps: Sequence[str], text: str) -> str:
    """Apply the named skills in order: ``steps[0]`` first (``f(g(x))`` is ``[g, f]``).

    Example:
        >>> apply_steps(["drop_vowels", "reverse_words", "uppercase"], "lemon tree")
        'TR LMN'
    """
    for name in steps:
        text = skill(name)(text)
    return text


def prompt_text(steps: Sequence[str], text: str, *, show_examples: bool = False) -> str:
    """The example's input: the steps by their definitions, then the string.

    Args:
        steps: skill names in order of application.
        text: the input string.
        show_examples: follow each definition by its first example.

    Example:
        >>> print(prompt_text(["reverse_words", "swap_case"], "red fox"))
        Apply, in order: reverse the order of the words; then swap the case of every letter.
        Input: red fox
        >>> print(prompt_text(["rot1"], "cat", show_examples=True))
        Apply: replace every letter by the next letter of the alphabet (z becomes a), keeping its case (e.g. "cat" -> "dbu").
        Input: cat
    """  # noqa: E501
    parts = []
    for name in steps:
        s = skill(name)
        ex = f' (e.g. "{s.examples[0][0]}" -> "{s.examples[0][1]}")' if show_examples else ""
        parts.append(s.definition + ex)
    head = "Apply: " if len(parts) == 1 else "Apply, in order: "
    return f"{head}{'; then '.join(parts)}.\nInput: {text}"


# ---- pairs and chains ----------------------------------------------------------------
Pair = tuple[str, str]


def held_out_pairs(names: Sequence[str], share: float, seed: int) -> list[Pair]:
    """A seeded share of the ordered pairs ``(g, f)``, ``g != f``, kept out of training.

    Every skill keeps at least two training pairs in which it comes first and two in
    which it comes second (one each with fewer than five skills), so each is still seen
    in composition; the share actually held out can hence be smaller than ``share``.

    Example:
        >>> names = skill_names()
        >>> hold = held_out_pairs(names, 0.25, seed=0)
        >>> len(hold), len(names) * (len(names) - 1)
        (28, 110)
        >>> hold == held_out_pairs(names, 0.25, seed=0)
        True
    """
    if not 0.0 <= share < 1.0:
        raise TaskError(f"holdout must be in [0, 1), got {share}.")
    pairs = [(a, b) for a in names for b in names if a != b]
    order = list(pairs)
    random.Random(f"compose:{seed}:holdout").shuffle(order)
    want = round(share * len(pairs))
    keep_min = 2 if len(names) >= 5 else 1
    first = {n: len(names) - 1 for n in names}
    second = dict(first)
    hold: list[Pair] = []
    for a, b in order:
        if len(hold) >= want:
            break
        if first[a] > keep_min and second[b] > keep_min:
            hold.append((a, b))
            first[a] -= 1
            second[b] -= 1
    return sorted(hold, key=pairs.index)


def adjacent_pairs(steps: Sequence[str]) -> list[Pair]:
    """The adjacent ``(earlier, later)`` pairs of a chain.

    Example:
        >>> adjacent_pairs(["a", "b", "c"])
        [('a', 'b'), ('b', 'c')]
    """
    return list(itertools.pairwise(steps))


def _cycle(rng: random.Random, items: Sequence[Any]) -> Iterator[Any]:
    """Endless shuffled passes over ``items`` (even coverage)."""
    while True:
        order = list(items)
        rng.shuffle(order)
        yield from order


def _chains(rng: random.Random, names: Sequence[str], depth: int, banned: set[Pair],
            pairs: Sequence[Pair] | None) -> Iterator[tuple[str, ...]]:
    """Endless chains of ``depth`` steps: no step twice in a row, no ``banned`` pair.

    Depth 1 cycles over the skills and depth 2 over ``pairs`` (or all allowed pairs);
    deeper chains are drawn step by step.
    """
    if depth == 1:
        yield from ((n,) for n in _cycle(rng, names))
        return
    if depth == 2:
        pool = pairs if pairs is not None else [
            (a, b) for a in names for b in names if a != b and (a, b) not in banned]
        if not pool:
            raise TaskError("compose: no depth-2 pairs left to draw from; lower holdout or "
                            "use more skills.")
        yield from _cycle(rng, pool)
        return
    while True:
        chain = [rng.choice(list(names))]
        while len(chain) < depth:
            nxt = [n for n in names if n != chain[-1] and (chain[-1], n) not in banned]
            chain.append(rng.choice(nxt))
        yield tuple(chain)


def _trace(steps: Sequence[str], text: str) -> list[str]:
    """The string after each step (the input first)."""
    out = [text]
    for name in steps:
        out.append(skill(name)(out[-1]))
    return out


def _badness(trace: list[str]) -> tuple[int, int]:
    """(steps where a word vanished, steps that changed nothing)."""
    steps = list(itertools.pairwise(trace))
    vanished = sum(len(b.split()) < len(a.split()) for a, b in steps)
    noop = sum(a == b for a, b in steps)
    return vanished, noop


def sample_input(rng: random.Random, min_words: int = 2, max_words: int = 5) -> str:
    """Distinct words of :data:`VOCABULARY`, each capitalized with probability 1/3.

    Example:
        >>> sample_input(random.Random(0))
        'star cake milk wind snow'
    """
    words = rng.sample(VOCABULARY, rng.randint(min_words, max_words))
    return " ".join(w.capitalize() if rng.random() < 1 / 3 else w for w in words)


@dataclass(frozen=True)
class _Gen:
    """What every split's generation shares."""

    names: tuple[str, ...]
    banned: frozenset[Pair]
    held: tuple[Pair, ...]
    min_words: int
    max_words: int
    show_examples: bool
    seed: int


def _make_split(g: _Gen, split: str, depths: Sequence[int], n: int, *, train: bool,
                test_pairs: str, seen: set[tuple[tuple[str, ...], str]]) -> list[Example]:
    """``n`` examples over ``depths`` (sizes as even as possible), unique against ``seen``."""
    out: list[Example] = []
    held = set(g.held)
    for j, depth in enumerate(depths):
        count = n // len(depths) + (1 if j < n % len(depths) else 0)
        rng = random.Random(f"compose:{g.seed}:{split}:{depth}")
        pairs: list[Pair] | None = None
        if not train and depth == 2 and test_pairs != "all":
            pairs = list(g.held) if test_pairs == "heldout" else [
                (a, b) for a in g.names for b in g.names if a != b and (a, b) not in held]
        chains = _chains(rng, g.names, depth, set(g.banned) if train else set(), pairs)
        misses = 0
        while count > 0:
            steps = next(chains)
            best: tuple[tuple[int, int], str, list[str]] | None = None
            for _ in range(INPUT_TRIES):
                text = sample_input(rng, g.min_words, g.max_words)
                if (steps, text) in seen:
                    continue
                trace = _trace(steps, text)
                bad = _badness(trace)
                if best is None or bad < best[0]:
                    best = (bad, text, trace)
                if bad == (0, 0):
                    break
            if best is None:
                misses += 1
                if misses > 1000:
                    raise TaskError(f"compose: cannot find {count} more distinct {split} "
                                    f"examples of depth {depth}; ask for fewer or allow more "
                                    "words (max_words).")
                continue
            bad, text, trace = best
            if bad != (0, 0) and depth > 2 and misses < 1000:
                misses += 1  # a random chain with a no-op step: draw another chain
                continue
            seen.add((steps, text))
            out.append(Example(
                id=f"{split}-d{depth}-{len(out)}", input=prompt_text(
                    steps, text, show_examples=g.show_examples),
                answer=trace[-1], skills=list(dict.fromkeys(steps)),
                metadata={"depth": depth, "steps": list(steps), "text": text,
                          "intermediate": trace[1:-1], "noop_steps": bad[1],
                          "unseen_pairs": sum(p in held for p in adjacent_pairs(steps))}))
            count -= 1
    return out


def _depths(value: int | Sequence[int], what: str) -> list[int]:
    ds = [value] if isinstance(value, int) else list(value)
    if not ds or any(not isinstance(d, int) or not 1 <= d <= MAX_DEPTH for d in ds):
        raise TaskError(f"compose {what} must be depths from 1 to {MAX_DEPTH} (an int or a "
                        f"list), got {value!r}.")
    return sorted(set(ds))


def load_compose(
    *, depth: int | Sequence[int] = (1, 2), test_depths: int | Sequence[int] = (2, 3, 4),
    holdout: float = 0.25, test_pairs: Literal["heldout", "seen", "all"] = "heldout",
    skills: list[str] | None = None, n_train: int = 200, n_dev: int = 50, n_test: int = 100,
    min_words: int = 2, max_words: int = 5, show_examples: bool = False, seed: int = 0,
) -> Task:
    """The ``compose`` task: atomic string skills and their compositions, with held-out pairs.

    Args:
        depth: the depth(s) of train and dev examples (1 = atomic skills only, 2 = pairs
            ...), e.g. ``2`` or ``[1, 2]``.
        test_depths: the depth(s) of test examples.
        holdout: share of the ordered depth-2 pairs never adjacent in train or dev (0: none).
        test_pairs: which pairs depth-2 test examples use: ``heldout`` (unseen
            compositions; needs ``holdout > 0``), ``seen`` or ``all``.
        skills: the atomic skills to use (default: all of :data:`ATOMIC_SKILLS`).
        n_train: train examples, divided evenly over ``depth``.
        n_dev: dev examples, divided evenly over ``depth``.
        n_test: test examples, divided evenly over ``test_depths``.
        min_words: fewest words in an input.
        max_words: most words in an input.
        show_examples: follow each definition in the prompt by one worked example.
        seed: the generation seed (held-out pairs and every split).

    Raises:
        TaskError: a bad option, as one line.

    Example:
        >>> t = load_compose(depth=2, test_depths=[3], n_train=6, n_dev=2, n_test=3)
        >>> {k: len(v) for k, v in t.splits.items()}
        {'train': 6, 'dev': 2, 'test': 3}
        >>> [e.metadata["depth"] for e in t.splits["test"]]
        [3, 3, 3]
        >>> print(t.render(t.splits["train"][0]))
        Apply, in order: write every letter in uppercase; then make the first letter of each word uppercase and the rest lowercase.
        Input: horse Map Tiger door cake
        Output:
        >>> t.splits["train"][0].answer, t.splits["train"][0].skills
        ('Horse Map Tiger Door Cake', ['uppercase', 'capitalize'])
    """  # noqa: E501
    names = tuple(skill_names() if skills is None else dict.fromkeys(skills))
    for name in names:
        skill(name)
    if len(names) < 2:
        raise TaskError("compose needs at least 2 skills.")
    train_ds, test_ds = _depths(depth, "depth"), _depths(test_depths, "test_depths")
    if test_pairs not in ("heldout", "seen", "all"):
        raise TaskError(f"compose test_pairs must be heldout, seen or all, got '{test_pairs}'.")
    if test_pairs == "heldout" and holdout == 0 and 2 in test_ds:
        raise TaskError("compose test_pairs='heldout' needs holdout > 0 (or give "
                        "test_pairs='all').")
    if not 1 <= min_words <= max_words <= 8:
        raise TaskError(f"compose needs 1 <= min_words <= max_words <= 8, got {min_words}, "
                        f"{max_words}.")
    if min(n_train, n_dev) < 0 or n_test < 1:
        raise TaskError("compose sizes must be >= 0 and n_test >= 1.")
    held = held_out_pairs(names, holdout, seed)
    if test_pairs == "heldout" and not held and 2 in test_ds:
        raise TaskError(f"compose holdout={holdout} holds out no pair of {len(names)} skills; "
                        "raise holdout or give test_pairs='all'.")
    g = _Gen(names, frozenset(held), tuple(held), min_words, max_words, show_examples, seed)
    seen: set[tuple[tuple[str, ...], str]] = set()
    splits = {
        "train": _make_split(g, "train", train_ds, n_train, train=True, test_pairs=test_pairs,
                             seen=seen),
        "dev": _make_split(g, "dev", train_ds, n_dev, train=True, test_pairs=test_pairs,
                           seen=seen),
        "test": _make_split(g, "test", test_ds, n_test, train=False, test_pairs=test_pairs,
                            seen=seen),
    }
    options = {"depth": train_ds, "test_depths": test_ds, "holdout": holdout,
               "test_pairs": test_pairs, "skills": list(names), "n_train": n_train,
               "n_dev": n_dev, "n_test": n_test, "min_words": min_words,
               "max_words": max_words, "show_examples": show_examples, "seed": seed}
    # The version names the generation options: the same example ids (test-d2-0 ...) mean
    # different examples under other options, so a run resumed with other options is
    # refused by the harness's task-version check instead of mixing records.
    return Task(
        name="compose", version=f"1+{stable_hash(options)[:8]}",
        description="string-transformation skills and their compositions (depth 1-4) with "
                    "held-out pairs",
        splits=splits, template="{input}\nOutput:",
        instructions="Transform the input string with the listed operations, applying each "
                     "one to the result of the previous one. Reply with the final string "
                     "only, on one line.",
        kind="generative", verifier=ExactVerifier(casefold=False, first_line=True),
        metadata={
            "source": "generated by metaskill.tasks.compose (no external data)",
            "licence": "generated",
            "max_tokens": 48,
            "skill_definitions": {n: skill(n).definition for n in names},
            "held_out_pairs": [list(p) for p in held],
            "options": options,
            "split_protocol": {
                "method": "random.Random('compose:<seed>:<split>:<depth>') per split and "
                          "depth, train then dev then test; depth-1 and depth-2 chains cycle "
                          "through shuffled skills/pairs, deeper chains are drawn step by "
                          "step without immediate repeats; held-out pairs "
                          "(random.Random('compose:<seed>:holdout')) never adjacent in "
                          "train/dev; (steps, input) unique across splits",
                "seed": seed},
        },
    )


__all__ = ["ATOMIC_SKILLS", "VOCABULARY", "AtomicSkill", "adjacent_pairs", "apply_steps",
           "held_out_pairs", "load_compose", "prompt_text", "sample_input", "skill",
           "skill_names"]
