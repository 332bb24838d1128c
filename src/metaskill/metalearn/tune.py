"""``meta_tune``: yes/no questions from label descriptions, tuned across tasks, answered
zero-shot on unseen ones.

Paper:
    Zhong, Lee, Zhang, Klein (2021). "Adapting Language Models for Zero-shot Learning by
    Meta-tuning on Dataset and Prompt Collections" -- every classification dataset
    becomes yes/no questions, one per label ("Is the review positive?"); a model fine-tuned
    on the questions of many datasets answers those of an unseen dataset zero-shot, the
    label whose question gets the highest probability of "yes" being the prediction.

Algorithm (what :func:`meta_tune` does; each step a resumable stage under the output
folder):

1. ``pool``: the tasks with a label set (classification tasks; multiple-choice tasks whose
   examples all offer the same choices), and the leave-out protocol.
2. ``questions``: per task, one question per label, ``"Is this text <description>?"``.
   The descriptions come from the task (``Task.label_descriptions``: the built-ins and
   task files that give them), else from a teacher LM asked once per label, else (no
   teacher) the label itself (``Is the answer "<label>"?``). All are stored in
   ``questions.json`` with their source; a later run can reuse that file.
3. ``data``: each training example (of a training task's train split; none whose text
   is also a held-out task's) becomes its gold label's question answered ``yes``
   and ``negatives`` other labels' questions answered ``no`` (seeded), in one prompt
   format: ``Text: <input>\\nQuestion: <question>\\nAnswer:`` then `` yes`` / `` no``.
4. ``train``: LoRA across the pool minus the held-out tasks (plain-completion text, loss on
   the answer word), with its GGUF export.
5. ``solvers``: for each held-out task, a :class:`YesNoSolver` JSON on base + adapter:
   for every label it scores `` yes`` and `` no`` after that label's question
   (:meth:`metaskill.lm.base.LM.score`) and answers the label with the most likely yes.

What we changed: LoRA on a 135M model instead of full fine-tuning of UnifiedQA/T5 (770M);
the pool is what loads offline here; one hand-written description per label (the paper
wrote several questions per label); the yes probability is normalised against no by
default (``score="yes_vs_no"``; ``"yes"`` is the paper's raw probability of yes).

Example:
    >>> q = task_questions(_doc_task(), template=QUESTION)
    >>> q.source, q.questions["positive"]
    ('task', 'Is this text a positive review?')
    >>> print(yes_no_prompt(PROMPT, "great film", q.questions["positive"]))
    Text: great film
    Question: Is this text a positive review?
    Answer:
"""

from __future__ import annotations

import math
import random
import time
import types
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from metaskill.core.errors import MetaskillError, MethodError
from metaskill.core.stages import StageRunner
from metaskill.core.types import Example, Message, Request, Usage
from metaskill.eval.solver import Attempt, Solver
from metaskill.metalearn.episodes import held_out_texts, train_pool
from metaskill.metalearn.pool import DEFAULT_RGYM, TaskPool, load_pool, pool_specs
from metaskill.metalearn.retrieval import (
    Trainer,
    mark_stage,
    pool_stage,
    task_args,
    train_adapter,
    write_json,
    write_jsonl,
)
from metaskill.methods.sft import ChatPair, SFTConfig
from metaskill.tasks.base import Task, TaskKind

#: Schema version of ``questions.json`` and of the manifest.
TUNE_VERSION = 1
#: A label's question from its description.
QUESTION = "Is this text {description}?"
#: The prompt of one yes/no question (plain completion; the answer follows a space).
PROMPT = "Text: {text}\nQuestion: {question}\nAnswer:"
#: The question of a label that has no description (no teacher was given).
FALLBACK = 'Is the answer "{label}"?'


