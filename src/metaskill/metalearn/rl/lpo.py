"""Learned Policy Optimisation (LPO), temporally aware (TA-LPO), meta-trained by OpenAI-ES.

Lu, Kuba, Letcher, Metz, Schroeder de Witt, Foerster (2022), "Discovered Policy
Optimisation" (NeurIPS 2022, arXiv:2210.05639); Jackson, Lu, Kirsch, Lange, Whiteson,
Foerster (2024), "Discovering Temporally-Aware Reinforcement Learning Algorithms" (ICLR
2024, arXiv:2402.05828); the curriculum is GROOVE (:mod:`.groove`, Jackson et al. 2023).

Mirror learning writes PPO-like algorithms as maximising ``E[r A - D(r, A)]`` with
``r = pi_new(a|s) / pi_old(a|s)``, advantage ``A`` and a *drift* ``D >= 0`` that is zero,
with zero gradient, at ``r = 1``. PPO is the drift ``relu((r - clip(r, 1-e, 1+e)) A)``.
LPO makes the drift a small network and evolves its weights; TA-LPO also feeds it how far
training has got. The algorithm box::

    x(r, A)    = clip([log r, log^2 r, 1 - r, (1 - r)^2] ++ A * [same four], -2, 2)
    x_TA       = x ++ (n/N) x ++ s x           n/N: updates done, s = log(1+N-n)/log(1+N)
    D_theta    = relu(w * D_PPO + W2 tanh(W1 x) - 1e-4)           no biases: D(r=1) = 0
    J(theta)   = final return of PPO trained with objective mean(r A - D_theta)
    OpenAI-ES: theta <- theta + Adam(grad estimate of J from antithetic perturbations)

``x`` is zero at ``r = 1`` and the network has no biases, so its output is zero there; the
``- 1e-4`` inside the ReLU then makes ``D`` exactly zero, and flat, in a neighbourhood of
``r = 1``: the mirror-learning conditions hold for every weight vector, by construction.

Libraries do the heavy parts: gymnax (vectorised environments), evosax (OpenAI-ES,
``evosax.algorithms.Open_ES``, API of evosax >= 0.2), optax (Adam). The PPO inner loop is
our compact JAX implementation, following purejaxrl's ``ppo.py`` (Lu et al. 2022,
github.com/luchris429/purejaxrl) step for step, because the drift must be plugged into its
policy loss (no packaged PPO exposes that loss); ``rejax`` (PyPI) has a PPO on gymnax but
its actor loss is not a parameter either.

What we changed, and why:

* Inputs follow the LPO reference code (log-ratio, its square, ``1 - r``, its square, and
  each times ``A``), clipped to [-2, 2] as there; the TA inputs are the paper's
  ``[x, (n/N) x]`` plus ``s x`` with ``s`` the log of the updates left (the brief's "steps
  left"; multiplying by ``x`` keeps ``D(r=1) = 0``). ``log N`` is left out as in TA-LPO,
  whose horizon is fixed during meta-training.
* ``w`` is 1 by default (the LPO code's ``ppo_init``: the search starts at PPO); the first
  layer is initialised randomly and the output layer at zero, so the ES mean starts
  exactly at PPO (up to the 1e-4 dead zone) and its first gradient estimate is not zero.
  PPO itself is the same program with all drift weights zero.
* CPU-sized: hidden width 32 (paper 128), small inner budgets (tens of thousands of
  steps instead of millions), populations of 8-32, discrete-action environments only.
* Fitness is the mean undiscounted return of the *final* policy over fresh episodes
  (``eval_envs`` episodes, capped at 1000 steps), the same random seeds for every candidate
  of a generation (common random numbers sharpen the ranking).
* Every generation also trains the ES mean and PPO on the same levels: the mean's return
  is the meta-training curve, PPO's is GROOVE's antagonist (:mod:`.groove`).

Checkpoints: ``OUT/manifest.json`` (schema version, config, history, sampler state) is
written last, after ``OUT/es_state_<generation>.npz`` (the leaves of evosax's state) and
``OUT/drift.json`` (the ES mean as plain JSON, loadable without this code's objects), so
a run killed at any point resumes from the last whole generation with results identical
to an uninterrupted run.

Example::

    cfg = LPOConfig(env="CartPole-v1", generations=8, pop_size=8, temporal=True)
    result = meta_train(cfg, "runs/talpo")        # resumes if runs/talpo has a checkpoint
    drift = load_drift("runs/talpo/drift.json")
    rows = evaluate(drift, "Acrobot-v1", cfg.ppo, seeds=3)
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from metaskill.core.errors import FileFormatError, InvalidParameterError, MethodError
from metaskill.metalearn.rl.groove import (
    LevelSampler,
    LevelSamplerConfig,
    SamplerKind,
    level_params,
    param_space,
)

SCHEMA_VERSION = 1
N_BASE_INPUTS = 8
EVAL_STEP_CAP = 1000
DEFAULT_DRIFT_HIDDEN = 32


# ---- configuration -------------------------------------------------------------------------
@dataclass(frozen=True)
class PPOConfig:
    """The inner loop: PPO (or LPO) on one gymnax environment, purejaxrl's hyperparameters.

    Attributes:
        num_envs: parallel environments.
        num_steps: steps per environment per update (rollout length).
        total_timesteps: environment steps of one training run (the lifetime N).
        update_epochs: passes over each rollout.
        num_minibatches: minibatches per pass.
        lr: Adam learning rate (linearly annealed to zero when ``anneal_lr``).
        anneal_lr: anneal the learning rate over the run.
        gamma: discount.
        gae_lambda: GAE lambda.
        clip_eps: PPO's clip range (the value clip, and PPO's drift).
        ent_coef: entropy bonus.
        vf_coef: value-loss weight.
        max_grad_norm: global gradient-norm clip.
        hidden: width of the actor and critic MLPs (two tanh layers each).
        eval_envs: episodes of the final-policy evaluation (the fitness).
    """

    num_envs: int = 8
    num_steps: int = 64
    total_timesteps: int = 30_000
    update_epochs: int = 4
    num_minibatches: int = 4
    lr: float = 1e-3
    anneal_lr: bool = True
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    hidden: int = 64
    eval_envs: int = 16

    def __post_init__(self) -> None:
        if self.num_envs * self.num_steps % self.num_minibatches:
            raise InvalidParameterError(
                "num_envs * num_steps must be divisible by num_minibatches")
        if self.num_updates < 1:
            raise InvalidParameterError(
                f"total_timesteps ({self.total_timesteps}) must be at least num_envs * "
                f"num_steps ({self.num_envs * self.num_steps})")

    @property
    def num_updates(self) -> int:
        """Updates of one run: ``total_timesteps // (num_envs * num_steps)``."""
        return self.total_timesteps // (self.num_envs * self.num_steps)


