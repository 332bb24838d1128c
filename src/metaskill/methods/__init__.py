"""Methods: turn data into a better Solver, ``Method.fit(solver, task, train, dev) -> Solver``.

:data:`METHODS` maps a method's name to its class as a lazy ``"module:Class"`` target, so
listing or looking one up imports nothing heavy. Each method lives in its own file,
readable top to bottom like its paper's algorithm box.

Shared pieces other methods build on:

* :mod:`metaskill.methods.demos` -- :class:`~metaskill.methods.demos.DemoSolver` (per-input
  demonstrations from a pluggable :class:`~metaskill.methods.demos.Selector`, per-input
  ``k``, chat or plain-completion prompts, JSON state) and helpers to score attempts.
* :mod:`metaskill.methods.self_consistency` -- majority voting over sampled answers
  (:func:`~metaskill.methods.self_consistency.vote`), reusable by other methods.
* :mod:`metaskill.methods.compose` -- :func:`~metaskill.methods.compose.fit_chain` applies a
  chain of methods (parametric ones first); :func:`~metaskill.methods.compose.build_method`
  builds one method from its name, options and
  :class:`~metaskill.methods.base.MethodResources`.
* :mod:`metaskill.methods.sft` -- LoRA training (:func:`~metaskill.methods.sft.train_lora`)
  and :func:`~metaskill.methods.sft.train_solver`, the shared second half of the parametric
  methods ``sft``, ``stat`` and ``self_evolve``: their Solver's LM is base + adapter
  (``lm.with_adapter``), so its JSON's model spec carries the adapter.

Writing a method (the conventions :func:`~metaskill.methods.compose.build_method` relies on):

* subclass :class:`~metaskill.methods.base.Method`, set ``name``, ``Config`` (a
  :class:`~metaskill.methods.base.MethodConfig` subclass, every field with a description)
  and, for a method that trains weights, ``stage = "parametric"``; ``Method.__init__``
  stores the config (its defaults when None) and the
  :class:`~metaskill.methods.base.MethodResources` (embedder, SkillBook, teacher, profile);
* ``fit`` runs inside the no-test-data guard (:mod:`metaskill.core.guard`): select on the
  ``dev`` it is given, never on the task's test split;
* ``fit`` returns a NEW Solver, fills ``self.report`` (usage, ``lm_calls``, and
  ``notes["dev_accuracy"]`` when it scored dev), and raises
  :class:`~metaskill.core.errors.MethodError` naming the method and the missing piece;
* a new Solver kind goes into :data:`metaskill.eval.solvers.METHOD_SOLVER_KINDS` (a lazy
  ``"module:Class"`` target) so saved Solvers reload without importing this package;
* register the method here, lazily, so ``metaskill methods ls`` lists it.

Example:
    >>> "knn_demos" in METHODS
    True
    >>> METHODS.get("knn_demos").name
    'knn_demos'
"""

from __future__ import annotations

from typing import Any

from metaskill.core.registry import Registry

#: name -> Method subclass (lazy ``"module:Class"`` targets).
METHODS: Registry[Any] = Registry("method")

_TARGETS = {
    # inference-time methods (issue 5, first half)
    "knn_demos": "metaskill.methods.knn_demos:KnnDemos",
    "raml": "metaskill.methods.raml:Raml",
    "dynaicl": "metaskill.methods.dynaicl:DynaICL",
    "self_consistency": "metaskill.methods.self_consistency:SelfConsistency",
    "self_refine": "metaskill.methods.self_refine:SelfRefine",
    # inference-time methods (issue 5, second half)
    "skill_demos": "metaskill.methods.skill_demos:SkillDemos",
    "adaptmi": "metaskill.methods.adaptmi:AdaptMI",
    "meta_prompting": "metaskill.methods.meta_prompting:MetaPrompting",
    "multi_critique": "metaskill.methods.multi_critique:MultiCritique",
    # experience memory (issue 21): notes in the knowledge base of skills/knowledge.py
    "memory": "metaskill.methods.memory:Memory",
    # tools (issue 21): verified tool-call demos, a router learnt on dev per skill
    "tool_use": "metaskill.methods.tool_use:ToolUse",
    # parametric methods (train LoRA adapters; a chain runs them first)
    "sft": "metaskill.methods.sft:SFT",
    "stat": "metaskill.methods.stat:STAT",
    "self_evolve": "metaskill.methods.self_evolve:SelfEvolve",
    # reinforcement learning from the Verifier (issue 22): GRPO on TRL, MASA gates
    "grpo": "metaskill.methods.grpo:GRPO",
}
for _name, _target in _TARGETS.items():
    METHODS.register(_name, _target)


def method_available(name: str) -> tuple[bool, str]:
    """Whether method ``name`` can be imported, and a one-line description or the reason not.

    Example:
        >>> method_available("knn_demos")[0]
        True
    """
    try:
        cls = METHODS.get(name)
    except (ImportError, AttributeError) as e:
        return False, f"not available ({type(e).__name__}: {e})"
    doc = (cls.__doc__ or "").strip().splitlines()
    return True, doc[0] if doc else ""


__all__ = ["METHODS", "method_available"]
