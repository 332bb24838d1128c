"""skill_demos: per input, find the skills it needs and show exemplars of those skills.

Paper:
    Didolkar, Goyal, Ke, Guo, Valko, Lillicrap, Rezende, Bengio, Mozer, Arora (2024).
    "Metacognitive Capabilities of LLMs: An Exploration in Mathematical Problem Solving"
    (NeurIPS 2024). A strong LM labels training questions with fine-grained skills, the
    labels are clustered into a skill list, and at test time each question is matched to
    a skill and prompted with exemplars of that skill ("skill-based in-context learning").

What we changed: the skill list lives in a :class:`~metaskill.skills.book.SkillBook`
(built by ``metaskill skills discover``, or on the fly from the ``skills`` the training
examples already carry). The test question is matched to skills by embedding -- the
book's ``nearest_skills`` (a vote over the nearest labelled examples, or the skill
descriptions) -- instead of asking the LM to name its skill, so a 135M model needs no
metacognition at test time. We take the top ``skills_per_input`` skills (the paper: one)
and fill the ``k`` demo slots round-robin across them with each skill's exemplars nearest
to the question. The selector also accepts explicit per-input skill targets, which
AdaptMI+ uses to show exemplars of the skills a teacher says are missing.

Algorithm (what :meth:`SkillDemos.fit` does):

1. Get a SkillBook: ``resources.skillbook``, else build one in memory from the skill
   labels on ``train``; with neither, raise :class:`MethodError` naming what is missing.
2. Build a :class:`SkillSelector`: per input, ``nearest_skills(input)`` -> skills;
   ``exemplars(skill, query=input)`` for each -> demos, round-robin, no duplicates,
   never the input itself.
3. Wrap it in a :class:`~metaskill.methods.demos.DemoSolver` (k demos, nearest last),
   keeping the incoming Solver's prompt format; with dev, report dev accuracy.
4. Return the new Solver; its JSON carries the SkillBook export, so it reloads anywhere.

Example:
    >>> from metaskill.core.types import Example
    >>> from metaskill.lm.fake import ScriptedLM
    >>> from metaskill.methods.compose import MethodResources
    >>> from metaskill.methods.demos import DemoSolver
    >>> from metaskill.tasks.base import Task, Verdict, Verifier
    >>> class Exact(Verifier):
    ...     def verify(self, output, ex):
    ...         return Verdict(score=float(output.strip() == ex.answer))
    >>> train = [Example(id="a", input="add three plus four", answer="7", skills=["addition"]),
    ...          Example(id="b", input="multiply three times four", answer="12",
    ...                  skills=["multiplication"])]
    >>> task = Task(name="t", splits={}, verifier=Exact())
    >>> m = SkillDemos(SkillDemosConfig(k=1), resources=MethodResources(embedder_spec="hash:64"))
    >>> s = m.fit(DemoSolver(ScriptedLM(default="5"), None, k=0), task, train)
    >>> [d.id for d in s.selector.select(Example(id="q", input="multiply five times six"), 1)]
    ['b']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field

from metaskill.core.errors import MethodError
from metaskill.core.types import Example
from metaskill.eval.solver import Solver
from metaskill.methods.base import Method, MethodConfig
from metaskill.methods.compose import MethodResources
from metaskill.methods.demos import (
    AnswerMode,
    DemoPromptConfig,
    DemoSolver,
    Order,
    PromptFormat,
    Selector,
    prompt_variants,
    run_solver,
)
from metaskill.tasks.base import Task

Via = Literal["auto", "description", "examples"]


# ---------------------------------------------------------------------------------------
# The SkillBook: given, or built from the skills the training examples carry
# ---------------------------------------------------------------------------------------
def book_from_labels(train: Sequence[Example], embedder: Any) -> Any:
    """An in-memory SkillBook whose skills are the labels on ``train`` (None if unlabelled).

    Example:
        >>> from metaskill.skills.embed import HashEmbedder
        >>> ex = [Example(id="a", input="2+2", answer="4", skills=["Addition"])]
        >>> book_from_labels(ex, HashEmbedder(32)).names()
        ['addition']
    """
    from metaskill.skills.book import Skill, SkillBook, to_snake

    labelled = [e for e in train if e.skills and e.answer is not None]
    if not labelled:
        return None
    names: dict[str, str] = {}
    for e in labelled:
        for s in e.skills:
            names.setdefault(s, to_snake(s) or "skill")
    book = SkillBook(":memory:", embedder=embedder)
    book.add_skills([Skill(name=n, description=raw, source="labels")
                     for raw, n in dict.fromkeys(names.items())])
    book.add_examples(labelled)
    book.label_many({e.id: sorted({names[s] for s in e.skills}) for e in labelled})
    return book


def require_book(method: str, resources: MethodResources, train: Sequence[Example]) -> Any:
    """The SkillBook a skill-based method uses, or a MethodError naming what is missing."""
    book = resources.skillbook
    if book is None:
        book = book_from_labels(train, resources.get_embedder())
    if book is None:
        raise MethodError(
            f"{method}: needs skills, but no SkillBook was given and no training example "
            "carries skill labels; build one with `metaskill skills discover` and pass it "
            "(--skills book.db, or MethodResources(skillbook=...))."
        )
    if len(book) == 0:
        raise MethodError(f"{method}: the SkillBook has no skills; run `metaskill skills "
                          "discover` first.")
    if not book.all_labels():
        raise MethodError(f"{method}: the SkillBook has skills but no labelled examples to "
                          "use as exemplars; label examples with `metaskill skills discover`.")
    return book


# ---------------------------------------------------------------------------------------
# The selector: skills of the input -> exemplars of those skills
# ---------------------------------------------------------------------------------------
class SkillSelector(Selector):
    """Demos that exercise the skills an input needs (after Didolkar et al. 2024).

    Args:
        book: the SkillBook (skills, labelled examples, embeddings).
        skills_per_input: how many of the input's nearest skills to draw exemplars from.
        via: how skills are matched (see :meth:`SkillBook.nearest_skills`).
        targets: per example id, skill names to use instead of the matched ones (AdaptMI+).

    ``last_skills`` maps each example id seen to the skills its demos came from.
    """

    kind: ClassVar[str] = "skill"

    def __init__(self, book: Any, skills_per_input: int = 2, via: Via = "auto",
                 targets: dict[str, list[str]] | None = None) -> None:
        if skills_per_input < 1:
            raise MethodError("skill_demos: skills_per_input must be >= 1.")
        self.book = book
        self.skills_per_input = skills_per_input
        self.via = via
        self.targets = dict(targets or {})
        self.last_skills: dict[str, list[str]] = {}

    def skills_for(self, example: Example) -> list[str]:
        """The skills ``example`` needs: its target, else the book's nearest skills."""
        if self.targets.get(example.id):
            return [s for s in self.targets[example.id] if s in self.book]
        blind = example.model_copy(update={"answer": None})
        found = self.book.nearest_skills(blind, k=self.skills_per_input, via=self.via)
        return [s.name for s, _ in found]

    def select(self, example: Example, k: int) -> list[Example]:
        """Up to ``k`` exemplars, round-robin over the input's skills, most relevant first."""
        skills = self.skills_for(example)
        self.last_skills[example.id] = skills
        if k < 1 or not skills:
            return []
        per_skill = [self.book.exemplars(s, k, query=example.text, exclude=[example.id])
                     for s in skills]
        out: list[Example] = []
        seen: set[str] = set()
        for rank in range(k):
            for demos in per_skill:
                if rank < len(demos) and demos[rank].id not in seen and len(out) < k:
                    seen.add(demos[rank].id)
                    out.append(demos[rank])
        return out

    def with_targets(self, targets: dict[str, list[str]]) -> SkillSelector:
        """A copy that uses ``targets`` (example id -> skill names) where given."""
        return SkillSelector(self.book, self.skills_per_input, self.via,
                             {**self.targets, **targets})

    def state(self) -> dict[str, Any]:
        return {"book": self.book.to_json(include_vectors=True),
                "skills_per_input": self.skills_per_input, "via": self.via,
                "targets": self.targets}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SkillSelector:
        from metaskill.skills.book import SkillBook

        return cls(SkillBook.from_json(state["book"]), state.get("skills_per_input", 2),
                   state.get("via", "auto"), state.get("targets") or {})