# ---- 1. label sets and 2. questions ------------------------------------------------------
def label_set(task: Task) -> list[str] | None:
    """The labels of a task: ``task.labels``, else the choices every example of a
    multiple-choice task shares (in first-seen order), else None.

    Example:
        >>> label_set(_doc_task())
        ['negative', 'positive']
    """
    if task.labels:
        return list(task.labels)
    if task.kind != "multiple_choice":
        return None
    sets = {tuple(sorted(e.metadata.get("choices") or [])) for s in task.splits.values()
            for e in s}
    if len(sets) != 1 or len(next(iter(sets))) < 2:
        return None
    seen: dict[str, None] = {}
    for s in task.splits.values():
        for e in s:
            seen.update(dict.fromkeys(e.metadata["choices"]))
    return list(seen)


class LabelQuestions(BaseModel):
    """The yes/no question of each label of one task, and where the descriptions came from.

    Attributes:
        task: the task name.
        source: ``task`` (its label_descriptions), ``teacher:<spec>`` or ``label`` (none).
        questions: label -> question.
    """

    task: str
    source: str
    questions: dict[str, str]


def task_questions(task: Task, *, template: str = QUESTION, teacher: Any = None,
                   stored: LabelQuestions | None = None) -> LabelQuestions:
    """The questions of ``task``'s labels (see step 2 of the module docstring).

    Args:
        task: a task with a label set.
        template: the question, with ``{description}``.
        teacher: an LM that describes labels the task does not describe.
        stored: questions read from an earlier run (used when they cover the labels).

    Raises:
        MethodError: the task has no label set.
    """
    labels = label_set(task)
    if not labels:
        raise MethodError(f"meta_tune: task '{task.name}' has no label set (a classification "
                          "task, or multiple choice with the same choices everywhere).")
    if stored is not None and set(labels) <= set(stored.questions):
        return stored
    given = task.label_descriptions or {}
    if all(given.get(lab) for lab in labels):
        return LabelQuestions(task=task.name, source="task", questions={
            lab: template.format(description=given[lab]) for lab in labels})
    if teacher is not None:
        desc = describe_labels(teacher, task, labels)
        return LabelQuestions(task=task.name, source=f"teacher:{teacher.spec}", questions={
            lab: template.format(description=desc[lab]) if desc.get(lab)
            else FALLBACK.format(label=lab) for lab in labels})
    return LabelQuestions(task=task.name, source="label",
                          questions={lab: FALLBACK.format(label=lab) for lab in labels})


def describe_labels(teacher: Any, task: Task, labels: Sequence[str],
                    n_examples: int = 3) -> dict[str, str]:
    """Ask ``teacher`` once per label for a short description (greedy, one line).

    The request shows the task's instructions and up to ``n_examples`` train inputs of
    the label; the reply completes ``"This text is ..."``. Empty replies are left out.
    """
    train = task.splits.get("train", [])
    requests = []
    for lab in labels:
        shown = [e.text[:300] for e in train if e.answer == lab][:n_examples]
        body = "\n".join(f"- {t}" for t in shown)
        requests.append(Request(messages=(Message(role="user", content=(
            f"Task: {task.instructions or task.description}\nTexts labelled \"{lab}\":\n"
            f"{body}\n\nDescribe in a few words what texts labelled \"{lab}\" are. Reply "
            "with one phrase that completes: This text is ...")),), max_tokens=24,
            temperature=0.0))
    out = {}
    for lab, c in zip(labels, teacher.complete(requests), strict=True):
        phrase = (c.text.strip().splitlines() or [""])[0].strip().strip('"').rstrip(".?!")
        phrase = phrase.removeprefix("This text is ").removeprefix("this text is ").strip()
        if phrase:
            out[lab] = phrase[:120]
    return out


# ---- 3. the yes/no data -------------------------------------------------------------------
def yes_no_prompt(template: str, text: str, question: str) -> str:
    """One question's prompt (the answer `` yes``/`` no`` follows it)."""
    return template.format(text=text, question=question)