@dataclass(frozen=True)
class LPOConfig:
    """Meta-training of a drift function by OpenAI-ES.

    Attributes:
        env: gymnax environment id of meta-training (discrete actions).
        temporal: TA-LPO (progress and updates-left inputs) instead of LPO.
        sampler: ``fixed`` (default parameters), ``uniform`` or ``groove`` levels.
        levels_per_generation: levels every candidate trains on per generation.
        generations: ES generations.
        pop_size: ES population (even: antithetic pairs).
        es_lr: Adam learning rate of the ES mean.
        es_sigma: ES perturbation scale.
        drift_hidden: width of the drift network.
        ppo_weight: w, the weight of PPO's drift inside the learned drift (1: start at PPO).
        seed: seeds everything (ES noise, inner runs, level sampling).
        ppo: the inner loop.
        buffer_size: GROOVE's level buffer capacity.
        p_replay: GROOVE's replay probability.
        temperature: GROOVE's rank-prioritisation temperature.
    """

    env: str = "CartPole-v1"
    temporal: bool = False
    sampler: SamplerKind = "fixed"
    levels_per_generation: int = 1
    generations: int = 16
    pop_size: int = 16
    es_lr: float = 0.03
    es_sigma: float = 0.05
    drift_hidden: int = DEFAULT_DRIFT_HIDDEN
    ppo_weight: float = 1.0
    seed: int = 0
    ppo: PPOConfig = field(default_factory=PPOConfig)
    buffer_size: int = 32
    p_replay: float = 0.5
    temperature: float = 0.3

    def __post_init__(self) -> None:
        if self.pop_size < 2 or self.pop_size % 2:
            raise InvalidParameterError(f"pop_size must be even and >= 2, not {self.pop_size}")
        if self.generations < 0:
            raise InvalidParameterError("generations must be >= 0")
        if self.es_sigma <= 0 or self.es_lr <= 0:
            raise InvalidParameterError("es_sigma and es_lr must be > 0")
        self.sampler_config()  # validates the sampler fields

    def sampler_config(self) -> LevelSamplerConfig:
        """The :class:`LevelSamplerConfig` these fields describe."""
        dims = 0 if self.sampler == "fixed" else len(param_space(self.env))
        return LevelSamplerConfig(kind=self.sampler, dims=dims,
                                  levels_per_generation=self.levels_per_generation,
                                  buffer_size=self.buffer_size, p_replay=self.p_replay,
                                  temperature=self.temperature)

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form (``ppo`` nested)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LPOConfig:
        """Inverse of :meth:`to_json`; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        extra = set(data) - known
        if extra:
            raise FileFormatError(f"lpo config has unknown keys {sorted(extra)}")
        return cls(**{**data, "ppo": PPOConfig(**data.get("ppo", {}))})


def configure_xla_cpu() -> None:
    """Single-threaded Eigen in XLA:CPU, set before jax first builds its CPU client.

    A guard: these vmapped programs hung on XLA:CPU (jax 0.10.2) with every worker
    parked. The cause found with gdb was the batched LAPACK QR of orthogonal init (see
    :func:`_init_net`, now QR-free); a similar wedge of the multi-threaded Eigen pool is
    reported in PyAutoLabs/PyAutoFit#1530 with this flag as its workaround, so it stays
    at a small speed cost. A user's own setting of the flag wins; it has no effect if
    jax's CPU backend was already started in this process.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false").strip()


