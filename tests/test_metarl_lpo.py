"""LPO / TA-LPO drift, ES checkpoint-resume, GROOVE level sampling (issue 25).

The sampler tests need only numpy; the rest skip without the ``metarl`` extra's JAX
libraries. The inner loop is tiny here (4 envs x 16 steps x 8 updates on CartPole) so one
compilation serves the resume test, the smoke run and the CLI run in one process.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from metaskill.metalearn.rl.groove import (
    LevelSampler,
    LevelSamplerConfig,
    param_space,
    rank_weights,
)


# ---- GROOVE's sampler (numpy only) ----------------------------------------------------------
def _regret(levels: np.ndarray) -> list[float]:
    """A planted regret: the learned algorithm lags PPO most where coordinate 0 is large."""
    return (10.0 * levels[:, 0]).tolist()


def _chosen_regret(kind: str, rounds: int = 300) -> float:
    s = LevelSampler(LevelSamplerConfig(kind=kind, dims=2, levels_per_generation=4,
                                        buffer_size=16), seed=3)
    chosen = []
    for _ in range(rounds):
        levels = s.sample()
        regrets = _regret(levels)
        s.update(levels, regrets)
        chosen.extend(regrets)
    return float(np.mean(chosen[len(chosen) // 2:]))


def test_groove_chooses_higher_regret_levels_than_uniform() -> None:
    groove, uniform = _chosen_regret("groove"), _chosen_regret("uniform")
    assert uniform == pytest.approx(5.0, abs=0.6)  # uniform over [0, 1] * 10
    assert groove > uniform + 1.5


def test_groove_buffer_keeps_the_highest_regret_levels() -> None:
    s = LevelSampler(LevelSamplerConfig(kind="groove", dims=1, levels_per_generation=1,
                                        buffer_size=4, p_replay=0.0), seed=0)
    for _ in range(40):
        lv = s.sample()
        s.update(lv, _regret(lv))
    levels, scores = s.buffer()
    assert len(scores) == 4
    assert scores.min() > 7.0  # the top of 40 uniform draws of 10 * u
    assert np.allclose(scores, 10 * levels[:, 0])


def test_rank_weights_prefer_high_scores() -> None:
    w = rank_weights(np.array([1.0, 3.0, 2.0]), temperature=0.3)
    assert w.argmax() == 1 and w.argmin() == 0 and w.sum() == pytest.approx(1.0)


def test_sampler_state_round_trips_through_json() -> None:
    cfg = LevelSamplerConfig(kind="groove", dims=3, levels_per_generation=2, buffer_size=4)
    a = LevelSampler(cfg, seed=5)
    for _ in range(6):
        lv = a.sample()
        a.update(lv, _regret(lv))
    b = LevelSampler.from_state(json.loads(json.dumps(a.state())))
    for _ in range(5):
        la, lb = a.sample(), b.sample()
        assert np.array_equal(la, lb)
        a.update(la, _regret(la))
        b.update(lb, _regret(lb))
    assert a.state() == b.state()


def test_fixed_sampler_and_bad_configs() -> None:
    from metaskill.core.errors import InvalidParameterError, MethodError

    assert LevelSampler(LevelSamplerConfig(kind="fixed"), seed=0).sample().shape == (1, 0)
    with pytest.raises(InvalidParameterError):
        LevelSamplerConfig(kind="groove", dims=0)
    with pytest.raises(MethodError, match="no parameter box"):
        param_space("Breakout-MinAtar")


# ---- the drift function -----------------------------------------------------------------------
def _jax():
    jax = pytest.importorskip("jax", reason="LPO needs the metarl extra (jax)")
    pytest.importorskip("gymnax", reason="LPO needs the metarl extra (gymnax)")
    pytest.importorskip("evosax", reason="LPO needs the metarl extra (evosax)")
    return jax


@pytest.mark.parametrize("temporal", [False, True])
def test_drift_is_zero_with_zero_gradient_at_ratio_one(temporal: bool) -> None:
    jax = _jax()
    import jax.numpy as jnp

    from metaskill.metalearn.rl.lpo import drift_value, init_drift

    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    th = init_drift(k1, temporal, 16)
    th = {"w1": th["w1"] * 3.0, "w2": jax.random.normal(k2, (16,)) * 3.0}  # far from PPO
    adv = jnp.linspace(-3.0, 3.0, 13)

    def d(r, a, p):
        return drift_value(th, r, a, progress=p, left=1.0 - p, temporal=temporal)

    for p in (0.0, 0.5, 1.0):
        assert np.all(np.asarray(d(jnp.ones_like(adv), adv, p)) == 0.0)
        grad = jax.vmap(jax.grad(d), in_axes=(0, 0, None))(jnp.ones_like(adv), adv, p)
        assert np.all(np.asarray(grad) == 0.0)
    # ... and a real function away from r = 1: non-negative, and not zero everywhere for
    # this network or its negation (one of the two pushes the output above zero somewhere)
    r, a = (x.ravel() for x in jnp.meshgrid(jnp.linspace(0.3, 2.0, 18), adv))
    away = [np.asarray(drift_value({**th, "w2": sign * th["w2"]}, r, a, progress=0.5,
                                   left=0.5, temporal=temporal, ppo_weight=0.0))
            for sign in (1.0, -1.0)]
    assert all(np.all(x >= 0.0) for x in away) and max(x.max() for x in away) > 0.0


def test_zero_weights_give_ppo_clip_drift() -> None:
    _jax()
    import jax.numpy as jnp

    from metaskill.metalearn.rl.lpo import drift_value, ppo_drift_weights

    r = jnp.array([0.5, 0.9, 1.0, 1.1, 1.5])
    a = jnp.array([1.0, -1.0, 2.0, 1.0, 1.0])
    d = np.asarray(drift_value(ppo_drift_weights(False, 8), r, a))
    rn, an = np.asarray(r), np.asarray(a)
    expected = np.maximum((rn - np.clip(rn, 0.8, 1.2)) * an - 1e-4, 0)
    np.testing.assert_allclose(d, expected, atol=1e-6)
    assert d[-1] == pytest.approx(0.3 - 1e-4, abs=1e-6)


# ---- meta-training: resume and smoke ------------------------------------------------------------
def _tiny(**kw):
    from metaskill.metalearn.rl.lpo import LPOConfig, PPOConfig

    ppo = PPOConfig(num_envs=4, num_steps=16, total_timesteps=512, update_epochs=2,
                    num_minibatches=2, eval_envs=4, hidden=16)
    base = dict(env="CartPole-v1", generations=4, pop_size=4, drift_hidden=8,
                sampler="groove", levels_per_generation=2, buffer_size=4, ppo=ppo)
    return LPOConfig(**{**base, **kw})


@pytest.mark.slow
def test_resume_gives_identical_results(tmp_path) -> None:
    _jax()
    from metaskill.metalearn.rl.lpo import meta_train, read_manifest

    full = meta_train(_tiny(), tmp_path / "full")
    meta_train(_tiny(generations=2), tmp_path / "split")
    resumed = meta_train(_tiny(), tmp_path / "split")
    assert resumed.resumed_from == 2 and len(resumed.history) == 4
    np.testing.assert_array_equal(full.drift["w1"], resumed.drift["w1"])
    np.testing.assert_array_equal(full.drift["w2"], resumed.drift["w2"])
    a, b = read_manifest(tmp_path / "full"), read_manifest(tmp_path / "split")
    strip = [{k: v for k, v in h.items() if k != "wall_s"} for h in a["history"]]
    assert strip == [{k: v for k, v in h.items() if k != "wall_s"} for h in b["history"]]
    assert a["sampler"] == b["sampler"]
    with np.load(tmp_path / "full" / a["es_state"]) as za, \
            np.load(tmp_path / "split" / b["es_state"]) as zb:
        for name in za.files:
            np.testing.assert_array_equal(za[name], zb[name])
    assert np.asarray(full.drift["w2"]).any()  # the ES moved the output layer off PPO


@pytest.mark.slow
def test_resume_refuses_another_configuration(tmp_path) -> None:
    _jax()
    from metaskill.core.errors import MethodError
    from metaskill.metalearn.rl.lpo import meta_train

    meta_train(_tiny(generations=1), tmp_path)
    with pytest.raises(MethodError, match="another configuration"):
        meta_train(_tiny(generations=2, es_sigma=0.5), tmp_path)


@pytest.mark.slow
def test_cli_smoke_run_writes_checkpoint_and_report(tmp_path) -> None:
    _jax()
    pytest.importorskip("matplotlib", reason="the HTML report draws with matplotlib")
    from typer.testing import CliRunner

    from metaskill.cli import app
    from metaskill.metalearn.rl.lpo import load_drift, read_manifest

    out = tmp_path / "run"
    args = ["metarl", "lpo", "--out", str(out), "--generations", "3", "--pop", "4",
            "--temporal", "--sampler", "uniform", "--levels", "2", "--timesteps", "512",
            "--num-envs", "4", "--num-steps", "16", "--test-env", "CartPole-v1",
            "--test-seeds", "2", "--no-progress"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    man = read_manifest(out)
    assert man["generation"] == 3 and man["config"]["temporal"] is True
    assert all(np.isfinite(h["mean_return"]) and h["mean_return"] > 0 for h in man["history"])
    assert load_drift(out / "drift.json")["w1"].shape == (24, 32)
    page = (out / "report.html").read_text()
    assert page.count("<svg") >= 3 and "Learned drift function" in page
    assert "Test environments" in page and "PPO" in page
