"""Skill localization by grafting (metalearn/localize.py) on tiny torch models: exact mask
sparsity, grafts at the two ends, the mask optimisation, Jaccard overlap, saved masks."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="grafting needs torch (the train extra)")

from metaskill.metalearn.localize import (  # noqa: E402
    LocalizeConfig,
    LocalizeError,
    Mask,
    compare_masks,
    deltas,
    gain_recovered,
    graft_into,
    jaccard,
    learn_mask,
    n_for,
    pick_level,
    random_jaccard,
    top_movement,
)


class Tiny(torch.nn.Module):
    """Two layers, a bias and a 1-d weight: tensors of several shapes; ``.loss`` like HF."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.a = torch.nn.Linear(7, 5)
        self.b = torch.nn.Linear(5, 1, bias=False)
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> SimpleNamespace:
        out = self.b(torch.tanh(self.a(x))).squeeze(-1) * self.scale
        return SimpleNamespace(loss=((out - y) ** 2).mean())


def _pair() -> tuple[Tiny, Tiny]:
    base, ft = Tiny(0), Tiny(0)
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return base, ft


def _batches(step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    x = torch.randn(16, 7, generator=g)
    return {"x": x, "y": x[:, 0] - x[:, 1]}


@pytest.mark.parametrize("sparsity", [0.01, 0.1, 0.33, 0.5, 1.0])
def test_mask_sparsity_is_exact(sparsity: float) -> None:
    base, ft = _pair()
    theta, delta = deltas(base, ft)
    n = sum(p.numel() for p in base.parameters())
    k = n_for(sparsity, n)
    assert k == round(sparsity * n)
    cfg = LocalizeConfig(sparsities=[sparsity], steps=3, seed=1)
    res = learn_mask(ft, theta, delta, k, _batches, cfg, progress=False)
    for m in (res.mask, res.initial):
        assert m.k == k and m.n_params == n
        assert len(np.unique(m.indices)) == k and m.indices.min(initial=0) >= 0
        assert m.indices.max(initial=0) < n
        assert sum(len(v) for v in m.per_tensor().values()) == k


def test_n_for_counts_parameters() -> None:
    assert n_for(1e-5, 134_515_008) == 1345
    assert n_for(0.01, 100) == 1 and n_for(0.004, 100) == 0


def test_graft_ends_are_base_and_finetuned() -> None:
    base, ft = _pair()
    theta, delta = deltas(base, ft)
    want_ft = {n: p.detach().clone() for n, p in ft.named_parameters()}
    n = sum(d.numel() for d in delta.values())
    names, shapes = tuple(delta), tuple(tuple(d.shape) for d in delta.values())
    work = Tiny(5)  # any model of the same shape
    graft_into(work, theta, delta, Mask(names, shapes, np.arange(n, dtype=np.int64)))
    for name, p in work.named_parameters():
        assert torch.allclose(p, want_ft[name], atol=1e-6)
    graft_into(work, theta, delta, Mask(names, shapes, np.empty(0, dtype=np.int64)))
    for name, p in work.named_parameters():
        assert torch.equal(p, dict(base.named_parameters())[name])
    # a partial graft changes exactly the masked entries
    m = top_movement(delta, 6)
    graft_into(work, theta, delta, m)
    flat_w = torch.cat([p.detach().reshape(-1) for p in work.parameters()])
    flat_b = torch.cat([p.detach().reshape(-1) for p in base.parameters()])
    assert sorted(torch.nonzero(flat_w != flat_b).reshape(-1).tolist()) == m.indices.tolist()


def test_top_movement_picks_largest_deltas() -> None:
    delta = {"w": torch.tensor([[0.1, -5.0], [2.0, 0.0]]), "v": torch.tensor([3.0, -0.2])}
    m = top_movement(delta, 3)
    assert m.indices.tolist() == [1, 2, 4]  # -5.0, 2.0 in w; 3.0 in v (offset 4)
    assert {k: v.tolist() for k, v in m.per_tensor().items()} == {"w": [1, 2], "v": [0]}


class Linear(torch.nn.Module):
    """y = w . x, where only inputs 0-4 are ever non-zero."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(20))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(loss=((x @ self.w - y) ** 2).mean())


def test_mask_optimisation_moves_to_the_parameters_that_matter() -> None:
    """The largest deltas sit on inputs that are always zero (useless); the small ones on
    the inputs the task uses. The top-|delta| start picks the useless ones; the learned
    mask must end on the useful ones -- and so lower the task loss."""
    target = torch.zeros(20)
    target[:5] = 0.5
    base, ft = Linear(), Linear()
    with torch.no_grad():
        ft.w.copy_(target)
        ft.w[10:15] = 5.0  # big, irrelevant movement

    def batches(step: int) -> dict[str, torch.Tensor]:
        x = torch.zeros(32, 20)
        x[:, :5] = torch.randn(32, 5, generator=torch.Generator().manual_seed(step))
        return {"x": x, "y": x @ target}

    theta, delta = deltas(base, ft)
    cfg = LocalizeConfig(sparsities=[0.25], steps=12, learning_rate=1.0, seed=0)
    res = learn_mask(ft, theta, delta, 5, batches, cfg, progress=False)
    assert res.initial.indices.tolist() == [10, 11, 12, 13, 14]
    assert res.mask.indices.tolist() == [0, 1, 2, 3, 4]
    assert res.kept_from_initial == 0.0
    work = Linear()

    def loss(m: Mask) -> float:
        return float(graft_into(work, theta, delta, m)(**batches(99)).loss.detach())

    assert loss(res.mask) < 1e-8 < loss(res.initial)


def test_jaccard_and_random_baseline() -> None:
    def m(*i: int) -> Mask:
        return Mask(("w",), ((100,),), np.array(i, dtype=np.int64))

    assert jaccard(m(1, 2, 3, 4), m(3, 4, 5, 6)) == pytest.approx(2 / 6)
    assert jaccard(m(1, 2), m(1, 2)) == 1.0 and jaccard(m(1), m(2)) == 0.0
    assert jaccard(m(), m()) == 1.0
    with pytest.raises(LocalizeError, match="different parameters"):
        jaccard(m(1), Mask(("v",), ((100,),), np.array([1])))
    rng = np.random.default_rng(0)
    sims = [jaccard(m(*rng.choice(100, 30, replace=False)), m(*rng.choice(100, 30, replace=False)))
            for _ in range(300)]
    assert abs(np.mean(sims) - random_jaccard(30, 100)) < 0.02


def test_mask_save_load_and_compare(tmp_path) -> None:
    base, ft = _pair()
    _theta, delta = deltas(base, ft)
    for sub, k in (("a", 5), ("b", 8)):
        d = tmp_path / sub
        d.mkdir()
        top_movement(delta, k).save(d / "mask_0.1.npz")
        (d / "localize.json").write_text(json.dumps({
            "schema_version": 1, "levels": [{"sparsity": 0.1, "mask": "mask_0.1.npz"}]}))
    back = Mask.load(tmp_path / "a" / "mask_0.1.npz")
    assert np.array_equal(back.indices, top_movement(delta, 5).indices)
    assert back.names == tuple(delta) and back.shapes == tuple(tuple(d.shape) for d in
                                                               delta.values())
    rows = compare_masks(tmp_path / "a", tmp_path / "b")
    assert rows[0]["sparsity"] == 0.1 and rows[0]["jaccard"] == pytest.approx(5 / 8)


def test_deltas_refuse_other_architectures() -> None:
    with pytest.raises(LocalizeError, match="different parameters"):
        deltas(Tiny(), Linear())


def test_gain_and_level_choice() -> None:
    assert gain_recovered(0.5, 0.0, 1.0) == 0.5
    assert gain_recovered(0.5, 0.6, 0.6) is None  # no gain to recover
    data = {"levels": [{"sparsity": 1e-5, "gain": 0.2}, {"sparsity": 1e-4, "gain": 0.7}]}
    assert pick_level(data)["sparsity"] == 1e-4  # none reaches 90%: the best
    with pytest.raises(LocalizeError):
        pick_level({"levels": []})


def test_config_validation() -> None:
    assert LocalizeConfig(sparsities=[1e-3, 1e-5, 1e-3]).sparsities == [1e-5, 1e-3]
    with pytest.raises(ValueError, match="sparsities"):
        LocalizeConfig(sparsities=[0.0])


@pytest.mark.slow
def test_graft_saves_as_hf_and_gguf_that_llama_cpp_serves(tmp_path) -> None:
    """A graft of the embedded SmolLM2 (a few perturbed q/k/embedding/norm entries, all of
    them grafted) saves as an HF folder and a GGUF whose tensors are the HF ones in
    llama.cpp's layout; llama.cpp then answers exactly as transformers does, and the Solver
    JSON names the GGUF (what `serve --solver` loads)."""
    pytest.importorskip("transformers", reason="needs the train extra")
    pytest.importorskip("llama_cpp", reason="needs the local extra")
    gguf = pytest.importorskip("gguf", reason="needs the train extra")
    import copy

    from metaskill.core.errors import ModelNotFoundError
    from metaskill.core.types import Request
    from metaskill.lm import load_lm
    from metaskill.lm.files import embedded_gguf_path
    from metaskill.lm.hf import HFLM, load_hf_model
    from metaskill.metalearn.localize import _permute_rows, save_graft
    from metaskill.tasks import get_task

    try:
        base_gguf = embedded_gguf_path()
    except ModelNotFoundError:
        pytest.skip("embedded model not installed")
    base, tok, _info = load_hf_model(base_gguf)
    ft = copy.deepcopy(base)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name in ("model.layers.2.self_attn.q_proj.weight",
                     "model.layers.2.self_attn.k_proj.weight", "model.embed_tokens.weight",
                     "model.layers.4.input_layernorm.weight"):
            p = dict(ft.named_parameters())[name]
            idx = torch.randint(0, p.numel(), (50,), generator=g)
            p.view(-1)[idx] += 0.05 * torch.randn(50, generator=g)
    theta, delta = deltas(base, ft)
    k = int(sum(int((d != 0).sum()) for d in delta.values()))
    work = copy.deepcopy(base)
    graft_into(work, theta, delta, top_movement(delta, k))
    for (name, p), q in zip(work.named_parameters(), ft.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), name
    task = get_task("word_reversal", n_train=2, n_dev=1, n_test=1)
    saved = save_graft(work, tok, tmp_path / "graft", task=task, base_gguf=base_gguf,
                       max_tokens=24)
    solver = json.loads((tmp_path / "graft" / "solver.json").read_text())
    assert solver["model"] == f"gguf:{(tmp_path / 'graft' / 'model.gguf').resolve()}"
    assert solver["kind"] == "zero-shot" and solver["task"] == "word_reversal"
    assert saved["spec"] == solver["model"]
    tensors = {t.name: t for t in gguf.GGUFReader(str(tmp_path / "graft" / "model.gguf")).tensors}
    sd = work.state_dict()
    q = sd["model.layers.2.self_attn.q_proj.weight"].numpy()
    n_head, n_kv = work.config.num_attention_heads, work.config.num_key_value_heads
    assert np.array_equal(np.asarray(tensors["blk.2.attn_q.weight"].data), _permute_rows(q, n_head))
    kk = sd["model.layers.2.self_attn.k_proj.weight"].numpy()
    assert np.array_equal(np.asarray(tensors["blk.2.attn_k.weight"].data), _permute_rows(kk, n_kv))
    assert np.array_equal(np.asarray(tensors["token_embd.weight"].data),
                          sd["model.embed_tokens.weight"].numpy())
    assert np.array_equal(np.asarray(tensors["blk.4.attn_norm.weight"].data),
                          sd["model.layers.4.input_layernorm.weight"].numpy())
    ask = Request(messages=[{"role": "user", "content": "Name three colours."}],
                  max_tokens=16, temperature=0.0)
    served = load_lm(saved["spec"], cache=False)
    try:
        via_llama = served.complete([ask])[0].text
    finally:
        served.close()
    via_hf = HFLM(tmp_path / "graft").complete([ask], cache=False)[0].text
    assert via_llama == via_hf and via_llama
