"""STAT: skill-targeted adaptive training, selection (Sel) and synthesis (Syn).

Paper: He et al. (2025), "Skill-Targeted Adaptive Training" (STAT). A Missing-Skill
Profile (:mod:`metaskill.skills.profile`) names, for each difficult dev example, the skills
the model is missing. STAT then builds a training set aimed at those skills:

* **STAT-Sel** (:func:`stat_sel`): for each (difficult example, missing skill) pair, take
  ``per_pair`` training examples that exercise that skill (seeded, without repeats until a
  skill's pool is used up). Skills missing more often get proportionally more data.
* **STAT-Syn** (:func:`stat_syn_teacher`, :func:`stat_syn_procedural`): synthesize new
  examples for the missing skills. With a teacher LM: show it ``k`` retrieved exemplars
  of the skill, ask for one new question, have it solve the question ``solutions`` times
  (sampled), and keep the question only when at least ``min_agree`` (2 of 3) solutions
  agree; the majority answer becomes the reference. For a procedural task (reasoning-gym,
  where the skill is the generator's name) the generator for that skill makes the examples.

Both then run LoRA fine-tuning (:class:`STAT` = data construction + :class:`SFT`). The
baseline to compare against is uniform SFT on the same number of examples and steps
(:func:`~metaskill.methods.sft.uniform_sample`).

What we changed: exemplars are retrieved by skill label (seeded draw) rather than by
embedding similarity; agreement is exact match after whitespace/case normalisation.

Example:
    >>> from metaskill.skills.profile import Profile, DifficultExample
    >>> p = Profile(task="t", difficult=[DifficultExample(example_id="d", question="q",
    ...     output="x", missing=["b"])])
    >>> train = [Example(id=str(i), input=f"q{i}", answer="a", skills=["ab"[i % 2]])
    ...          for i in range(6)]
    >>> [e.id for e in stat_sel(p, train, per_pair=2)]
    ['1', '5']
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any, ClassVar, Literal

from pydantic import Field

from metaskill.core.errors import MethodError
from metaskill.core.types import Example, Message, Request
from metaskill.eval.solver import Solver
from metaskill.methods.base import Method, MethodConfig, MethodResources
from metaskill.methods.sft import SFTConfig, check_trainable, train_solver, uniform_sample
from metaskill.tasks.base import Task


def missing_pairs(profile: Any) -> list[tuple[str, str]]:
    """The (difficult example id, missing skill) pairs of a Profile."""
    return [(d.example_id, s) for d in profile.difficult for s in d.missing]


def stat_sel(profile: Any, train: list[Example], per_pair: int = 2,
             seed: int = 0, limit: int | None = None) -> list[Example]:
    """STAT-Sel: ``per_pair`` training examples with the skill, per (difficult, skill) pair.

    With ``limit``, a seeded random ``limit`` of them: the skills keep their shares
    (cutting the list in pair order would drop the skills of the last pairs).

    Raises:
        MethodError: the profile names no missing skill, none of them has training data,
            or ``limit`` is below 1.
    """
    if limit is not None and limit < 1:
        raise MethodError(f"STAT-Sel: limit must be at least 1 (or None), got {limit}.")
    pairs = missing_pairs(profile)
    if not pairs:
        raise MethodError("STAT-Sel: the profile has no difficult example with a missing "
                          "skill; build the profile on a split the model fails on.")
    rng = random.Random(seed)
    pools: dict[str, list[Example]] = {}
    out: list[Example] = []
    for _ex, skill in pairs:
        if skill not in pools:
            pool = [e for e in train if skill in e.skills and e.answer is not None]
            rng.shuffle(pool)
            pools[skill] = pool
        pool = pools[skill]
        if not pool:
            continue
        for _ in range(per_pair):
            out.append(pool.pop(0))
            pool.append(out[-1])  # cycle: repeats only once the pool is used up
    if not out:
        raise MethodError(f"STAT-Sel: no training example has any of the missing skills "
                          f"({', '.join(sorted({s for _, s in pairs}))}).")
    if limit is not None and limit < len(out):
        out = random.Random(seed + 1).sample(out, limit)
    return out


def skill_counts(profile: Any) -> Counter[str]:
    """How often each skill is named missing (the synthesis budget per skill)."""
    return Counter(s for _e, s in missing_pairs(profile))


SYN_PROMPT = (
    "Here are examples of problems that need the skill '{skill}':\n\n{exemplars}\n\n"
    "Write ONE new problem of the same kind that needs the same skill. Reply with the "
    "problem only."
)


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


def stat_syn_teacher(teacher: Any, task: Any, profile: Any, train: list[Example], *,
                     per_pair: int = 1, k: int = 3, solutions: int = 3, min_agree: int = 2,
                     max_tokens: int = 128, seed: int = 0) -> tuple[list[Example], dict]:
    """STAT-Syn with a teacher LM: new questions from exemplars, kept on >= 2/3 agreement.

    Returns:
        ``(examples, stats)`` with stats ``{"proposed", "kept", "rejected"}``.
    """
    from metaskill.methods.sft import user_text

    rng = random.Random(seed)
    jobs: list[tuple[str, list[Example]]] = []
    for skill, count in sorted(skill_counts(profile).items()):
        pool = [e for e in train if skill in e.skills]
        if not pool:
            continue
        for _ in range(count * per_pair):
            jobs.append((skill, rng.sample(pool, min(k, len(pool)))))
    if not jobs:
        raise MethodError("STAT-Syn: no exemplars for any missing skill.")
    qs = teacher.complete([Request(messages=(Message(role="user", content=SYN_PROMPT.format(
        skill=s, exemplars="\n\n".join(f"Problem: {task.render(e)}" for e in ex))),),
        temperature=0.9, seed=seed + i, max_tokens=max_tokens)
        for i, (s, ex) in enumerate(jobs)])
    questions = [c.text.strip() for c in qs]
    # One request per solution (distinct seeds), so every backend samples them apart.
    flat = teacher.complete([Request(messages=(Message(role="user", content=user_text(
        task, Example(id="syn", input=q))),), temperature=0.7, seed=seed + 100 * i + j,
        max_tokens=max_tokens) for i, q in enumerate(questions) for j in range(solutions)])
    sols = [[c.text for c in flat[i * solutions:(i + 1) * solutions]]
            for i in range(len(questions))]
    out: list[Example] = []
    for i, ((skill, _ex), q, c) in enumerate(zip(jobs, questions, sols, strict=True)):
        answers = [t.strip() for t in c if t.strip()]
        counts = Counter(_norm(a) for a in answers)
        if not q or not counts:
            continue
        top, n = counts.most_common(1)[0]
        if n >= min_agree:
            answer = next(a for a in answers if _norm(a) == top)
            out.append(Example(id=f"syn-{skill}-{i}", input=q, answer=answer, skills=[skill],
                               metadata={"synthetic": True, "agreement": f"{n}/{solutions}"}))
    return out, {"proposed": len(jobs), "kept": len(out), "rejected": len(jobs) - len(out)}


Generator = Callable[[str, int, int], list[Example]]


def reasoning_gym_generator(config: dict[str, Any] | None = None) -> Generator:
    """A generator for reasoning-gym skills (skill = dataset name), seeded, answers exact."""

    def gen(skill: str, n: int, seed: int) -> list[Example]:
        import reasoning_gym

        ds = reasoning_gym.create_dataset(skill, seed=seed, size=n, **(config or {}))
        return [Example(id=f"syn-{skill}-{seed}-{i}", input=str(x["question"]),
                        answer=str(x["answer"]), skills=[skill],
                        metadata={"synthetic": True, "rg": {"dataset": skill, "seed": seed,
                                                            "size": n, "index": i,
                                                            "config": config or {}}})
                for i, x in enumerate(ds)]

    return gen


def stat_syn_procedural(profile: Any, generator: Generator, per_pair: int = 2,
                        seed: int = 10_000) -> list[Example]:
    """STAT-Syn for procedural tasks: the skill's generator makes ``per_pair`` examples per
    (difficult example, missing skill) pair (seeds far from the task's own)."""
    out: list[Example] = []
    for skill, count in sorted(skill_counts(profile).items()):
        out += generator(skill, count * per_pair, seed)
    if not out:
        raise MethodError("STAT-Syn: the profile names no missing skill.")
    return out


class STATConfig(SFTConfig):
    """STAT settings: the data construction, then the LoRA settings of :class:`SFTConfig`.

    Attributes:
        variant: ``sel`` (select training examples of the missing skills) or ``syn``
            (synthesize new ones: a procedural generator, else the teacher LM).
        per_pair: examples per (difficult example, missing skill) pair; None sizes the set
            to ``n_examples`` (default ``steps x batch_size``: every step sees new data).
        fallback_uniform: when the Profile names no missing skill, train uniformly on
            ``n_examples`` training examples (said in the fit report) instead of failing.
    """

    variant: Literal["sel", "syn"] = "sel"
    per_pair: int | None = Field(None, ge=1)
    fallback_uniform: bool = True


class STAT(Method):
    """STAT-Sel / STAT-Syn data construction for a Profile's missing skills, then LoRA SFT.

    Reads the Missing-Skill Profile of the Solver being adapted from
    ``resources.profile`` (a :class:`~metaskill.skills.profile.Profile`, its JSON dict, or
    a path); ``syn`` takes its generator from ``resources.extra["generator"]`` or, for a
    reasoning-gym task, that task's generators, else the teacher ``resources.teacher``.

    Example:
        >>> STAT(STATConfig(variant="sel")).stage
        'parametric'
    """

    name: ClassVar[str] = "stat"
    stage: ClassVar[str] = "parametric"
    Config: ClassVar[type[MethodConfig]] = STATConfig

    config: STATConfig

    def fit(self, solver: Solver, task: Task, train: list[Example],
            dev: list[Example] | None = None) -> Solver:
        """Build the targeted data and fine-tune; returns the Solver on base + adapter."""
        check_trainable(solver.lm, self.resources)
        data, note, method = build_data(task, train, self.config, self.resources)
        self.report.notes.update({"data": note, "method": method})
        return train_solver(self, solver, task, data, dev, self.config, self.resources)


def load_profile(profile: Any) -> Any:
    """A Profile from a Profile, its JSON dict, or a JSON file path (None stays None)."""
    from metaskill.skills.profile import Profile

    if profile is None or isinstance(profile, Profile):
        return profile
    if isinstance(profile, dict):
        return Profile.model_validate(profile)
    return Profile.load(profile)


def build_data(task: Task, train: list[Example], cfg: STATConfig,
               resources: MethodResources) -> tuple[list[Example], str, str]:
    """The STAT training set, one line saying what it is, and the method it amounts to
    (``stat-sel``, ``stat-syn``, or ``sft`` for the uniform fallback); the one copy of this
    logic.

    Example:
        >>> from metaskill.skills.profile import Profile
        >>> train = [Example(id=str(i), input=f"q{i}", answer="a") for i in range(4)]
        >>> cfg = STATConfig(steps=2, batch_size=2)
        >>> build_data(None, train, cfg, MethodResources(profile=Profile(task="t")))[1:]
        ('the profile names no missing skill, so uniform SFT on 4 training examples', 'sft')
    """
    profile = load_profile(resources.profile)
    if profile is None:
        raise MethodError("stat: needs the Missing-Skill Profile of the Solver it adapts "
                          "(build one with `metaskill skills profile`; pass --profile).")
    answered = [e for e in train if e.answer is not None]
    n_target = cfg.n_examples or min(len(answered), (cfg.steps or 1) * cfg.batch_size)
    pairs = missing_pairs(profile)
    if not pairs:
        if not cfg.fallback_uniform:
            raise MethodError("stat: the profile names no missing skill.")
        data = uniform_sample(answered, n_target, seed=cfg.seed)
        return data, (f"the profile names no missing skill, so uniform SFT on {len(data)} "
                      "training examples"), "sft"
    per_pair = cfg.per_pair or max(1, -(-n_target // len(pairs)))
    if cfg.variant == "sel":
        data = stat_sel(profile, train, per_pair=per_pair, seed=cfg.seed,
                        limit=None if cfg.per_pair else n_target)
        return data, (f"STAT-Sel: {len(data)} training examples for {len(pairs)} "
                      "(difficult dev example, missing skill) pairs"), "stat-sel"
    generator = resources.extra.get("generator") or _procedural_generator(train)
    if generator is not None:
        data = stat_syn_procedural(profile, generator, per_pair, cfg.seed + 10_000)
        return data, f"STAT-Syn (procedural): {len(data)} generated examples", "stat-syn"
    if resources.teacher is None:
        raise MethodError("stat: variant syn on a non-procedural task needs a teacher LM "
                          "(--teacher SPEC).")
    data, stats = stat_syn_teacher(resources.teacher, task, profile, train,
                                   per_pair=per_pair, seed=cfg.seed)
    if not data:
        raise MethodError(f"stat: the teacher's synthesized questions never agreed ({stats}); "
                          "nothing to train on.")
    return (data, f"STAT-Syn (teacher): kept {stats['kept']} of {stats['proposed']} questions",
            "stat-syn")


def _procedural_generator(train: list[Example]) -> Generator | None:
    """reasoning-gym's generators, when the training examples come from reasoning-gym."""
    rg = next((e.metadata["rg"] for e in train if "rg" in e.metadata), None)
    return reasoning_gym_generator(rg.get("config") or None) if rg else None