# ---- the drift function --------------------------------------------------------------------
def n_drift_inputs(temporal: bool) -> int:
    """Inputs of the drift network: 8 (LPO) or 24 (TA-LPO)."""
    return N_BASE_INPUTS * (3 if temporal else 1)


def init_drift(key: Any, temporal: bool, hidden: int) -> dict[str, Any]:
    """Initial drift weights: ``w1`` random (scaled 1/sqrt(inputs)), ``w2`` zero (output 0).

    Example::

        theta = init_drift(jax.random.PRNGKey(0), temporal=False, hidden=32)  # w1 (8, 32), w2 (32,)
    """
    configure_xla_cpu()
    import jax
    import jax.numpy as jnp

    n_in = n_drift_inputs(temporal)
    w1 = jax.random.normal(key, (n_in, hidden)) / math.sqrt(n_in)
    return {"w1": w1, "w2": jnp.zeros((hidden,))}


def drift_inputs(ratio: Any, adv: Any, progress: Any, left: Any, temporal: bool) -> Any:
    """The drift network's inputs ``x`` (``[..., 8]`` or ``[..., 24]``), clipped to [-2, 2]."""
    configure_xla_cpu()
    import jax.numpy as jnp

    log_r = jnp.log(ratio)
    base = jnp.stack([log_r, log_r**2, 1.0 - ratio, (1.0 - ratio) ** 2], axis=-1)
    x = jnp.clip(jnp.concatenate([base, adv[..., None] * base], axis=-1), -2.0, 2.0)
    if temporal:
        x = jnp.concatenate([x, progress * x, left * x], axis=-1)
    return x


def drift_value(theta: Mapping[str, Any], ratio: Any, adv: Any, *, progress: Any = 0.0,
                left: Any = 1.0, temporal: bool = False, ppo_weight: float = 1.0,
                clip_eps: float = 0.2) -> Any:
    """The learned drift ``D(r, A)`` (>= 0, zero with zero gradient near ``r = 1``).

    Args:
        theta: drift weights ``{"w1": (inputs, hidden), "w2": (hidden,)}``.
        ratio: probability ratios ``r`` (any shape).
        adv: advantages ``A`` (same shape).
        progress: fraction of updates done (TA-LPO).
        left: ``log(1 + updates left) / log(1 + updates)`` (TA-LPO).
        temporal: TA-LPO inputs.
        ppo_weight: weight of PPO's drift inside the learned one.
        clip_eps: PPO's clip range.

    Example (no doctest: jax is an optional extra)::

        th = {**init_drift(jax.random.PRNGKey(0), False, 8), "w2": jnp.ones(8)}
        float(drift_value(th, jnp.array(1.0), jnp.array(2.0)))  # 0.0: zero at r = 1
    """
    import jax
    import jax.numpy as jnp

    x = drift_inputs(ratio, adv, progress, left, temporal)
    learned = jnp.tanh(x @ theta["w1"]) @ theta["w2"]
    ppo = jax.nn.relu((ratio - jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)) * adv)
    return jax.nn.relu(ppo_weight * ppo + learned - 1e-4)


def ppo_drift_weights(temporal: bool, hidden: int) -> dict[str, Any]:
    """All-zero drift weights: with ``ppo_weight=1`` the drift is PPO's clip drift."""
    configure_xla_cpu()
    import jax.numpy as jnp

    return {"w1": jnp.zeros((n_drift_inputs(temporal), hidden)), "w2": jnp.zeros((hidden,))}


# ---- the inner loop: PPO with a drift (purejaxrl's ppo.py, restructured) -------------------
def _make_env(env_id: str) -> tuple[Any, Any]:
    configure_xla_cpu()
    import gymnax
    from gymnax.environments import spaces

    try:
        env, default = gymnax.make(env_id)
    except Exception as e:  # gymnax raises ValueError for unknown ids
        raise MethodError(f"lpo: gymnax has no environment {env_id!r} ({e})") from e
    if not isinstance(env.action_space(default), spaces.Discrete):
        raise MethodError(f"lpo: {env_id} has a continuous action space; this LPO/PPO "
                          "supports discrete-action gymnax environments only")
    return env, default


