"""Meta-DT, Prompt-DT and multi-task DT (metalearn/rl/meta_dt.py, issue 25)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from metaskill.metalearn.rl.meta_dt import (
    MetaDTConfig,
    MetaDTError,
    complementary_segment,
    context_windows,
    prepare,
)
from metaskill.metalearn.rl.metaworld import Episode


# ---- the complementary prompt on synthetic errors (numpy only) ---------------------------
def test_the_complementary_segment_is_the_largest_error_window():
    rng = np.random.default_rng(0)
    for _ in range(50):
        errors = rng.random(40)
        k = int(rng.integers(1, 8))
        sums = [errors[p:p + k].sum() for p in range(40 - k + 1)]
        assert complementary_segment(errors, k) == int(np.argmax(sums))


def test_the_complementary_segment_respects_min_start_and_samples_by_error():
    errors = np.zeros(30)
    errors[1:4] = 9.0  # before min_start: not eligible
    errors[20:23] = 1.0
    assert complementary_segment(errors, 3) == 1
    assert complementary_segment(errors, 3, min_start=4) == 20
    rng = np.random.default_rng(0)
    picks = [complementary_segment(errors, 3, min_start=4, rng=rng) for _ in range(300)]
    assert set(picks) <= set(range(18, 23))  # only windows that overlap the error
    assert max(set(picks), key=picks.count) == 20  # the full-error window most often


def test_context_windows_hold_the_transitions_before_each_step():
    trans = np.arange(12, dtype=np.float32).reshape(2, 6, 1)  # 2 episodes, 6 steps
    w = context_windows(trans, 3)
    assert w.shape == (2, 6, 3, 1)
    assert w[0, 0, :, 0].tolist() == [0, 0, 0]  # nothing before step 0
    assert w[0, 2, :, 0].tolist() == [0, 0, 1]  # zeros, then transitions 0 and 1
    assert w[1, 5, :, 0].tolist() == [8, 9, 10]  # transitions 2, 3, 4 of episode 2


def _synthetic(n_tasks=2, per_task=3, steps=24, seed=0):
    """Point-mass episodes: reward = 10 - distance to the task's goal (hidden)."""
    rng = np.random.default_rng(seed)
    eps = []
    for task in range(n_tasks):
        goal = rng.uniform(-1, 1, 2)
        for _ in range(per_task):
            obs = np.zeros((steps + 1, 4), np.float32)
            acts = rng.uniform(-1, 1, (steps, 2)).astype(np.float32)
            for t in range(steps):
                obs[t + 1, :2] = obs[t, :2] + 0.1 * acts[t]
            rew = (10 - np.linalg.norm(obs[1:, :2] - goal, axis=1)).astype(np.float32)
            eps.append(Episode(f"train-{task:03d}-pm", obs, acts, rew, np.zeros(steps, bool)))
    return eps


def test_prepare_scales_returns_to_go_and_finds_the_expert():
    eps = _synthetic()
    eps[1].noise = -1.0  # marks episode 1 as the least noisy of task 0
    data = prepare(eps)
    assert data.tasks == ["train-000-pm", "train-001-pm"]
    assert data.expert[0] == 1
    assert data.rtg[0, 0] == pytest.approx(eps[0].rewards.sum() / data.scale, rel=1e-5)
    assert data.rtg[0, -1] == pytest.approx(eps[0].rewards[-1] / data.scale, rel=1e-5)


# ---- with torch: the world model and the batches ------------------------------------------
@pytest.fixture
def one_thread():
    """Small models run fastest on one torch thread (restored after the test)."""
    torch = pytest.importorskip("torch", reason="Meta-DT needs torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(before)


def test_the_world_models_error_points_the_prompt_at_the_surprise(one_thread):
    torch = one_thread
    from metaskill.metalearn.rl.meta_dt import (
        _nets,
        transitions,
        world_model_outputs,
        world_model_step,
    )

    eps = _synthetic(n_tasks=2, per_task=6)
    eps[4].rewards[10:13] += 6.0  # a surprise the world model cannot predict
    data = prepare(eps)
    cfg = MetaDTConfig(wm_hidden=32, context_dim=4, context_horizon=3, wm_batch_size=64,
                       wm_lr=3e-3)
    torch.manual_seed(0)
    wm = _nets()[0](4, 2, cfg)
    opt = torch.optim.Adam(wm.parameters(), lr=cfg.wm_lr)
    trans = transitions(data.obs, data.actions, data.rewards)
    losses = [world_model_step(wm, opt, data, trans, cfg, s) for s in range(300)]
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20])
    z, err = world_model_outputs(wm, data.obs, data.actions, data.rewards, cfg)
    assert z.shape == (12, 24, 4) and err.shape == (12, 24)
    assert complementary_segment(err[4], 3, min_start=3) in (9, 10, 11)


