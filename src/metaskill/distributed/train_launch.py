"""LoRA SFT over several processes or GPUs, started by ``accelerate launch`` or ``torchrun``.

The training of :mod:`metaskill.methods.sft` (Hu et al. 2021, "LoRA: Low-Rank Adaptation of
Large Language Models"), data-parallel through HF accelerate (DDP under the hood):

1. The parent writes the job (base model path, training pairs, :class:`SFTConfig`, where
   the adapter goes) to a folder beside the adapter and starts the launcher:
   ``accelerate launch --num_processes N -m metaskill.distributed.train_launch --job J``
   (or ``torchrun --nproc_per_node N -m ...``; for several machines, run the same command
   on each with the launcher's own ``--num_machines/--machine_rank/--main_process_ip``).
   On a machine without a GPU ``accelerate launch`` starts one process, so several CPU
   processes (DDP over gloo: the tests' 2-process run) go through ``torchrun``.
2. Every process loads the base model (the main process first, so a GGUF base is converted
   to its HF copy once), wraps it with the same LoRA (same seed: same initial adapter), and
   ``accelerator.prepare`` makes it DDP: gradients are averaged over processes each step.
3. The optimizer steps follow ``train_lora``'s seeded plan of ``batch_size`` examples per
   step; process r trains on items r, r+N, ... of each step's batch. With one process this
   is exactly ``train_lora``'s sequence of updates (the test checks the losses match).
4. The main process saves the adapter atomically (``save_adapter_atomically``, with
   ``metaskill_train.json``); the parent exports it to GGUF when the base is a GGUF file,
   so llama.cpp serves base + adapter as after an in-process training.

What we changed from ``train_lora``: with N > 1 processes each process's loss is the mean
over *its* answer tokens, so the averaged gradient weights shards equally rather than by
token count; the dev learning curve (``on_step``) and the deadline are not available in
the launched processes (training runs its planned steps).

Use it as the ``trainer`` of the parametric methods (``MethodResources.trainer``), or from
the command line: ``metaskill train --task T --launcher accelerate --num-processes 4``.

Example:
    >>> cmd = launch_command("torchrun", 2, ["--job", "j.json"])
    >>> cmd[1:4], cmd[-3:]
    (['-m', 'torch.distributed.run', '--nproc_per_node'], ['metaskill.distributed.train_launch', '--job', 'j.json'])
"""  # noqa: E501

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from metaskill.core.errors import MetaskillError
from metaskill.methods.sft import (
    ChatPair,
    SFTConfig,
    TrainResult,
    check_data,
    encode_pair,
    peak_rss_mb,
    save_adapter_atomically,
)

Launcher = Literal["accelerate", "torchrun"]
LAUNCHERS: tuple[str, ...] = ("accelerate", "torchrun")
MODULE = "metaskill.distributed.train_launch"


class LaunchError(MetaskillError):
    """The launched training failed; the previous adapter is unchanged."""


def launch_command(launcher: str, num_processes: int, args: Sequence[str],
                   extra: Sequence[str] = ()) -> list[str]:
    """The command line that starts ``num_processes`` training processes of this module.

    Args:
        launcher: ``accelerate`` (``accelerate launch``) or ``torchrun``.
        num_processes: processes on this machine (one per GPU; on CPU, any number).
        args: this module's own arguments (``--job PATH``).
        extra: more launcher options (e.g. ``--num_machines 2 --machine_rank 0
            --main_process_ip HOST`` for ``accelerate``).

    Raises:
        MetaskillError: an unknown launcher or a process count below 1.
    """
    if launcher not in LAUNCHERS:
        raise MetaskillError(f"unknown launcher '{launcher}'; use one of "
                             f"{', '.join(LAUNCHERS)}.")
    if num_processes < 1:
        raise MetaskillError(f"--num-processes must be >= 1, got {num_processes}.")
    py = sys.executable
    if launcher == "torchrun":
        return [py, "-m", "torch.distributed.run", "--nproc_per_node", str(num_processes),
                *extra, "-m", MODULE, *args]
    if not _has_gpu() and num_processes > 1:
        # `accelerate launch --cpu` starts one process (several need MPI and a hostfile)
        raise MetaskillError("accelerate launch starts one process on a machine without a "
                             "GPU; use --launcher torchrun for several CPU processes.")
    mode = ["--cpu"] if not _has_gpu() else (["--multi_gpu"] if num_processes > 1 else [])
    return [py, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            *mode, *extra, "-m", MODULE, *args]


