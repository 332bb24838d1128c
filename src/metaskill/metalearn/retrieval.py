"""``meta_train_retrieval``: LoRA meta-training on episodes with retrieved demonstrations.

Paper:
    Mueller, Narang, Mathias, Wang, Firooz (2023). "Meta-training with Demonstration
    Retrieval for Efficient Few-Shot Learning" -- meta-train a small model on many tasks
    where each input comes with demonstrations retrieved for it; the model learns to use
    retrieved demonstrations and few-shots unseen tasks far better. (After MetaICL, Min et
    al. 2022, which meta-trains on k random demonstrations.)

Algorithm (what :func:`meta_train_retrieval` does; each step is a resumable stage under
the output folder, skipped when the manifest says it is done with the same inputs):

1. ``pool``: load the task pool (:mod:`metaskill.metalearn.pool`) and fix the leave-out
   protocol (the held-out tasks are never trained on).
2. ``episodes``: for every training task, each sampled train input with its k nearest
   train demonstrations by MiniLM, rendered as knn_demos renders them
   (:mod:`metaskill.metalearn.episodes`) -> ``episodes.jsonl``.
3. ``train``: LoRA on the episodes, loss on the answer only
   (:func:`metaskill.methods.sft.train_lora`), the adapter saved atomically with its GGUF
   export -> ``adapter/``.
4. ``solvers``: for each held-out task, the knn_demos Solver JSON on base + adapter with the
   same k and prompt format -> ``solvers/<task>.json``, so ``metaskill eval --solver``
   runs it directly.
5. ``manifest.json``: schema version, base model, adapter, protocol, k, steps, stages done.

Use the result: ``metaskill eval --task sst2 --model local --solver OUT/solvers/sst2.json``
(the Solver JSON's model spec carries the adapter), or fit knn_demos yourself on the
meta-trained model: ``metaskill adapt --task sst2 --model "local+adapter:OUT/adapter/
adapter.gguf" --method knn_demos --k 4 --format completion -o
knn_demos.format_candidates=null --out knn.json``.

What we changed: LoRA on a 135M model instead of full fine-tuning of a larger one; the
retriever is the frozen MiniLM knn_demos uses (not a trained DPR), and the retrieval pool
of an input is its own task's train split (the paper retrieves from a pooled QA corpus).

Example:
    >>> cfg = RetrievalConfig(hold_out=["sst2"])
    >>> cfg.episodes.k, cfg.lora.steps, cfg.kinds
    (4, 200, ['classification', 'multiple_choice'])
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import types
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

from metaskill.core.readers import read_json
from metaskill.core.stages import StageRunner
from metaskill.core.types import Message
from metaskill.metalearn.episodes import Episode, EpisodeConfig, approx_tokens, build_episodes
from metaskill.metalearn.pool import DEFAULT_RGYM, LeaveOut, TaskPool, load_pool, pool_specs
from metaskill.methods.sft import ChatPair, SFTConfig, TrainResult
from metaskill.tasks.base import TaskKind

#: Schema version of ``manifest.json``.
MANIFEST_VERSION = 1
MANIFEST = "manifest.json"

#: ``(base_model, pairs, config, out_dir, *, plain, settings, progress, log) -> TrainResult``.
Trainer = Callable[..., TrainResult]


def _default_lora() -> SFTConfig:
    return SFTConfig(rank=8, alpha=16.0, learning_rate=1e-3, steps=200, batch_size=4,
                     max_seq_len=768)


class RetrievalConfig(BaseModel):
    """Settings of :func:`meta_train_retrieval`.

    Attributes:
        hold_out: tasks never trained on (the protocol's held-out tasks).
        kinds: task kinds the pool keeps (classification and multiple choice by default;
            add ``generative`` to meta-train on BIG-bench/compose/reasoning-gym too).
        tasks: keep only these pool tasks (None: every task that loads).
        data: the shared data folder (None: ``$METASKILL_DATA``).
        rgym: reasoning-gym datasets in the pool (generative).
        episodes: how episodes are built (k, queries per task, prompt format ...).
        lora: LoRA training settings (steps, rank, learning rate, batch ...).
    """

    hold_out: list[str] = Field(min_length=1)
    kinds: list[TaskKind] = Field(default_factory=lambda: ["classification", "multiple_choice"])
    tasks: list[str] | None = None
    data: str | None = None
    rgym: list[str] = Field(default_factory=lambda: list(DEFAULT_RGYM))
    episodes: EpisodeConfig = Field(default_factory=EpisodeConfig)
    lora: SFTConfig = Field(default_factory=_default_lora)

    @field_validator("lora", mode="before")
    @classmethod
    def _lora_defaults(cls, v: Any) -> Any:
        # a partial dict keeps this method's defaults (max_seq_len 768 ...), not SFT's
        if isinstance(v, dict):
            return {**_default_lora().model_dump(exclude={"steps", "epochs"}), "steps": 200, **v}
        return v

    @model_validator(mode="after")
    def _fits(self) -> RetrievalConfig:
        if self.lora.max_seq_len < self.episodes.max_prompt_tokens + 16:
            raise ValueError(
                f"lora.max_seq_len ({self.lora.max_seq_len}) must exceed "
                f"episodes.max_prompt_tokens ({self.episodes.max_prompt_tokens}) by at least "
                "16 tokens for the answer"
            )
        return self


# ---- training on plain-completion text ------------------------------------------------
class PlainText:
    """A tokenizer seen without its chat template, so :func:`~metaskill.methods.sft.train_lora`
    encodes a one-message pair as the plain prompt followed by `` answer<eos>`` -- the
    text a plain-completion prompt (knn_demos ``completion`` format, a likelihood score
    after a space) shows the model.

    Example:
        >>> PlainText(types.SimpleNamespace(chat_template="x", eos_token="</s>")).eos_token
        '</s>'
    """

    chat_template = None

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._tok(*args, **kwargs)

    def __len__(self) -> int:
        return len(self._tok)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tok, name)


def episode_pairs(episodes: Sequence[Episode]) -> list[ChatPair]:
    """Training pairs: a completion episode is one user message holding the whole prompt
    (trained with :class:`PlainText`), a chat episode its messages."""
    out = []
    for i, ep in enumerate(episodes):
        msgs = ep.messages or [Message(role="user", content=ep.prompt or "")]
        out.append(ChatPair(id=f"{ep.task}:{ep.query_id}:{i}", messages=msgs, answer=ep.answer))
    return out


def train_adapter(base_model: str, pairs: list[ChatPair], config: SFTConfig,
                  out_dir: str | Path, *, plain: bool, settings: Any = None,
                  progress: bool = True, log: Callable[[str], None] | None = None
                  ) -> TrainResult:
    """LoRA-train the model behind ``base_model`` on ``pairs``; export GGUF for a GGUF base.

    The same steps as :func:`metaskill.methods.sft.train_for_lm`, with ``plain`` training
    on plain-completion text (:class:`PlainText`) instead of the chat template.

    Example:
        >>> train_adapter("local", pairs, SFTConfig(steps=5), "out", plain=True)  # doctest: +SKIP
    """
    from metaskill.lm.adapters import base_model_path, export_gguf
    from metaskill.lm.hf import load_hf_model
    from metaskill.methods.sft import train_lora

    if config.threads is None and getattr(settings, "threads", None):
        config = config.model_copy(update={"threads": settings.threads})
    base = base_model_path(types.SimpleNamespace(spec=base_model))
    model, tok, info = load_hf_model(base, settings=settings, log=log)
    meta = {"base": {"source": info["source"], "hash": info["hash"], "kind": info["kind"],
                     "model_type": getattr(model.config, "model_type", None)},
            "format": "completion" if plain else "chat"}
    res = train_lora(model, PlainText(tok) if plain else tok, pairs, config, out_dir,
                     meta=meta, progress=progress)
    if info["kind"] == "gguf":
        export_gguf(res.adapter_dir, base_gguf=info["source"])
    return res


def token_counter(base_model: str) -> Callable[[str], int]:
    """Counts tokens with the base model's own tokenizer (read from its GGUF or folder)."""
    from transformers import AutoTokenizer

    from metaskill.lm.adapters import base_model_path

    path = Path(base_model_path(types.SimpleNamespace(spec=base_model)))
    if path.suffix == ".gguf":
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    else:
        tok = AutoTokenizer.from_pretrained(str(path))
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"]) + 8


# ---- result files --------------------------------------------------------------------
def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False))
    os.replace(tmp, path)