def question_pairs(task: Task, questions: LabelQuestions, examples: Sequence[Example], *,
                   negatives: int | None = 1, template: str = PROMPT,
                   rng: random.Random | None = None) -> list[ChatPair]:
    """Each example's gold-label question answered ``yes`` and ``negatives`` other labels'
    questions (all when None) answered ``no``.

    Example:
        >>> t = _doc_task()
        >>> ps = question_pairs(t, task_questions(t), t.splits["train"][:1])
        >>> [(p.messages[0].content.splitlines()[1], p.answer) for p in ps]
        [('Question: Is this text a positive review?', 'yes'), ('Question: Is this text a negative review?', 'no')]
    """  # noqa: E501
    rng = rng or random.Random(0)
    labels = list(questions.questions)
    out = []
    for e in examples:
        if e.answer not in questions.questions:
            continue
        others = [lab for lab in labels if lab != e.answer]
        if negatives is not None:
            others = rng.sample(others, min(negatives, len(others)))
        for lab in [e.answer, *others]:
            prompt = yes_no_prompt(template, e.text, questions.questions[lab])
            out.append(ChatPair(id=f"{task.name}:{e.id}:{lab}", answer="yes" if lab == e.answer
                                else "no", messages=[Message(role="user", content=prompt)]))
    return out


# ---- 5. the zero-shot Solver -------------------------------------------------------------
class YesNoConfig(BaseModel):
    """State of :class:`YesNoSolver` (plain JSON).

    Attributes:
        questions: label -> its yes/no question (the labels are the candidate answers).
        template: the prompt, with ``{text}`` and ``{question}``.
        score: ``yes_vs_no`` ranks labels by log P(yes) - log(P(yes) + P(no)) after each
            question (yes normalised against no); ``yes`` by log P(yes) alone (the paper's).
    """

    questions: dict[str, str] = Field(min_length=2)
    template: str = PROMPT
    score: Literal["yes", "yes_vs_no"] = "yes_vs_no"

    @field_validator("template")
    @classmethod
    def _fields(cls, v: str) -> str:
        if "{text}" not in v or "{question}" not in v:
            raise ValueError("the template needs {text} and {question}")
        return v