def _init_net(key: Any, obs_dim: int, n_act: int, hidden: int) -> dict[str, Any]:
    """Actor and critic MLPs (two tanh layers each), initialised at purejaxrl's scales.

    purejaxrl uses orthogonal init; here it is a fan-in normal of the same gain, because
    orthogonal init is a batched LAPACK QR once vmapped over candidates and levels, and
    that QR kernel deadlocked XLA:CPU's thread pool (gdb: ``jax::OrthogonalQr`` in
    ``ParallelBatchMap``, every worker parked).
    """
    import jax
    import jax.numpy as jnp

    def orth(gain: float) -> Any:
        return jax.nn.initializers.variance_scaling(gain**2, "fan_in", "truncated_normal")
    shapes = {"a1": (obs_dim, hidden, 2**0.5), "a2": (hidden, hidden, 2**0.5),
              "a3": (hidden, n_act, 0.01), "c1": (obs_dim, hidden, 2**0.5),
              "c2": (hidden, hidden, 2**0.5), "c3": (hidden, 1, 1.0)}
    keys = jax.random.split(key, len(shapes))
    return {name: {"w": orth(scale)(k, (i, o)), "b": jnp.zeros(o)}
            for k, (name, (i, o, scale)) in zip(keys, shapes.items(), strict=True)}


def _apply_net(net: Mapping[str, Any], obs: Any) -> tuple[Any, Any]:
    """Logits and value of a batch of (flattened) observations."""
    import jax.numpy as jnp

    def dense(name: str, x: Any) -> Any:
        return x @ net[name]["w"] + net[name]["b"]

    obs = obs.astype(jnp.float32)  # MinAtar/bsuite observations are bool or int grids

    actor = jnp.tanh(dense("a2", jnp.tanh(dense("a1", obs))))
    critic = jnp.tanh(dense("c2", jnp.tanh(dense("c1", obs))))
    return dense("a3", actor), dense("c3", critic)[..., 0]