def read_manifest(out_dir: str | Path) -> dict[str, Any] | None:
    """The manifest of a run folder, or None when there is none yet."""
    p = Path(out_dir) / MANIFEST
    return read_json(p, "metatrain manifest", expect=dict) if p.exists() else None


def write_jsonl(path: Path, rows: Sequence[BaseModel]) -> str:
    """Write rows atomically as JSON lines; returns the file's SHA-256."""
    text = "".join(r.model_dump_json() + "\n" for r in rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def knn_solver_json(model_spec: str, task: Any, k: int, prompt_format: str,
                    embedder: str, instructions: bool = True) -> dict[str, Any]:
    """The Solver JSON knn_demos builds with a fixed k and format (no dev search): per input
    the k nearest of ``task``'s train examples, nearest last, on ``model_spec``."""
    from metaskill.methods.demos import DemoSolver, KnnSelector

    pool = [e for e in task.splits.get("train", []) if e.answer is not None]
    opts: dict[str, Any] = {"prompt_format": prompt_format, "order": "nearest_last"}
    if task.kind == "multiple_choice":
        opts["answer_mode"] = "choices"
    if not instructions:
        opts["instructions"] = ""
    solver = DemoSolver(types.SimpleNamespace(spec=model_spec),
                        KnnSelector(pool, embedder_spec=embedder), k=k, **opts)
    return solver.to_json()


# ---- the algorithm ---------------------------------------------------------------------
def meta_train_retrieval(
    base_model: str, config: RetrievalConfig, out_dir: str | Path, *, settings: Any = None,
    pool: TaskPool | None = None, trainer: Trainer | None = None, embedder: Any = None,
    count_tokens: Callable[[str], int] | None = None, progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Meta-train a LoRA adapter on retrieval episodes over the pool minus the held-out tasks.

    Args:
        base_model: the model spec to train (``local``, ``gguf:PATH``, ``hf:PATH``).
        config: the :class:`RetrievalConfig`.
        out_dir: the run folder (resumable: finished stages are skipped).
        settings: :class:`~metaskill.core.settings.Settings` (METASKILL_HOME, threads).
        pool: a loaded pool to use instead of loading one (tests, notebooks).
        trainer: replaces :func:`train_adapter` (tests).
        embedder: replaces the retriever named by ``config.episodes.embedder``.
        count_tokens: prompt token counter (default: the base model's tokenizer, or about
            4 characters a token with a custom ``trainer``).
        progress: progress bars.
        log: receives one-line progress notes.

    Returns:
        The manifest (also in ``OUT/manifest.json``).

    Example:
        >>> meta_train_retrieval("local", RetrievalConfig(hold_out=["sst2"]), "runs/mt")
        ...                                                    # doctest: +SKIP
    """
    out = Path(out_dir).resolve()
    runner = StageRunner(out)
    say = log or (lambda _m: None)
    cache: dict[str, TaskPool] = {}

    def get_pool() -> TaskPool:
        if "pool" not in cache:
            cache["pool"] = pool if pool is not None else load_pool(
                pool_specs(config.data, rgym=config.rgym), kinds=config.kinds,
                names=config.tasks, progress=progress)
        return cache["pool"]

    manifest: dict[str, Any] = {
        "schema_version": MANIFEST_VERSION, "kind": "meta_train_retrieval",
        "paper": "Mueller et al. 2023, Meta-training with Demonstration Retrieval",
        "base_model": base_model, "config": config.model_dump(mode="json"),
        "k": config.episodes.k, "steps": config.lora.steps,
        "prompt_format": config.episodes.prompt_format, "stages": {}, "done": False,
    }

    # 1. The pool and the leave-out protocol.
    protocol = pool_stage(runner, out, manifest, get_pool, config.hold_out,
                          config.model_dump(mode="json", include={"hold_out", "kinds", "tasks",
                                                                  "data", "rgym"}),
                          pool, say)

    # 2. Episodes: each input with its k nearest train demonstrations, rendered as knn_demos.
    def stage_episodes() -> dict[str, Any]:
        count = count_tokens or (approx_tokens if trainer is not None
                                 else token_counter(base_model))
        eps = build_episodes(get_pool(), protocol, config.episodes, embedder=embedder,
                             count_tokens=count, progress=progress)
        sha = write_jsonl(out / "episodes.jsonl", eps)
        return {"n": len(eps), "sha256": sha, "per_task": dict(Counter(e.task for e in eps)),
                "mean_demos": sum(len(e.demo_ids) for e in eps) / len(eps)}

    ep_in = {"protocol": protocol.to_json(), "pool": manifest["pool"],
             "episodes": config.episodes.model_dump(mode="json"), "base": base_model}
    ep_info = runner.run("episodes", ep_in, stage_episodes)
    manifest["episodes"] = ep_info
    mark_stage(out, manifest, "episodes")
    say(f"episodes: {ep_info['n']} ({ep_info['mean_demos']:.1f} demos on average)")

    # 3. LoRA on the episodes (loss on the answers), saved atomically with its GGUF export.
    def stage_train() -> dict[str, Any]:
        eps = [Episode.model_validate_json(line) for line in
               (out / "episodes.jsonl").read_text(encoding="utf-8").splitlines() if line]
        train = trainer or train_adapter
        res = train(base_model, episode_pairs(eps), config.lora, out / "adapter",
                    plain=config.episodes.prompt_format == "completion", settings=settings,
                    progress=progress, log=log)
        return {"steps": res.steps, "losses": [round(x, 4) for x in res.losses],
                "seconds": round(res.seconds, 1), "n_examples": res.n_examples,
                "adapter": str(res.adapter_dir)}

    tr_in = {"episodes": ep_info["sha256"], "lora": config.lora.model_dump(mode="json"),
             "base": base_model}
    tr_info = runner.run("train", tr_in, stage_train)
    from metaskill.lm.adapters import adapter_spec

    model_spec = adapter_spec(base_model, tr_info["adapter"])
    manifest.update(train=tr_info, adapter=tr_info["adapter"], model=model_spec)
    mark_stage(out, manifest, "train")

    # 4. A knn_demos Solver JSON per held-out task, on base + adapter.
    def stage_solvers() -> dict[str, str]:
        from metaskill.tasks.registry import get_task

        paths = {}
        for name in protocol.held_out:
            task = get_pool().tasks.get(name) or get_task(name)
            data = knn_solver_json(model_spec, task, config.episodes.k,
                                   config.episodes.prompt_format, config.episodes.embedder,
                                   config.episodes.instructions)
            data["protocol"] = protocol.to_json()
            path = out / "solvers" / f"{name}.json"
            write_json(path, data)
            paths[name] = str(path)
        return paths

    solvers = runner.run("solvers", {"model": model_spec, "protocol": protocol.to_json(),
                                     "episodes": config.episodes.model_dump(mode="json")},
                         stage_solvers)
    manifest.update(solvers=solvers, done=True, finished=time.time(), usage=[
        f"metaskill eval {task_args(t, manifest['pool'])} --model {base_model} --solver {p}"
        for t, p in solvers.items()])
    mark_stage(out, manifest, "solvers")
    return manifest


def task_args(name: str, pool_summary: dict[str, Any]) -> str:
    """``--task ...`` for a task of the pool (its loader and options), else ``--task NAME``.

    Example:
        >>> task_args("bigbench_x", {"tasks": {"bigbench_x": {"source": {
        ...     "loader": "bigbench", "options": {"path": "/d/x"}}}}})
        '--task bigbench -T path=/d/x'
    """
    from metaskill.metalearn.pool import PoolEntry

    src = (pool_summary.get("tasks", {}).get(name) or {}).get("source")
    return PoolEntry.model_validate(src).task_args() if src else f"--task {name}"


def pool_stage(runner: Any, out: Path, manifest: dict[str, Any], get_pool: Any,
               hold_out: Sequence[str], config_in: dict[str, Any], given: TaskPool | None,
               say: Any) -> LeaveOut:
    """The first stage of a meta-training run: load the pool, fix the leave-out protocol.

    Runs (or, resuming, reads back) the ``pool`` stage, writes the protocol and the pool's
    summary into ``manifest``, marks the stage done and says what trains and what is held
    out. Shared by ``meta_train_retrieval`` and ``meta_tune``.
    """
    def stage() -> dict[str, Any]:
        p = get_pool()
        return {"protocol": LeaveOut.of(p, hold_out).to_json(), "pool": p.summary()}

    info = runner.run("pool", {"config": config_in,
                               "given": given.summary() if given is not None else None}, stage)
    protocol = LeaveOut.model_validate(info["protocol"])
    manifest.update(protocol=protocol.to_json(), pool=info["pool"])
    mark_stage(out, manifest, "pool")
    say(f"pool: {len(protocol.train_tasks)} training tasks ({', '.join(protocol.train_tasks)});"
        f" held out: {', '.join(protocol.held_out)}")
    return protocol


def mark_stage(out: Path, manifest: dict[str, Any], stage: str) -> None:
    """Record ``stage`` as done in ``manifest`` and write it to ``out/manifest.json``."""
    manifest["stages"][stage] = True
    write_json(out / MANIFEST, manifest)


__all__ = ["MANIFEST", "MANIFEST_VERSION", "PlainText", "RetrievalConfig", "episode_pairs",
           "knn_solver_json", "mark_stage", "meta_train_retrieval", "read_manifest",
           "task_args", "token_counter", "train_adapter", "write_json", "write_jsonl"]