def _has_gpu() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


# ---- the parent: write the job, launch, read the result --------------------------------
def launch_training(lm: Any, pairs: list[ChatPair], config: SFTConfig, out_dir: str | Path,
                    *, launcher: str = "accelerate", num_processes: int = 1,
                    extra: Sequence[str] = (), settings: Any = None,
                    init_adapter: str | Path | None = None, progress: bool = True,
                    on_step: Any = None, log: Callable[[str], None] | None = None,
                    timeout_s: float | None = None) -> TrainResult:
    """Train a LoRA adapter for the model behind ``lm`` in launched processes.

    The signature of :func:`metaskill.methods.sft.train_for_lm` (a ``Trainer``), plus the
    launcher's; ``lm`` may also be a base model path (an HF folder or a GGUF file).

    Raises:
        LaunchError: the launched processes failed (the last lines of their output say why).

    Example:
        >>> res = launch_training(load_lm("local"), pairs, SFTConfig(steps=2), "out",
        ...                       num_processes=2)  # doctest: +SKIP
    """
    from metaskill.lm.adapters import base_model_path, export_gguf

    base = str(lm) if isinstance(lm, (str, Path)) else base_model_path(lm)
    if config.batch_size < num_processes:
        raise MetaskillError(f"batch_size {config.batch_size} is below --num-processes "
                             f"{num_processes}: every process needs an example per step.")
    if on_step is not None and log is not None:
        log(f"training in {num_processes} launched process(es): no dev curve, no deadline")
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.job-", dir=out.parent))
    try:
        (work / "pairs.jsonl").write_text("".join(p.model_dump_json() + "\n" for p in pairs))
        job = {"base": base, "pairs": str(work / "pairs.jsonl"), "out": str(out),
               "config": config.model_dump(mode="json"), "progress": progress,
               "init_adapter": str(init_adapter) if init_adapter else None,
               "home": str(settings.home) if settings is not None else None}
        (work / "job.json").write_text(json.dumps(job, indent=1))
        cmd = launch_command(launcher, num_processes, ["--job", str(work / "job.json")], extra)
        if log is not None:
            log("launching: " + " ".join(cmd))
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, timeout=timeout_s,
                                  env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        except subprocess.TimeoutExpired:
            raise LaunchError(f"{launcher} training ({num_processes} processes) did not "
                              f"finish in {timeout_s:.0f} s; it was stopped.") from None
        if proc.returncode != 0:
            tail = " | ".join(proc.stdout.strip().splitlines()[-3:])[-600:]
            raise LaunchError(f"{launcher} training ({num_processes} processes) failed with "
                              f"exit code {proc.returncode}: {tail}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info = json.loads((out / "metaskill_train.json").read_text())
    if base.endswith(".gguf"):
        export_gguf(out, base_gguf=base)
    steps = int(info["steps"])
    return TrainResult(adapter_dir=out, steps=steps, losses=list(info["losses"]),
                       seconds=float(info["seconds"]),
                       seconds_per_step=float(info["seconds"]) / max(1, steps),
                       peak_rss_mb=float(info.get("peak_rss_mb", 0.0)),
                       cpu_seconds=float(info.get("cpu_seconds", 0.0)),
                       n_examples=int(info["n_examples"]))


def launched_trainer(launcher: str = "accelerate", num_processes: int = 1, *,
                     settings: Any = None, extra: Sequence[str] = ()) -> Callable[..., Any]:
    """A ``Trainer`` for :class:`~metaskill.methods.base.MethodResources` that launches.

    Example:
        >>> t = launched_trainer("torchrun", 2)
        >>> t.keywords["num_processes"]
        2
    """
    launch_command(launcher, num_processes, [])  # a bad launcher fails now, in one line
    return functools.partial(launch_training, launcher=launcher, num_processes=num_processes,
                             settings=settings, extra=tuple(extra))


# ---- each launched process ----------------------------------------------------------------
def train_process(job: dict[str, Any]) -> None:
    """One process of the launched training (see the module docstring, steps 2-4)."""
    import torch
    from accelerate import Accelerator
    from peft import LoraConfig, PeftModel, get_peft_model

    from metaskill.core.settings import Settings
    from metaskill.lm.hf import load_hf_model
    from metaskill.methods.sft import _batches, _collate, loss_progress

    acc = Accelerator(cpu=not torch.cuda.is_available())
    config = SFTConfig.model_validate(job["config"])
    env = dict(os.environ, **({"METASKILL_HOME": job["home"]} if job.get("home") else {}))
    if config.threads:
        torch.set_num_threads(config.threads)
    with acc.main_process_first():  # a GGUF base is converted to its HF copy once
        model, tok, _ = load_hf_model(job["base"], settings=Settings.from_env(env))
    pairs = [ChatPair.model_validate_json(line)
             for line in Path(job["pairs"]).read_text().splitlines() if line.strip()]
    encoded = [encode_pair(tok, p) for p in pairs]
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    check_data(encoded, config.max_seq_len, context)
    total = config.steps or max(1, math.ceil((config.epochs or 1.0) * len(encoded)
                                             / config.batch_size))
    torch.manual_seed(config.seed)
    if job.get("init_adapter"):
        peft_model = PeftModel.from_pretrained(model, job["init_adapter"], is_trainable=True)
    else:
        peft_model = get_peft_model(model, LoraConfig(
            r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
            target_modules=list(config.target_modules), bias="none", task_type="CAUSAL_LM"))
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    ddp, opt = acc.prepare(peft_model, opt)
    plan = _batches(len(encoded), config.batch_size, total, random.Random(config.seed))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    rank, world = acc.process_index, acc.num_processes
    losses: list[float] = []
    t0, c0 = time.perf_counter(), time.process_time()
    bar = loss_progress(bool(job.get("progress")) and acc.is_main_process)
    with bar:
        bar_id = bar.add_task(f"LoRA training ({world} processes)", total=total,
                              loss=float("nan"))
        for step, idx in enumerate(plan):
            for g in opt.param_groups:
                g["lr"] = (config.learning_rate * (step + 1) / config.warmup_steps
                           if config.warmup_steps and step < config.warmup_steps
                           else config.learning_rate)
            batch = {k: v.to(acc.device) for k, v in
                     _collate([encoded[i] for i in idx[rank::world]], pad).items()}
            loss = ddp(**batch).loss
            value = float(acc.reduce(loss.detach(), reduction="mean"))
            if not math.isfinite(value):
                raise LaunchError(f"loss became {value} at step {step + 1}; lower the "
                                  "learning rate. Nothing was saved.")
            opt.zero_grad(set_to_none=True)
            acc.backward(loss)
            if config.grad_clip:
                acc.clip_grad_norm_(params, config.grad_clip)
            opt.step()
            losses.append(value)
            bar.update(bar_id, advance=1, loss=value)
    acc.wait_for_everyone()
    if acc.is_main_process:
        unwrapped = acc.unwrap_model(ddp)
        unwrapped.eval()
        info = {"config": config.model_dump(mode="json"), "steps": total, "losses": losses,
                "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
                "n_examples": len(encoded), "init_adapter": job.get("init_adapter"),
                "processes": world, "launched": True, "peak_rss_mb": peak_rss_mb(),
                "distributed_type": str(acc.distributed_type), "ddp": ddp is not unwrapped}
        save_adapter_atomically(unwrapped, Path(job["out"]), info)
    acc.wait_for_everyone()
    acc.end_training()


def main(argv: list[str] | None = None) -> None:
    """``python -m metaskill.distributed.train_launch --job JOB.json`` (what the launcher
    runs in every process)."""
    parser = argparse.ArgumentParser(prog=MODULE, description=main.__doc__)
    parser.add_argument("--job", required=True, help="the job file launch_training wrote")
    args = parser.parse_args(argv)
    train_process(json.loads(Path(args.job).read_text()))


if __name__ == "__main__":
    main()