def make_train(env_id: str, ppo: PPOConfig, temporal: bool) -> Callable[..., Any]:
    """``train(theta, ppo_weight, env_params, key) -> (final_return, curve)`` for one run.

    ``curve`` holds the mean return of the episodes that ended in each update (NaN where
    none ended). The function is pure and jittable; vmap it over candidates and levels.

    Example::

        train = jax.jit(make_train("CartPole-v1", PPOConfig(), temporal=False))
        ret, curve = train(ppo_drift_weights(False, 32), 1.0, default_params, key)
    """
    import jax
    import jax.numpy as jnp
    import optax

    env, default = _make_env(env_id)
    obs_dim = int(np.prod(env.observation_space(default).shape))
    n_act = int(env.action_space(default).n)
    n_upd, batch = ppo.num_updates, ppo.num_envs * ppo.num_steps
    eval_steps = min(int(default.max_steps_in_episode), EVAL_STEP_CAP)

    def lr_at(count: Any) -> Any:
        frac = 1.0 - (count // (ppo.num_minibatches * ppo.update_epochs)) / n_upd
        return ppo.lr * frac if ppo.anneal_lr else ppo.lr

    tx = optax.chain(optax.clip_by_global_norm(ppo.max_grad_norm),
                     optax.adam(learning_rate=lr_at, eps=1e-5))

    def policy(net: Any, obs: Any, key: Any) -> tuple[Any, Any, Any]:
        logits, value = _apply_net(net, obs.reshape(obs.shape[0], -1))
        action = jax.random.categorical(key, logits)
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], 1)[:, 0]
        return action, logp, value

    def env_step(params: Any, states: Any, action: Any, key: Any) -> tuple[Any, ...]:
        keys = jax.random.split(key, ppo.num_envs)
        obs, states, reward, term, trunc, _ = jax.vmap(
            env.step, in_axes=(0, 0, 0, None))(keys, states, action, params)
        return obs, states, reward, jnp.logical_or(term, trunc)

    def loss_fn(net: Any, mb: tuple[Any, ...], theta: Any, w: Any, prog: Any) -> Any:
        obs, action, logp_old, value_old, adv, target = mb
        logits, value = _apply_net(net, obs.reshape(obs.shape[0], -1))
        logp_all = jax.nn.log_softmax(logits)
        logp = jnp.take_along_axis(logp_all, action[:, None], 1)[:, 0]
        ratio = jnp.exp(logp - logp_old)
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        left = jnp.log1p(n_upd - prog * n_upd) / jnp.log1p(n_upd)
        drift = drift_value(theta, ratio, adv, progress=prog, left=left, temporal=temporal,
                            ppo_weight=w, clip_eps=ppo.clip_eps)
        policy_loss = -(ratio * adv - drift).mean()  # mirror learning: maximise r A - D
        v_clip = value_old + jnp.clip(value - value_old, -ppo.clip_eps, ppo.clip_eps)
        v_loss = 0.5 * jnp.maximum((value - target) ** 2, (v_clip - target) ** 2).mean()
        entropy = -(jnp.exp(logp_all) * logp_all).sum(-1).mean()
        return policy_loss + ppo.vf_coef * v_loss - ppo.ent_coef * entropy

    def gae(traj: tuple[Any, ...], last_value: Any) -> tuple[Any, Any]:
        def back(carry: Any, t: Any) -> Any:
            adv, next_value = carry
            done, value, reward = t
            delta = reward + ppo.gamma * next_value * (1 - done) - value
            adv = delta + ppo.gamma * ppo.gae_lambda * (1 - done) * adv
            return (adv, value), adv

        _, advs = jax.lax.scan(back, (jnp.zeros_like(last_value), last_value), traj,
                               reverse=True)
        return advs, advs + traj[1]

    def update(carry: Any, u: Any, theta: Any, w: Any, params: Any) -> Any:
        net, opt, obs, states, ep_ret, key = carry

        def rollout(c: Any, _: Any) -> Any:
            obs, states, ep_ret, key = c
            key, k_act, k_env = jax.random.split(key, 3)
            action, logp, value = policy(net, obs, k_act)
            next_obs, states, reward, done = env_step(params, states, action, k_env)
            ep_ret = ep_ret + reward
            finished = jnp.where(done, ep_ret, jnp.nan)
            return (next_obs, states, jnp.where(done, 0.0, ep_ret), key), (
                obs, action, logp, value, reward, done.astype(jnp.float32), finished)

        (obs, states, ep_ret, key), traj = jax.lax.scan(
            rollout, (obs, states, ep_ret, key), None, ppo.num_steps)
        t_obs, t_act, t_logp, t_val, t_rew, t_done, t_fin = traj
        _, last_value = _apply_net(net, obs.reshape(obs.shape[0], -1))
        adv, target = gae((t_done, t_val, t_rew), last_value)
        flat = jax.tree.map(lambda x: x.reshape((batch, *x.shape[2:])),
                            (t_obs, t_act, t_logp, t_val, adv, target))
        prog = u / n_upd

        def epoch(c: Any, _: Any) -> Any:
            net, opt, key = c
            key, k = jax.random.split(key)
            perm = jax.random.permutation(k, batch)
            mbs = jax.tree.map(
                lambda x: x[perm].reshape((ppo.num_minibatches, -1, *x.shape[1:])), flat)

            def step(c2: Any, mb: Any) -> Any:
                net, opt = c2
                grads = jax.grad(loss_fn)(net, mb, theta, w, prog)
                upd, opt = tx.update(grads, opt, net)
                return (optax.apply_updates(net, upd), opt), None

            (net, opt), _ = jax.lax.scan(step, (net, opt), mbs)
            return (net, opt, key), None

        (net, opt, key), _ = jax.lax.scan(epoch, (net, opt, key), None, ppo.update_epochs)
        return (net, opt, obs, states, ep_ret, key), jnp.nanmean(t_fin)

    def evaluate_final(net: Any, params: Any, key: Any) -> Any:
        k_reset, key = jax.random.split(key)
        obs, states = jax.vmap(env.reset, in_axes=(0, None))(
            jax.random.split(k_reset, ppo.eval_envs), params)

        def step(c: Any, _: Any) -> Any:
            obs, states, total, alive, key = c
            key, k_act, k_env = jax.random.split(key, 3)
            action, _, _ = policy(net, obs, k_act)
            keys = jax.random.split(k_env, ppo.eval_envs)
            obs, states, reward, term, trunc, _ = jax.vmap(
                env.step, in_axes=(0, 0, 0, None))(keys, states, action, params)
            total = total + reward * alive
            alive = alive * (1.0 - jnp.logical_or(term, trunc))
            return (obs, states, total, alive, key), None

        init = (obs, states, jnp.zeros(ppo.eval_envs), jnp.ones(ppo.eval_envs), key)
        (_, _, total, _, _), _ = jax.lax.scan(step, init, None, eval_steps)
        return total.mean()

    def train(theta: Any, ppo_weight: Any, params: Any, key: Any) -> tuple[Any, Any]:
        k_net, k_env, k_run, k_eval = jax.random.split(key, 4)
        net = _init_net(k_net, obs_dim, n_act, ppo.hidden)
        obs, states = jax.vmap(env.reset, in_axes=(0, None))(
            jax.random.split(k_env, ppo.num_envs), params)
        carry = (net, tx.init(net), obs, states, jnp.zeros(ppo.num_envs), k_run)
        body = functools.partial(update, theta=theta, w=ppo_weight, params=params)
        carry, curve = jax.lax.scan(body, carry, jnp.arange(n_upd))
        return evaluate_final(carry[0], params, k_eval), curve

    return train