# ---------------------------------------------------------------------------------------
# The method
# ---------------------------------------------------------------------------------------
class SkillDemosConfig(DemoPromptConfig):
    """Options of :class:`SkillDemos`."""

    k: int = Field(4, ge=1, le=64, description="demos per input")
    skills_per_input: int = Field(2, ge=1, le=8, description="skills matched per input")
    via: Via = Field("auto", description="match skills by labelled examples or descriptions")
    order: Order = Field("nearest_last", description="demo order in the prompt")
    answer_mode: AnswerMode | None = Field(
        None, description="generate or choices; None keeps the incoming Solver's"
    )


class SkillDemos(Method):
    """Per-input demos: exemplars of the skills the input needs (skill-based ICL)."""

    name: ClassVar[str] = "skill_demos"
    Config: ClassVar[type[MethodConfig]] = SkillDemosConfig
    config: SkillDemosConfig

    def fit(self, solver: Solver, task: Task, train: list[Example],
            dev: list[Example] | None = None) -> DemoSolver:
        """Return a DemoSolver whose demos are exemplars of each input's skills."""
        cfg = self.config
        # 1. The SkillBook.
        book = require_book(self.name, self.resources, train)
        # 2. The selector.
        selector = SkillSelector(book, cfg.skills_per_input, cfg.via)
        # 3. The Solver, keeping the incoming prompt options (or the prompt variant that
        #    scores best on dev, when format_candidates / try_no_instructions ask for more).
        options = cfg.prompt_options(solver)

        def build(fmt: PromptFormat | None, bare: bool) -> DemoSolver:
            opts = {**options, **({"prompt_format": fmt} if fmt is not None else {})}
            if bare:
                opts["instructions"] = ""
            return DemoSolver(solver.lm, selector, k=cfg.k, **opts)

        variants = prompt_variants(self.name, solver.lm, cfg.format_candidates,
                                   cfg.try_no_instructions, options.get("prompt_format"),
                                   lambda f: build(f, False).uses_chat())
        self.report.notes.update({"k": cfg.k, "skills": len(book),
                                  "labelled_examples": len(book.all_labels())})
        dev_set = cfg.dev_subset(dev)
        if not dev_set:
            return build(*variants[0])
        table = []
        for fmt, bare in variants:
            cand = build(fmt, bare)
            attempts, scores = run_solver(
                cand, task, dev_set, self.report, progress=self.resources.progress,
                label="skill_demos dev" + (f" {cand.prompt_format}{' bare' if bare else ''}"
                                           if len(variants) > 1 else ""))
            table.append({"prompt_format": cand.prompt_format, "instructions": not bare,
                          "dev_accuracy": sum(scores) / len(scores),
                          "prompt_tokens": sum(a.usage.prompt_tokens for a in attempts)
                          / len(attempts)})
        # ties: the shorter prompt, then the variant listed first
        best = max(range(len(table)), key=lambda i: (table[i]["dev_accuracy"],
                                                     -table[i]["prompt_tokens"], -i))
        self.report.notes["dev_accuracy"] = table[best]["dev_accuracy"]
        if len(table) > 1:
            self.report.notes.update({"prompt_format": table[best]["prompt_format"],
                                      "instructions": table[best]["instructions"],
                                      "candidates": table})
        # 4. The new Solver.
        return build(*variants[best])
