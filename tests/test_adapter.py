"""Adapters: PEFT save, GGUF LoRA export layout, and HF vs llama.cpp parity (real model)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("gguf")

from metaskill.core.types import Message
from metaskill.lm.adapters import _permute_rows, export_gguf
from metaskill.methods.sft import ChatPair, SFTConfig, train_lora


def test_qk_permutation_inverts_transformers_gguf_loader() -> None:
    """transformers un-permutes q/k when it loads a GGUF; our export must redo exactly that."""
    import numpy as np
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    proc = LlamaTensorProcessor(config={"num_attention_heads": 9, "num_key_value_heads": 3})
    rng = np.random.default_rng(0)
    q = rng.normal(size=(9 * 8, 5)).astype(np.float32)
    k = rng.normal(size=(3 * 8, 5)).astype(np.float32)
    assert np.array_equal(proc._reverse_permute_weights(_permute_rows(q, 9), 9, 9), q)
    assert np.array_equal(proc._reverse_permute_weights(_permute_rows(k, 3), 9, 3), k)
    assert not np.array_equal(_permute_rows(q, 9), q)


def _tiny_adapter(tmp_path: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from metaskill.lm.files import embedded_gguf_path

    try:
        g = embedded_gguf_path()
    except Exception:
        pytest.skip("embedded model not installed")
    tok = AutoTokenizer.from_pretrained(g.parent, gguf_file=g.name)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=128)
    pairs = [ChatPair(id="a", messages=[Message(role="user", content="hi")], answer="yo")]
    out = tmp_path / "adapter"
    train_lora(LlamaForCausalLM(cfg), tok, pairs,
               SFTConfig(rank=4, alpha=8, steps=2, target_modules=["q_proj", "k_proj",
                                                                   "v_proj", "down_proj"]),
               out, progress=False)
    return out


def test_export_gguf_layout(tmp_path: Path) -> None:
    from gguf import GGUFReader

    adir = _tiny_adapter(tmp_path)
    assert (adir / "adapter_config.json").exists()
    path = export_gguf(adir, architecture="llama", n_head=4, n_head_kv=2)
    assert path == adir / "adapter.gguf"
    r = GGUFReader(str(path))

    def s(key: str) -> str:
        f = r.fields[key]
        return bytes(f.parts[f.data[0]]).decode()

    assert s("general.type") == "adapter"
    assert s("general.architecture") == "llama"
    assert s("adapter.type") == "lora"
    alpha = r.fields["adapter.lora.alpha"]
    assert float(alpha.parts[alpha.data[0]][0]) == 8.0
    shapes = {t.name: [int(x) for x in t.shape] for t in r.tensors}
    assert len(shapes) == 2 * 2 * 4  # 2 layers x 4 modules x (a, b)
    # GGUF lists dims innermost first: lora_a is [in, rank], lora_b is [rank, out].
    assert shapes["blk.0.attn_q.weight.lora_a"] == [32, 4]
    assert shapes["blk.0.attn_q.weight.lora_b"] == [4, 32]
    assert shapes["blk.1.attn_k.weight.lora_b"] == [4, 16]
    assert shapes["blk.1.ffn_down.weight.lora_a"] == [64, 4]
    assert not [p for p in adir.iterdir() if p.name.startswith(".")]


def test_export_refuses_unknown_modules(tmp_path: Path) -> None:
    import json

    from metaskill.core.errors import MethodError

    adir = _tiny_adapter(tmp_path)
    with pytest.raises(MethodError, match="needs the base model's GGUF"):
        export_gguf(adir)
    cfg = json.loads((adir / "adapter_config.json").read_text())
    cfg["use_dora"] = True
    (adir / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(MethodError, match="plain LoRA only"):
        export_gguf(adir, architecture="llama", n_head=4, n_head_kv=2)


# ---- parity on the real embedded model -------------------------------------------------------
WORDS = ("apple river stone light cloud green music paper table horse bread chair water "
         "plant smile dream brick storm tiger lemon candle forest silver button garden "
         "rocket pencil bottle window marble").split()
HELD_OUT = ("ocean planet violin copper basket desert falcon ginger hammer island jacket "
            "kettle ladder magnet napkin orange parrot quartz rabbit saddle tunnel velvet "
            "walnut yellow zipper anchor bamboo cactus dragon engine feather glider harbor "
            "igloo jungle kitten lizard meadow needle oyster pepper quiver ribbon spider "
            "turtle umpire valley wizard yogurt zebra").split()


@pytest.mark.slow
def test_hf_and_llama_cpp_adapter_agree(tmp_path: Path, tmp_home: Path) -> None:
    """Greedy outputs of HF+adapter and llama.cpp+adapter agree on >= 90% of 50 held-out
    prompts, and the adapter really changes llama.cpp's outputs (a no-op export would not).

    transformers dequantizes the GGUF and computes in fp32, so llama.cpp is given the same
    weights (:func:`dequantize_gguf`); on the Q4_1 file itself the two backends differ by
    quantization noise alone (the base model, no adapter, agrees on 25/50 of these prompts
    there and 48/50 on the F32 copy: ``benchmarks/backend_parity.py``), so the Q4_1 count is
    checked only against a floor.
    """
    pytest.importorskip("llama_cpp")
    from metaskill.core.types import Request
    from metaskill.lm.adapters import dequantize_gguf
    from metaskill.lm.files import embedded_gguf_path
    from metaskill.lm.hf import HFLM
    from metaskill.lm.llama import LlamaLM

    gguf_path = embedded_gguf_path()
    lm = HFLM(gguf_path)
    pairs = [ChatPair(id=w, messages=[Message(role="user", content=f"Reverse the word: {w}")],
                      answer=w[::-1]) for w in WORDS]
    cfg = SFTConfig(rank=8, alpha=16, steps=30, batch_size=8, learning_rate=2e-3, seed=0)
    res = train_lora(lm.model, lm.tokenizer, pairs, cfg, tmp_path / "adapter", progress=False)
    gguf_adapter = export_gguf(res.adapter_dir, base_gguf=gguf_path)
    hf_tuned = HFLM(gguf_path, adapter=res.adapter_dir)  # fresh base + saved adapter
    f32_path = dequantize_gguf(gguf_path, tmp_path / "base-f32.gguf")

    assert len(HELD_OUT) == 50 and not set(HELD_OUT) & set(WORDS)
    reqs = [Request(messages=[Message(role="user", content=f"Reverse the word: {w}")],
                    max_tokens=12) for w in HELD_OUT]
    hf_out = [c.text.strip() for c in hf_tuned.complete(reqs, cache=False)]

    def cpp(path: Path, lora: Path | None) -> list[str]:
        # One thread: llama.cpp's spinning worker threads crawl on an oversubscribed machine.
        m = LlamaLM(path, lora_path=lora, n_threads=1)
        try:
            return [c.text.strip() for c in m.complete(reqs, cache=False)]
        finally:
            m.close()

    f32_out = cpp(f32_path, gguf_adapter)
    q4_out = cpp(gguf_path, gguf_adapter)
    base_out = cpp(gguf_path, None)
    agree = sum(a == b for a, b in zip(hf_out, f32_out, strict=True))
    agree_q4 = sum(a == b for a, b in zip(hf_out, q4_out, strict=True))
    changed = sum(a != b for a, b in zip(base_out, q4_out, strict=True))
    print(f"HF+adapter vs llama.cpp+adapter: F32 base {agree}/50, Q4_1 base {agree_q4}/50; "
          f"adapter changed {changed}/50 llama.cpp outputs")
    assert changed >= 25, "the GGUF adapter barely changed llama.cpp's outputs"
    assert agree >= 45, list(zip(hf_out, f32_out, strict=True))
    # Quantization noise only; a broken export (wrong tensor names, missing q/k
    # permutation) agrees far less. Measured 45/50 (and 50/50 on the F32 copy).
    assert agree_q4 >= 35, list(zip(hf_out, q4_out, strict=True))


def test_dequantize_gguf_bad_input(tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    from metaskill.core.errors import InvalidParameterError, ModelNotFoundError
    from metaskill.lm.adapters import dequantize_gguf

    with pytest.raises(InvalidParameterError, match="dtype must be one of"):
        dequantize_gguf(tmp_path / "m.gguf", tmp_path / "out.gguf", dtype="q8")
    with pytest.raises(ModelNotFoundError, match="GGUF model file not found"):
        dequantize_gguf(tmp_path / "m.gguf", tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()