@functools.lru_cache(maxsize=16)
def _batched_train(env_id: str, ppo: PPOConfig, temporal: bool) -> Callable[..., Any]:
    """``f(thetas[M], weights[M], params[L], keys[L]) -> (returns[M, L], curves[M, L, U])``, jitted.

    Cached per (env, inner config, temporal) so repeated meta-training and evaluation in
    one process compile once (jax's own cache keys on the function object).
    """
    import jax

    train = make_train(env_id, ppo, temporal)
    over_levels = jax.vmap(train, in_axes=(None, None, 0, 0))
    return jax.jit(jax.vmap(over_levels, in_axes=(0, 0, None, None)))


# ---- meta-training ---------------------------------------------------------------------------
@dataclass(frozen=True)
class GenerationStats:
    """What one ES generation did (one row of the manifest's history).

    Attributes:
        generation: index, from 0.
        mean_return: return of the ES mean's drift, averaged over the generation's levels.
        ppo_return: PPO's return on the same levels and seeds.
        pop_mean: the population's mean return; ``pop_best`` its best candidate's.
        pop_best: best candidate's mean return.
        levels: the levels (unit-box points) trained on; empty rows for ``fixed``.
        regrets: algorithmic regret per level (PPO minus the population mean).
        wall_s: seconds the generation took.
    """

    generation: int
    mean_return: float
    ppo_return: float
    pop_mean: float
    pop_best: float
    levels: list[list[float]]
    regrets: list[float]
    wall_s: float


@dataclass(frozen=True)
class MetaTrainResult:
    """What :func:`meta_train` returns: where it wrote, the history and the final drift."""

    out: Path
    history: list[GenerationStats]
    drift: dict[str, Any]
    resumed_from: int


def _es(cfg: LPOConfig, solution: Mapping[str, Any]) -> Any:
    import optax
    from evosax.algorithms import Open_ES

    return Open_ES(population_size=cfg.pop_size, solution=solution,
                   optimizer=optax.adam(cfg.es_lr),
                   std_schedule=optax.constant_schedule(cfg.es_sigma))


def _stack_levels(cfg: LPOConfig, default: Any, units: np.ndarray) -> Any:
    import jax
    import jax.numpy as jnp

    if cfg.sampler == "fixed":
        levels = [default] * len(units)
    else:
        levels = [level_params(cfg.env, default, u) for u in units]
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *levels)


def _run_generation(cfg: LPOConfig, es: Any, es_state: Any, g: int, units: np.ndarray,
                    default: Any) -> tuple[Any, GenerationStats]:
    """Ask, train every candidate + the ES mean + PPO on the levels, tell."""
    import jax
    import jax.numpy as jnp

    t0 = time.time()
    key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), g)
    k_ask, k_tell, k_runs = jax.random.split(key, 3)
    pop, es_state = es.ask(k_ask, es_state, es.default_params)
    mean = es.get_mean(es_state)
    zeros = jax.tree.map(jnp.zeros_like, mean)
    members = jax.tree.map(lambda p, m, z: jnp.concatenate([p, m[None], z[None]]),
                           pop, mean, zeros)
    weights = jnp.concatenate([jnp.full(cfg.pop_size + 1, cfg.ppo_weight), jnp.ones(1)])
    level_keys = jax.random.split(k_runs, len(units))  # shared by all members
    returns, _ = _batched_train(cfg.env, cfg.ppo, cfg.temporal)(
        members, weights, _stack_levels(cfg, default, units), level_keys)
    returns = np.asarray(returns, dtype=np.float64)  # (P + 2, K)
    pop_ret = returns[: cfg.pop_size]
    fitness = -jnp.asarray(pop_ret.mean(axis=1), dtype=jnp.float32)  # evosax minimises
    es_state, _ = es.tell(k_tell, pop, fitness, es_state, es.default_params)
    regrets = returns[-1] - pop_ret.mean(axis=0)
    stats = GenerationStats(
        generation=g, mean_return=float(returns[-2].mean()), ppo_return=float(returns[-1].mean()),
        pop_mean=float(pop_ret.mean()), pop_best=float(pop_ret.mean(axis=1).max()),
        levels=np.asarray(units, dtype=float).tolist(), regrets=regrets.tolist(),
        wall_s=time.time() - t0)
    return es_state, stats