def test_batches_prompt_each_variant_as_the_paper_does():
    pytest.importorskip("torch", reason="Meta-DT needs torch")
    from metaskill.metalearn.rl.meta_dt import _Aux, dt_batch

    data = prepare(_synthetic())
    errors = np.zeros((6, 24), np.float32)
    errors[:, 15:18] = 1.0
    cfg = MetaDTConfig(batch_size=8, horizon=6, prompt_length=3, prompt_sampling=False)
    b = dt_batch(data, _Aux(z=np.zeros((6, 24, 16), np.float32), errors=errors),
                 replace(cfg, prompt_drop=0.0), 0)
    assert b["s"].shape == (8, 6, 4) and b["z"].shape == (8, 6, 16)
    ps, _, _, pt = b["prompt"]
    assert ps.shape == (8, 3, 4) and (pt == np.arange(15, 18)).all()
    pd = dt_batch(data, _Aux(), replace(cfg, variant="prompt-dt"), 0)
    assert (pd["prompt"][3] == np.arange(21, 24)).all()  # the expert's last segment
    assert "z" not in pd
    assert "prompt" not in dt_batch(data, _Aux(), replace(cfg, variant="dt"), 0)
    again = dt_batch(data, _Aux(), replace(cfg, variant="dt"), 0)
    np.testing.assert_array_equal(again["s"], dt_batch(data, _Aux(), replace(
        cfg, variant="dt"), 0)["s"])  # a pure function of (seed, step)


def test_a_bad_configuration_is_a_one_line_error():
    with pytest.raises(MetaDTError, match="unknown variant"):
        MetaDTConfig(variant="gato")
    with pytest.raises(MetaDTError, match="prompt_drop"):
        MetaDTConfig(prompt_drop=1.0)


# ---- real Meta-World: smoke runs and resume (slow) -----------------------------------------
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    pytest.importorskip("torch", reason="Meta-DT needs torch")
    pytest.importorskip("mujoco", reason="Meta-World needs the metarl extra (mujoco)")
    pytest.importorskip("metaworld", reason="Meta-World needs the metarl extra (metaworld)")
    from metaskill.metalearn.rl.metaworld import CollectConfig, collect_dataset

    root = tmp_path_factory.mktemp("mw")
    collect_dataset(CollectConfig(episodes=3, noise=0.8, max_steps=20, n_train=2, n_test=1),
                    root, progress=False)
    return root


SMOKE = MetaDTConfig(steps=6, wm_steps=4, batch_size=4, horizon=5, prompt_length=3,
                     d_model=16, wm_hidden=16, context_dim=4, eval_every=3, eval_train_tasks=1,
                     ckpt_every=2)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["meta-dt", "prompt-dt", "dt"])
def test_each_trainer_runs_evaluates_and_reports(tiny_data, tmp_path, variant):
    from metaskill.metalearn.rl.meta_dt import train_meta_dt

    m = train_meta_dt(tiny_data, tmp_path, replace(SMOKE, variant=variant), progress=False)
    assert m["complete"] and m["step"] == 6
    assert [e["step"] for e in m["evals"]] == [3, 6]
    assert 0.0 <= m["evals"][-1]["test"]["success"] <= 1.0
    assert len(m["evals"][-1]["test"]["tasks"]) == 1
    assert all(np.isfinite(loss) for _, loss in m["losses"])
    assert bool(m["wm_losses"]) == (variant == "meta-dt")
    if variant == "meta-dt":  # the prompt came from its own first episode
        assert "first_success" in m["evals"][-1]["test"]
    stored = json.loads((tmp_path / "manifest.json").read_text())
    assert stored["schema_version"] == 1 and stored["variant"] == variant
    html = (tmp_path / "report.html").read_text()
    assert "<svg" in html and "Success rate" in html


