"""PSEC library: router weights, and composition equal to the weighted sum of LoRA updates."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from metaskill.methods.lora_library import Library, SkillAdapter, route_weights


def test_route_weights() -> None:
    c = np.array([[1.0, 0.0], [0.0, 1.0]])
    w = route_weights(np.array([2.0, 1.0]), c, temperature=1.0)
    assert w.sum() == pytest.approx(1.0) and w[0] > w[1]
    sharp = route_weights(np.array([2.0, 1.0]), c, temperature=0.01)
    assert sharp[0] == pytest.approx(1.0)
    flat = route_weights(np.array([2.0, 1.0]), c, temperature=1e6)
    assert flat == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError, match="temperature must be > 0"):
        route_weights(np.array([1.0, 0.0]), c, 0.0)


def test_composition_is_weighted_sum_of_updates(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from metaskill.core.types import Message
    from metaskill.lm.files import embedded_gguf_path
    from metaskill.lm.hf import HFLM
    from metaskill.methods.lora_library import ComposedLM
    from metaskill.methods.sft import ChatPair, SFTConfig, train_lora

    try:
        g = embedded_gguf_path()
    except Exception:
        pytest.skip("embedded model not installed")
    tok = AutoTokenizer.from_pretrained(g.parent, gguf_file=g.name)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=128, initializer_range=0.5)
    torch.manual_seed(0)
    base = LlamaForCausalLM(cfg).eval()
    dirs = {}
    for i, name in enumerate(("upper", "lower")):
        pairs = [ChatPair(id=name, messages=[Message(role="user", content=f"{name} {i}")],
                          answer=name * 2)]
        train_lora(copy.deepcopy(base), tok, pairs,
                   SFTConfig(rank=4, alpha=8, steps=3, learning_rate=5e-2, seed=i,
                             target_modules=["q_proj", "v_proj"]),
                   tmp_path / name, progress=False)
        dirs[name] = tmp_path / name
    lib = Library(adapters=[SkillAdapter(skill=n, adapter_dir=str(d), centroid=c)
                            for (n, d), c in zip(dirs.items(), ([1.0, 0.0], [0.0, 1.0]),
                                                 strict=True)])
    ids = torch.tensor([tok("hello there")["input_ids"]])

    def composed_logits(mode: str, **kw: object) -> torch.Tensor:
        lm = HFLM("tiny", model=copy.deepcopy(base), tokenizer=tok)
        comp = ComposedLM(lm, lib, embed=lambda t: np.array([[1.0, 0.2]]), mode=mode, **kw)
        comp._apply(comp.weights("hello there"))
        with torch.no_grad():
            return comp.model(input_ids=ids).logits

    def merged_logits(w: dict[str, float]) -> torch.Tensor:
        from safetensors.torch import load_file

        m = copy.deepcopy(base)
        mods = dict(m.named_modules())
        for name, d in dirs.items():
            sd = load_file(str(d / "adapter_model.safetensors"))
            for k, a in sd.items():
                if ".lora_A." not in k:
                    continue
                b = sd[k.replace("lora_A", "lora_B")]
                path = k.replace("base_model.model.", "").replace(".lora_A.weight", "")
                with torch.no_grad():
                    mods[path].weight += w[name] * 2.0 * (b @ a)  # alpha/r = 8/4
        with torch.no_grad():
            return m(input_ids=ids).logits

    single = composed_logits("single", skill="upper")
    assert torch.allclose(single, merged_logits({"upper": 1.0, "lower": 0.0}), atol=1e-4)
    uniform = composed_logits("uniform")
    assert torch.allclose(uniform, merged_logits({"upper": 0.5, "lower": 0.5}), atol=1e-4)
    routed = composed_logits("routed", temperature=0.5)
    w = route_weights(np.array([1.0, 0.2]), np.array([[1.0, 0.0], [0.0, 1.0]]), 0.5)
    assert torch.allclose(routed, merged_logits({"upper": w[0], "lower": w[1]}), atol=1e-4)
    assert not torch.allclose(single, uniform, atol=1e-4)