def meta_train(cfg: LPOConfig, out: str | Path,
               progress: Callable[[GenerationStats], None] | None = None) -> MetaTrainResult:
    """Meta-train a drift function; checkpoint every generation; resume from ``out``.

    Args:
        cfg: the configuration. On resume it must equal the stored one except for
            ``generations``, which may grow (train further) but not fall below the
            generations already stored.
        out: run folder (created).
        progress: called with each finished generation's stats.

    Returns:
        The history (all generations, resumed ones included) and the ES mean's drift.

    Example::

        res = meta_train(LPOConfig(generations=4, pop_size=8), "runs/lpo")
        res.history[-1].mean_return
    """
    configure_xla_cpu()
    import jax

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _, default = _make_env(cfg.env)
    theta0 = init_drift(jax.random.PRNGKey(cfg.seed + 7919), cfg.temporal, cfg.drift_hidden)
    es = _es(cfg, theta0)
    es_state = es.init(jax.random.PRNGKey(cfg.seed), theta0, es.default_params)
    sampler = LevelSampler(cfg.sampler_config(), seed=cfg.seed)
    history: list[GenerationStats] = []
    if (out / "manifest.json").exists():
        es_state, sampler, history = _load_checkpoint(out, cfg, es_state)
    start = len(history)
    for g in range(start, cfg.generations):
        units = sampler.sample()
        es_state, stats = _run_generation(cfg, es, es_state, g, units, default)
        sampler.update(units, stats.regrets)
        history.append(stats)
        _save_checkpoint(out, cfg, es, es_state, sampler, history)
        if progress is not None:
            progress(stats)
    drift = _drift_json(cfg, es.get_mean(es_state), len(history))
    return MetaTrainResult(out=out, history=history, drift=drift, resumed_from=start)


# ---- checkpoints -----------------------------------------------------------------------------
def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _drift_json(cfg: LPOConfig, theta: Mapping[str, Any], generations: int) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "metaskill.lpo.drift",
        "temporal": cfg.temporal,
        "ppo_weight": cfg.ppo_weight,
        "clip_eps": cfg.ppo.clip_eps,
        "meta_env": cfg.env,
        "num_updates": cfg.ppo.num_updates,
        "generations": generations,
        "w1": np.asarray(theta["w1"], dtype=np.float64).tolist(),
        "w2": np.asarray(theta["w2"], dtype=np.float64).tolist(),
    }


def _save_checkpoint(out: Path, cfg: LPOConfig, es: Any, es_state: Any, sampler: LevelSampler,
                     history: Sequence[GenerationStats]) -> None:
    import jax

    g = len(history)
    leaves = jax.tree.leaves(es_state)
    npz = out / f"es_state_{g:05d}.npz"
    with open(npz.with_suffix(".tmp"), "wb") as f:
        np.savez(f, *[np.asarray(x) for x in leaves])
    os.replace(npz.with_suffix(".tmp"), npz)
    _atomic_write(out / "drift.json", json.dumps(_drift_json(cfg, es.get_mean(es_state), g)))
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "kind": "metaskill.lpo.run",
        "config": cfg.to_json(),
        "generation": g,
        "es_state": npz.name,
        "sampler": sampler.state(),
        "history": [asdict(h) for h in history],
        "libraries": _library_versions(),
    }
    _atomic_write(out / "manifest.json", json.dumps(manifest))
    for old in out.glob("es_state_*.npz"):  # the manifest now points at the new one
        if old.name != npz.name:
            old.unlink()


def _load_checkpoint(out: Path, cfg: LPOConfig, template: Any
                     ) -> tuple[Any, LevelSampler, list[GenerationStats]]:
    import jax
    import jax.numpy as jnp

    man = read_manifest(out)
    stored = LPOConfig.from_json(man["config"])
    if replace(stored, generations=cfg.generations) != cfg:
        raise MethodError(
            f"lpo: {out} holds a run with another configuration; resume with the same "
            "options (only --generations may change) or use a new --out folder")
    with np.load(out / man["es_state"]) as z:
        arrays = [z[f"arr_{i}"] for i in range(len(z.files))]
    leaves, treedef = jax.tree.flatten(template)
    if len(arrays) != len(leaves):
        raise FileFormatError(
            f"{out / man['es_state']}: {len(arrays)} arrays, expected {len(leaves)}")
    es_state = jax.tree.unflatten(
        treedef, [jnp.asarray(a, dtype=t.dtype) for a, t in zip(arrays, leaves, strict=True)])
    history = [GenerationStats(**h) for h in man["history"]][: cfg.generations]
    if len(history) < len(man["history"]):
        raise MethodError(f"lpo: {out} already holds {len(man['history'])} generations; "
                          f"ask for at least that many (--generations)")
    return es_state, LevelSampler.from_state(man["sampler"]), history


def read_manifest(out: str | Path) -> dict[str, Any]:
    """The run folder's manifest (schema-checked).

    Example::

        read_manifest("runs/lpo")["generation"]
    """
    path = Path(out) / "manifest.json"
    try:
        man = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise FileFormatError(f"{path}: not a readable LPO manifest ({e})") from e
    if man.get("kind") != "metaskill.lpo.run" or man.get("schema_version") != SCHEMA_VERSION:
        raise FileFormatError(f"{path}: not an LPO run manifest of schema {SCHEMA_VERSION}")
    return man