@pytest.mark.slow
def test_a_resumed_run_reaches_the_same_weights(tiny_data, tmp_path):
    import torch

    from metaskill.metalearn.rl.meta_dt import train_meta_dt

    cfg = replace(SMOKE, eval_every=0)
    train_meta_dt(tiny_data, tmp_path / "straight", cfg, progress=False)
    first = train_meta_dt(tiny_data, tmp_path / "resumed", replace(cfg, steps=3),
                          progress=False)
    assert first["step"] == 3 and first["wm_step"] == 4
    again = train_meta_dt(tiny_data, tmp_path / "resumed", cfg, progress=False)
    assert again["step"] == 6 and [e["step"] for e in again["evals"]] == [3, 6]
    a = torch.load(tmp_path / "straight" / "state.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "state.pt", weights_only=True)
    for part in ("wm", "dt"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), f"{part}.{name}"
    with pytest.raises(MetaDTError, match="horizon"):
        train_meta_dt(tiny_data, tmp_path / "resumed", replace(cfg, horizon=4), progress=False)


@pytest.mark.parametrize("variant", ["meta-dt", "dt"])
def test_the_actor_feeds_the_transformer_what_training_feeds_it(one_thread, variant):
    """Acting step by step (returns-to-go counted down from the target, z computed online
    from the last transitions) gives the transformer the same tokens as a training window."""
    torch = one_thread
    from metaskill.metalearn.rl.meta_dt import Bundle, DTActor, _nets, world_model_outputs

    data = prepare(_synthetic(n_tasks=1, per_task=2, steps=12))
    cfg = MetaDTConfig(variant=variant, horizon=5, context_horizon=3, context_dim=4,
                       d_model=16, wm_hidden=16, dropout=0.0)
    torch.manual_seed(0)
    wm_cls, dt_cls = _nets()
    wm, dt = wm_cls(4, 2, cfg).eval(), dt_cls(4, 2, data.T, cfg).eval()
    z, _ = world_model_outputs(wm, data.obs, data.actions, data.rewards, cfg)
    raw = data.obs[1] * data.std + data.mean
    bundle = Bundle(cfg, dt, wm, data.mean, data.std, data.scale, float(data.rtg[1, 0]), 4, 2)
    actor = DTActor(bundle, None)
    for t in range(data.T):
        online = actor(raw[t], float(data.rewards[1, t - 1]) if t else 0.0)
        actor.a[-1] = data.actions[1, t]  # replay the episode's own actions
        lo = max(0, t + 1 - cfg.horizon)
        sl = slice(lo, t + 1)
        a_in = data.actions[1, sl].copy()
        a_in[-1] = 0.0  # the action being chosen is not an input
        x = [torch.from_numpy(np.ascontiguousarray(v))[None] for v in
             (data.obs[1, sl], a_in, data.rtg[1, sl], np.arange(lo, t + 1))]
        zz = torch.from_numpy(z[1, sl])[None] if variant == "meta-dt" else None
        with torch.no_grad():
            offline = dt(*x, zz)[0, -1].numpy()
        np.testing.assert_allclose(online, offline, atol=1e-4)


@pytest.mark.slow
def test_the_cli_collects_trains_resumes_and_reports(tmp_path):
    pytest.importorskip("torch", reason="Meta-DT needs torch")
    pytest.importorskip("metaworld", reason="Meta-World needs the metarl extra (metaworld)")
    from typer.testing import CliRunner

    from metaskill.cli import app

    data, run = tmp_path / "data", tmp_path / "run"
    res = CliRunner().invoke(app, ["metarl", "metaworld-data", "--benchmark", "ML1", "--env",
                                   "reach-v3", "--episodes", "2", "--noise", "0.5",
                                   "--max-steps", "15", "--n-train", "2", "--n-test", "1",
                                   "--out", str(data), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert json.loads((data / "manifest.json").read_text())["complete"]
    args = ["metarl", "meta-dt", "--data", str(data), "--variant", "dt", "--steps", "2",
            "--eval-every", "0", "--out", str(run), "--no-progress"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert (run / "report.html").exists() and (run / "state.pt").exists()
    res = CliRunner().invoke(app, [*args[:7], "3", *args[8:]])  # resume to 3 steps
    assert res.exit_code == 0, res.output
    assert json.loads((run / "manifest.json").read_text())["step"] == 3
    res = CliRunner().invoke(app, [*args[:5], "gato", *args[6:]])
    assert res.exit_code != 0 and "unknown variant" in str(res.exception)