class YesNoSolver(Solver):
    """Zero-shot classification by yes/no questions: the label whose question gets the most
    likely `` yes`` wins (one ``lm.score`` call per label).

    Its kind ``yesno`` is registered lazily in :data:`metaskill.eval.solvers.SOLVERS`, so a
    saved one reloads with ``load_solver`` (and ``metaskill eval --solver``).

    Example:
        >>> from metaskill.lm.fake import ScriptedLM
        >>> lm = ScriptedLM(scores=lambda p, c: 0.0 if ("positive" in p) == (c == " yes")
        ...                 else -3.0)
        >>> s = YesNoSolver(lm, questions={"negative": "Is it negative?",
        ...                                "positive": "Is it positive?"})
        >>> s.solve(_doc_task(), [Example(id="q", input="fine")])[0].output
        'positive'
    """

    kind: ClassVar[str] = "yesno"

    def __init__(self, lm: Any, config: YesNoConfig | None = None, **options: Any) -> None:
        super().__init__(lm)
        try:
            self.config = config or YesNoConfig.model_validate(options)
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(x) for x in err.get("loc", ())) or "config"
            raise MetaskillError(f"yesno solver: bad '{field}': {err.get('msg')}.") from None

    def label_scores(self, example: Example) -> dict[str, float]:
        """Each label's score (see :class:`YesNoConfig`) for ``example``."""
        cfg = self.config
        out = {}
        for lab, question in cfg.questions.items():
            yes, no = self.lm.score(yes_no_prompt(cfg.template, example.text, question),
                                    [" yes", " no"])
            out[lab] = yes if cfg.score == "yes" else yes - _logaddexp(yes, no)
        return out

    def solve(self, task: Task, examples: list[Example]) -> list[Attempt]:
        """Answer each example with its best label; ``meta["scores"]`` keeps every label's."""
        count = getattr(self.lm, "count_tokens", lambda s: max(1, len(s) // 4))
        out = []
        for e in examples:
            t0 = time.perf_counter()
            scores = self.label_scores(e)
            best = max(scores, key=scores.__getitem__)
            prompts = [yes_no_prompt(self.config.template, e.text, q)
                       for q in self.config.questions.values()]
            out.append(Attempt(
                example_id=e.id, prompt=prompts[0], output=best,
                usage=Usage(prompt_tokens=sum(count(p) + 2 for p in prompts)),
                latency_s=time.perf_counter() - t0,
                meta={"raw": best, "lm_calls": len(prompts),
                      "scores": {k: (v if math.isfinite(v) else None) for k, v in scores.items()}},
            ))
        return out

    def state(self) -> dict[str, Any]:
        return self.config.model_dump(mode="json")

    @classmethod
    def from_state(cls, state: dict[str, Any], lm: Any) -> YesNoSolver:
        return cls(lm, **state)

    def describe(self) -> str:
        """One line for reports."""
        return f"yesno(labels={len(self.config.questions)}, score={self.config.score})"


def _logaddexp(a: float, b: float) -> float:
    hi = max(a, b)
    if hi == -math.inf:
        return -math.inf
    return hi + math.log(math.exp(a - hi) + math.exp(b - hi))


# ---- the algorithm -------------------------------------------------------------------------
def _default_lora() -> SFTConfig:
    return SFTConfig(rank=8, alpha=16.0, learning_rate=1e-3, steps=200, batch_size=8,
                     max_seq_len=384)


class TuneConfig(BaseModel):
    """Settings of :func:`meta_tune`.

    Attributes:
        hold_out: tasks never trained on.
        kinds: task kinds the pool keeps (tasks without a label set are dropped anyway).
        tasks: keep only these pool tasks (None: every task with a label set).
        data: the shared data folder (None: ``$METASKILL_DATA``).
        per_task: training examples per task (seeded sample; None: all).
        negatives: "no" questions per example (None: every other label).
        question: the question template, with ``{description}``.
        prompt: the prompt template, with ``{text}`` and ``{question}``.
        score: how the Solver ranks labels (``yes_vs_no`` or ``yes``).
        teacher: model spec of an LM that describes labels a task does not describe.
        questions_file: a ``questions.json`` of an earlier run to reuse.
        max_text_chars: inputs are cut to this many characters (keeps prompts short).
        seed: seeds the example sample and the negatives.
        lora: LoRA training settings.
    """

    hold_out: list[str] = Field(min_length=1)
    kinds: list[TaskKind] = Field(default_factory=lambda: ["classification", "multiple_choice"])
    tasks: list[str] | None = None
    data: str | None = None
    per_task: int | None = Field(200, ge=1)
    negatives: int | None = Field(1, ge=1)
    question: str = QUESTION
    prompt: str = PROMPT
    score: Literal["yes", "yes_vs_no"] = "yes_vs_no"
    teacher: str | None = None
    questions_file: str | None = None
    max_text_chars: int = Field(600, ge=20)
    seed: int = 0
    lora: SFTConfig = Field(default_factory=_default_lora)

    @field_validator("lora", mode="before")
    @classmethod
    def _lora_defaults(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {**_default_lora().model_dump(exclude={"steps", "epochs"}), "steps": 200, **v}
        return v

    @field_validator("question")
    @classmethod
    def _question(cls, v: str) -> str:
        if "{description}" not in v:
            raise ValueError("the question template needs {description}")
        return v


def labelled_pool(pool: TaskPool) -> TaskPool:
    """The pool's tasks that have a label set; the others go to ``skipped``."""
    keep = {n: t for n, t in pool.tasks.items() if label_set(t)}
    skipped = {**pool.skipped, **{n: "no label set" for n in pool.tasks if n not in keep}}
    return TaskPool(tasks=keep, skipped=skipped)


def _short(e: Example, n: int) -> Example:
    text = e.text
    return e if len(text) <= n else e.model_copy(update={"input": text[:n]})


def meta_tune(
    base_model: str, config: TuneConfig, out_dir: str | Path, *, settings: Any = None,
    pool: TaskPool | None = None, trainer: Trainer | None = None, teacher: Any = None,
    progress: bool = True, log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Meta-tune a LoRA adapter on yes/no label questions across the pool minus held-out tasks.

    Args:
        base_model: the model spec to train (``local``, ``gguf:PATH``, ``hf:PATH``).
        config: the :class:`TuneConfig`.
        out_dir: the run folder (resumable: finished stages are skipped).
        settings: :class:`~metaskill.core.settings.Settings`.
        pool: a loaded pool to use instead of loading one.
        trainer: replaces :func:`~metaskill.metalearn.retrieval.train_adapter` (tests).
        teacher: an LM to describe labels (default: ``config.teacher`` loaded on need).
        progress: progress bars.
        log: receives one-line progress notes.

    Returns:
        The manifest (also in ``OUT/manifest.json``).

    Example:
        >>> meta_tune("local", TuneConfig(hold_out=["sst2"]), "runs/tune")  # doctest: +SKIP
    """
    out = Path(out_dir).resolve()
    runner = StageRunner(out)
    say = log or (lambda _m: None)
    cache: dict[str, TaskPool] = {}

    def get_pool() -> TaskPool:
        if "pool" not in cache:
            loaded = pool if pool is not None else load_pool(
                pool_specs(config.data, rgym=DEFAULT_RGYM), kinds=config.kinds,
                progress=progress)
            lp = labelled_pool(loaded)
            if config.tasks is not None:
                lp = TaskPool(tasks={n: t for n, t in lp.tasks.items() if n in config.tasks},
                              skipped=lp.skipped)
            cache["pool"] = lp
        return cache["pool"]

    manifest: dict[str, Any] = {
        "schema_version": TUNE_VERSION, "kind": "meta_tune",
        "paper": "Zhong et al. 2021, meta-tuning on yes/no label questions",
        "base_model": base_model, "config": config.model_dump(mode="json"),
        "steps": config.lora.steps, "stages": {}, "done": False,
    }

    # 1. The labelled pool and the protocol.
    protocol = pool_stage(runner, out, manifest, get_pool, config.hold_out,
                          config.model_dump(mode="json", include={"hold_out", "kinds", "tasks",
                                                                  "data"}),
                          pool, say)

    # 2. One question per label of every task (held-out ones too: their Solvers need them).
    def stage_questions() -> dict[str, Any]:
        stored = _read_questions(config.questions_file)
        lm = teacher
        if lm is None and config.teacher:
            from metaskill.lm import load_lm

            lm = load_lm(config.teacher, settings=settings)
        qs = {n: task_questions(get_pool().tasks[n], template=config.question, teacher=lm,
                                stored=stored.get(n)).model_dump()
              for n in [*protocol.train_tasks, *protocol.held_out]}
        write_json(out / "questions.json", {"schema_version": TUNE_VERSION, "tasks": qs})
        return qs

    q_in = {"protocol": protocol.to_json(), "question": config.question,
            "teacher": config.teacher, "file": config.questions_file}
    questions = {n: LabelQuestions.model_validate(q)
                 for n, q in runner.run("questions", q_in, stage_questions).items()}
    manifest["questions"] = {n: q.source for n, q in questions.items()}
    mark_stage(out, manifest, "questions")

    # 3. The yes/no training data, 4. LoRA on it.
    def stage_data() -> dict[str, Any]:
        rng = random.Random(config.seed)
        banned = held_out_texts(get_pool(), protocol)  # a training task's copy of held-out data
        pairs: list[ChatPair] = []
        for name in protocol.train_tasks:
            exs = [_short(e, config.max_text_chars)
                   for e in train_pool(get_pool().tasks[name], protocol.train_split, banned)]
            if config.per_task is not None and len(exs) > config.per_task:
                exs = rng.sample(exs, config.per_task)
            pairs += question_pairs(get_pool().tasks[name], questions[name], exs,
                                    negatives=config.negatives, template=config.prompt, rng=rng)
        if not pairs:
            raise MethodError("meta_tune: the training tasks give no yes/no questions.")
        sha = write_jsonl(out / "questions.jsonl", pairs)
        return {"n": len(pairs), "sha256": sha,
                "answers": dict(Counter(p.answer for p in pairs)),
                "per_task": dict(Counter(p.id.split(":", 1)[0] for p in pairs))}

    d_in = {"protocol": protocol.to_json(), "questions": {n: q.model_dump()
                                                          for n, q in questions.items()},
            "cfg": config.model_dump(mode="json", include={"per_task", "negatives", "prompt",
                                                           "max_text_chars", "seed"})}
    data = runner.run("data", d_in, stage_data)
    manifest["data"] = data
    mark_stage(out, manifest, "data")
    say(f"yes/no questions: {data['n']} ({data['answers']})")

    def stage_train() -> dict[str, Any]:
        pairs = [ChatPair.model_validate_json(line) for line in
                 (out / "questions.jsonl").read_text(encoding="utf-8").splitlines() if line]
        res = (trainer or train_adapter)(base_model, pairs, config.lora, out / "adapter",
                                         plain=True, settings=settings, progress=progress,
                                         log=log)
        return {"steps": res.steps, "losses": [round(x, 4) for x in res.losses],
                "seconds": round(res.seconds, 1), "n_examples": res.n_examples,
                "adapter": str(res.adapter_dir)}

    tr = runner.run("train", {"data": data["sha256"], "lora": config.lora.model_dump(
        mode="json"), "base": base_model}, stage_train)
    from metaskill.lm.adapters import adapter_spec

    model_spec = adapter_spec(base_model, tr["adapter"])
    manifest.update(train=tr, adapter=tr["adapter"], model=model_spec)
    mark_stage(out, manifest, "train")

    # 5. A YesNoSolver JSON per held-out task, on base + adapter.
    def stage_solvers() -> dict[str, str]:
        paths = {}
        for name in protocol.held_out:
            solver = YesNoSolver(types.SimpleNamespace(spec=model_spec),
                                 questions=questions[name].questions, template=config.prompt,
                                 score=config.score)
            data = {**solver.to_json(), "protocol": protocol.to_json()}
            path = out / "solvers" / f"{name}.json"
            write_json(path, data)
            paths[name] = str(path)
        return paths

    solvers = runner.run("solvers", {"model": model_spec, "protocol": protocol.to_json(),
                                     "questions": manifest["questions"],
                                     "score": config.score, "prompt": config.prompt},
                         stage_solvers)
    manifest.update(solvers=solvers, done=True, finished=time.time(), usage=[
        f"metaskill eval {task_args(t, manifest['pool'])} --model {base_model} --solver {p}"
        for t, p in solvers.items()])
    mark_stage(out, manifest, "solvers")
    return manifest


def _read_questions(path: str | None) -> dict[str, LabelQuestions]:
    if not path:
        return {}
    from metaskill.core.readers import read_json

    data = read_json(Path(path), "questions file", expect=dict)
    try:
        return {n: LabelQuestions.model_validate(q) for n, q in data.get("tasks", {}).items()}
    except ValidationError as e:
        raise MethodError(f"{path}: not a meta_tune questions.json ({e.errors()[0]['msg']}).")\
            from None


def _doc_task() -> Task:
    """A two-label task for the docstring examples."""
    from metaskill.tasks.verifiers import LabelVerifier

    ex = [Example(id="a", input="great film", answer="positive"),
          Example(id="b", input="dull plot", answer="negative")]
    return Task(name="doc", splits={"train": ex}, labels=["negative", "positive"],
                kind="classification", verifier=LabelVerifier(labels=["negative", "positive"]),
                label_descriptions={"negative": "a negative review",
                                    "positive": "a positive review"})


__all__ = ["FALLBACK", "PROMPT", "QUESTION", "TUNE_VERSION", "LabelQuestions", "TuneConfig",
           "YesNoConfig", "YesNoSolver", "describe_labels", "label_set", "labelled_pool",
           "meta_tune", "question_pairs", "task_questions", "yes_no_prompt"]