def load_drift(path: str | Path) -> dict[str, Any]:
    """A drift saved by :func:`meta_train` (``drift.json``), arrays as numpy.

    Example::

        drift = load_drift("runs/lpo/drift.json"); drift["w1"].shape
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise FileFormatError(f"{p}: not a readable drift file ({e})") from e
    if data.get("kind") != "metaskill.lpo.drift" or data.get("schema_version") != SCHEMA_VERSION:
        raise FileFormatError(f"{p}: not an LPO drift file of schema {SCHEMA_VERSION}")
    return {**data, "w1": np.asarray(data["w1"], np.float32),
            "w2": np.asarray(data["w2"], np.float32)}


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("jax", "gymnax", "evosax", "optax"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "?"
    return found


# ---- evaluation ------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalResult:
    """Final returns and learning curves of one algorithm on one environment.

    Attributes:
        env: gymnax id.
        algorithm: ``PPO`` or a label of the learned drift.
        returns: final-policy return per seed.
        curves: per seed, mean return of the episodes that ended in each update.
        wall_s: seconds (all seeds together, compilation included on first use).
    """

    env: str
    algorithm: str
    returns: list[float]
    curves: list[list[float]]
    wall_s: float

    @property
    def mean(self) -> float:
        """Mean final return over seeds."""
        return float(np.mean(self.returns))


def ppo_as_drift(like: Mapping[str, Any]) -> dict[str, Any]:
    """PPO written as a drift dict shaped like ``like`` (zero weights, ``ppo_weight`` 1).

    Evaluating PPO through it reuses the compiled program of the learned drift it is
    compared with (same shapes), so a comparison compiles once.

    Example::

        evaluate(ppo_as_drift(drift), "Acrobot-v1", PPOConfig(), label="PPO")
    """
    return {**like, "ppo_weight": 1.0, "w1": np.zeros_like(np.asarray(like["w1"])),
            "w2": np.zeros_like(np.asarray(like["w2"]))}


def evaluate(drift: Mapping[str, Any] | None, env: str, ppo: PPOConfig, *, seeds: int = 3,
             seed: int = 1000, label: str = "LPO",
             level: Sequence[float] | None = None) -> EvalResult:
    """Train with the learned drift (or PPO when ``drift`` is None) on ``env``'s defaults.

    Args:
        drift: a :func:`load_drift` dict (or :attr:`MetaTrainResult.drift`); None: PPO
            (or :func:`ppo_as_drift` with ``label="PPO"``, which shares the compilation).
        env: gymnax id (discrete actions).
        ppo: the inner-loop configuration (``total_timesteps`` is the test horizon).
        seeds: independent runs.
        seed: first seed (runs use ``seed .. seed+seeds-1``; meta-training used others).
        label: the name of the learned algorithm in the result.
        level: a unit-box point of ``env``'s parameter box (:mod:`.groove`) to test on
            instead of the default parameters.

    Example::

        lpo = evaluate(load_drift("runs/lpo/drift.json"), "Acrobot-v1", PPOConfig())
        ppo = evaluate(None, "Acrobot-v1", PPOConfig())
    """
    configure_xla_cpu()
    import jax
    import jax.numpy as jnp

    t0 = time.time()
    temporal = bool(drift["temporal"]) if drift is not None else False
    if drift is None:
        theta, weight, label = ppo_drift_weights(False, DEFAULT_DRIFT_HIDDEN), 1.0, "PPO"
    else:
        theta = {"w1": jnp.asarray(drift["w1"]), "w2": jnp.asarray(drift["w2"])}
        weight = float(drift["ppo_weight"])
    _, default = _make_env(env)
    if level is not None:
        default = level_params(env, default, level)
    params = jax.tree.map(lambda x: jnp.stack([jnp.asarray(x)] * seeds), default)
    keys = jnp.stack([jax.random.PRNGKey(seed + i) for i in range(seeds)])
    members = jax.tree.map(lambda x: x[None], theta)
    returns, curves = _batched_train(env, ppo, temporal)(
        members, jnp.asarray([weight]), params, keys)
    curves_np = np.asarray(curves[0], dtype=np.float64)
    return EvalResult(env=env, algorithm=label,
                      returns=np.asarray(returns[0], dtype=np.float64).tolist(),
                      curves=[[float(v) if np.isfinite(v) else float("nan") for v in row]
                              for row in curves_np],
                      wall_s=time.time() - t0)


__all__ = [
    "SCHEMA_VERSION",
    "EvalResult",
    "GenerationStats",
    "LPOConfig",
    "MetaTrainResult",
    "PPOConfig",
    "configure_xla_cpu",
    "drift_inputs",
    "drift_value",
    "evaluate",
    "init_drift",
    "load_drift",
    "make_train",
    "meta_train",
    "n_drift_inputs",
    "ppo_as_drift",
    "ppo_drift_weights",
    "read_manifest",
]
