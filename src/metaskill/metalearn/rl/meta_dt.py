"""Meta-DT: offline meta-RL as conditional sequence modelling, with its two baselines.

Paper:
    Wang, Zhang, Wu, Zhu, Zhao, Chen (2024). "Meta-DT: Offline Meta-Reinforcement Learning
    as Conditional Sequence Modeling with World Model Disentanglement." A context-aware
    world model turns the last few transitions into a task representation; a decision
    transformer conditioned on it (and on a prompt) acts; the prompt is the *complementary*
    segment of the agent's own history -- where the world model predicts worst -- so no
    expert demonstration of an unseen task is needed.
Baselines beside it (``variant``):
    ``prompt-dt``: Xu et al. (2022), "Prompting Decision Transformer for Few-Shot Policy
    Generalization": the prompt is a segment of an expert demonstration of the task (its
    last ``prompt_length`` steps, as in Prompt-DT's code); no task representation.
    ``dt``: a plain multi-task decision transformer (Chen et al. 2021): no prompt, no task
    representation.

Algorithm (what :func:`train_meta_dt` does; steps 1-2 only for ``meta-dt``):

1. World model: a GRU context encoder reads the ``context_horizon`` transitions
   ``(s, a, r, s')`` before step t and outputs ``z_t``; a reward decoder ``r(s, a, s', z)``
   and a dynamics decoder ``s' - s = f(s, a, z)`` are trained on the training tasks'
   transitions by squared error (``wm_steps`` steps).
2. With the world model frozen: ``z_t`` for every step of every training episode, and the
   per-step prediction error (reward error + mean state error) of every episode.
3. Decision transformer: tokens ``(R_t, s_t [+ z_t], a_t)`` with timestep embeddings, a
   causal transformer, actions predicted from the state tokens by squared error. A
   training window of task i is prompted by another episode of task i: the
   ``prompt_length`` segment with the largest summed world-model error (sampled in
   proportion to it, as in Meta-DT's code, when ``prompt_sampling``); a ``prompt_drop``
   share of the steps trains without prompt.
4. Zero-shot evaluation on a task: ``meta-dt`` runs one episode without prompt (``z_t``
   computed online from its own transitions), takes the complementary segment of that
   episode (argmax of the error) as prompt and runs the scored episode; ``prompt-dt``
   runs with the task's expert segment; ``dt`` with nothing. Success: the task solved at
   any step of the scored episode; the success rate is over tasks.

Training is resumable: ``state.pt`` (models and optimizers) and ``manifest.json`` (schema
version, configuration, step, losses, evaluations) are written every ``ckpt_every`` steps;
every batch and dropout mask is a pure function of ``(seed, step)``, so a resumed run
reaches the same weights as an uninterrupted one. ``report.html`` draws the success and
loss curves.

What we changed: small models for CPU (``d_model`` 64, 2 layers; the paper: 128, 3
layers, 300k steps on a GPU); ``torch.nn.TransformerEncoder`` instead of a GPT-2 copy; the
world model reads ``(s, a, r, s')`` per transition and one model serves ML1 and ML10 (the
paper's code switches decoders per domain); the first, prompt-less evaluation episode
replaces the paper's warm-up phase; Meta-World's goal-hidden observations are the state.

Example (needs the ``metarl`` extra and a dataset from ``metaworld.collect_dataset``)::

    manifest = train_meta_dt("data/ml1-reach", "runs/meta-dt", MetaDTConfig(steps=2000))
    manifest["evals"][-1]["success"]
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metaskill.core.errors import MetaskillError
from metaskill.metalearn.rl.metaworld import (
    Dataset,
    Episode,
    load_dataset,
    load_suite,
    rollout,
    success_rate,
)

SCHEMA_VERSION = 1
VARIANTS = ("meta-dt", "prompt-dt", "dt")
MANIFEST = "manifest.json"
STATE = "state.pt"
REWARD_SCALE = 10.0  # Meta-World rewards lie in [0, 10]
_STREAM = {"wm": 1, "dt": 2, "torch-wm": 3, "torch-dt": 4, "init": 5}


class MetaDTError(MetaskillError):
    """A Meta-DT run that cannot start or resume as asked."""


@dataclass(frozen=True)
class MetaDTConfig:
    """One Meta-DT (or baseline) training run.

    Attributes:
        variant: ``meta-dt``, ``prompt-dt`` or ``dt``.
        steps: decision-transformer gradient steps.
        wm_steps: world-model gradient steps (``meta-dt`` only).
        batch_size: windows per decision-transformer step.
        wm_batch_size: transitions per world-model step.
        horizon: timesteps per training window (K).
        prompt_length: timesteps in the prompt.
        context_horizon: transitions the context encoder reads.
        context_dim: size of the task representation z.
        wm_hidden: width of the world model.
        d_model: transformer width.
        n_layers: transformer blocks.
        n_heads: attention heads.
        dropout: dropout inside the transformer.
        lr: decision-transformer learning rate (after a linear warm-up).
        wm_lr: world-model learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear learning-rate warm-up.
        prompt_drop: share of ``meta-dt`` steps trained without a prompt.
        prompt_sampling: training prompts sampled in proportion to the segment error
            (Meta-DT's code); False: always the largest-error segment.
        eval_every: steps between evaluations (0: only at the end).
        eval_train_tasks: training tasks also evaluated (a check of the fit).
        eval_test_tasks: test tasks evaluated (None: all in the dataset).
        ckpt_every: steps between checkpoints.
        seed: seed of the initial weights, batches and dropout.
    """

    variant: str = "meta-dt"
    steps: int = 2000
    wm_steps: int = 1000
    batch_size: int = 32
    wm_batch_size: int = 128
    horizon: int = 20
    prompt_length: int = 5
    context_horizon: int = 4
    context_dim: int = 16
    wm_hidden: int = 64
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 1
    dropout: float = 0.1
    lr: float = 1e-3
    wm_lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    prompt_drop: float = 0.2
    prompt_sampling: bool = True
    eval_every: int = 500
    eval_train_tasks: int = 3
    eval_test_tasks: int | None = None
    ckpt_every: int = 250
    seed: int = 0

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise MetaDTError(f"unknown variant '{self.variant}'; "
                              f"available: {', '.join(VARIANTS)}.")
        for name in ("steps", "batch_size", "wm_batch_size", "horizon", "prompt_length",
                     "context_horizon", "context_dim", "d_model", "n_layers", "n_heads",
                     "ckpt_every"):
            if getattr(self, name) < 1:
                raise MetaDTError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.d_model % self.n_heads:
            raise MetaDTError(f"d_model ({self.d_model}) must be a multiple of n_heads.")
        if not 0 <= self.prompt_drop < 1:
            raise MetaDTError(f"prompt_drop must be in [0, 1), got {self.prompt_drop}.")

    @property
    def uses_context(self) -> bool:
        """Whether the transformer reads the world model's task representation."""
        return self.variant == "meta-dt"

    @property
    def uses_prompt(self) -> bool:
        """Whether the transformer reads a prompt."""
        return self.variant != "dt"


# ---- 0. the data, normalised ------------------------------------------------------------
@dataclass
class Prepared:
    """Training episodes as arrays (states normalised, returns-to-go scaled).

    Attributes:
        obs: ``[N, T + 1, D]`` normalised observations.
        actions: ``[N, T, A]``.
        rewards: ``[N, T]``.
        rtg: ``[N, T]`` returns-to-go divided by ``scale``.
        task_of: ``[N]`` task number of each episode.
        tasks: task keys, indexed by task number.
        expert: per task, the episode with the least noise (then the highest return).
        mean: ``[D]`` observation mean; std: ``[D]`` observation std.
        scale: return scale (``REWARD_SCALE * T``).
    """

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    rtg: np.ndarray
    task_of: np.ndarray
    tasks: list[str]
    expert: list[int]
    mean: np.ndarray
    std: np.ndarray
    scale: float

    @property
    def T(self) -> int:  # noqa: N802 - the paper's symbol
        """Steps per episode."""
        return int(self.actions.shape[1])

    def by_task(self, task: int) -> np.ndarray:
        """Episode numbers of task ``task``."""
        return np.flatnonzero(self.task_of == task)


def prepare(episodes: Sequence[Episode], mean: np.ndarray | None = None,
            std: np.ndarray | None = None) -> Prepared:
    """Stack episodes (one length) into :class:`Prepared`; normalise with the given (else
    their own) observation statistics.

    Example:
        >>> ep = Episode("t", np.ones((4, 3)), np.zeros((3, 2)), np.ones(3), np.zeros(3, bool))
        >>> [round(float(x), 4) for x in prepare([ep]).rtg[0]]
        [0.1, 0.0667, 0.0333]
    """
    if not episodes:
        raise MetaDTError("the dataset has no training episodes.")
    raw = np.stack([e.obs for e in episodes]).astype(np.float32)
    if mean is None or std is None:
        flat = raw.reshape(-1, raw.shape[-1])
        mean, std = flat.mean(0), flat.std(0) + 1e-6
    rewards = np.stack([e.rewards for e in episodes]).astype(np.float32)
    scale = REWARD_SCALE * rewards.shape[1]
    rtg = np.flip(np.cumsum(np.flip(rewards, 1), 1), 1) / scale
    tasks = list(dict.fromkeys(e.task for e in episodes))
    task_of = np.array([tasks.index(e.task) for e in episodes])
    expert = []
    for i in range(len(tasks)):
        idx = np.flatnonzero(task_of == i)
        expert.append(int(min(idx, key=lambda n: (episodes[n].noise, -episodes[n].ret))))
    return Prepared(((raw - mean) / std).astype(np.float32),
                    np.stack([e.actions for e in episodes]).astype(np.float32), rewards,
                    np.ascontiguousarray(rtg, np.float32), task_of, tasks, expert,
                    mean.astype(np.float32), std.astype(np.float32), float(scale))


def transitions(obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray) -> np.ndarray:
    """Per-step transition features ``(s, a, r / 10, s')``: ``[..., T, 2D + A + 1]``."""
    return np.concatenate([obs[..., :-1, :], actions, rewards[..., None] / REWARD_SCALE,
                           obs[..., 1:, :]], axis=-1).astype(np.float32)


def context_windows(trans: np.ndarray, h: int) -> np.ndarray:
    """For each step t, the ``h`` transitions before it (zeros before the episode):
    ``[..., T, F]`` -> ``[..., T, h, F]``.

    Example:
        >>> w = context_windows(np.arange(3.0).reshape(3, 1), 2)
        >>> w[..., 0].tolist()
        [[0.0, 0.0], [0.0, 0.0], [0.0, 1.0]]
    """
    pad = np.zeros((*trans.shape[:-2], h, trans.shape[-1]), trans.dtype)
    padded = np.concatenate([pad, trans], axis=-2)
    win = np.lib.stride_tricks.sliding_window_view(padded, h, axis=-2)  # [..., T+1, F, h]
    return np.swapaxes(win, -1, -2)[..., : trans.shape[-2], :, :]


# ---- 1. the complementary prompt ---------------------------------------------------------
def complementary_segment(errors: np.ndarray, length: int, *, min_start: int = 0,
                          rng: np.random.Generator | None = None) -> int:
    """Start of the ``length``-step segment whose summed world-model error is largest
    (with ``rng``: sampled in proportion to the summed error).

    Args:
        errors: ``[T]`` per-step prediction errors of one episode.
        length: the prompt length.
        min_start: earliest start (Meta-DT skips the steps before a full context).
        rng: sample instead of taking the argmax.

    Example:
        >>> complementary_segment(np.array([0, 0, 5, 5, 0, 0, 1.0]), 2)
        2
    """
    if length >= len(errors):
        return 0
    sums = np.convolve(errors, np.ones(length), mode="valid")  # sums[p] = errors[p:p+length]
    lo = min(max(min_start, 0), len(sums) - 1)
    sums = sums[lo:]
    if rng is None or sums.sum() <= 0:
        return lo + int(np.argmax(sums))
    return lo + int(rng.choice(len(sums), p=sums / sums.sum()))


# ---- 2. the networks ---------------------------------------------------------------------
@functools.cache
def _nets() -> tuple[type, type]:
    import torch
    from torch import nn

    def mlp(i: int, h: int, o: int) -> Any:
        return nn.Sequential(nn.Linear(i, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(),
                             nn.Linear(h, o))

    class WorldModel(nn.Module):
        """Context encoder (GRU over transitions -> z) and reward/dynamics decoders."""

        def __init__(self, d: int, a: int, cfg: MetaDTConfig) -> None:
            super().__init__()
            h, z = cfg.wm_hidden, cfg.context_dim
            self.embed = nn.Sequential(nn.Linear(2 * d + a + 1, h), nn.ReLU())
            self.gru = nn.GRU(h, h, batch_first=True)
            self.to_z = nn.Linear(h, z)
            self.reward = mlp(2 * d + a + z, h, 1)
            self.dynamics = mlp(d + a + z, h, d)

        def encode(self, ctx: Any) -> Any:
            """``[B, h, F]`` transitions -> ``[B, z]`` task representation."""
            _, last = self.gru(self.embed(ctx))
            return self.to_z(last[-1])

        def predict(self, s: Any, a: Any, s2: Any, z: Any) -> tuple[Any, Any]:
            """Predicted reward (scaled) and state change."""
            r = self.reward(torch.cat([s, a, s2, z], -1)).squeeze(-1)
            return r, self.dynamics(torch.cat([s, a, z], -1))

    class ConditionalDT(nn.Module):
        """Decision transformer over ``(R, s [+ z], a)`` tokens with an optional prompt."""

        def __init__(self, d: int, a: int, max_t: int, cfg: MetaDTConfig) -> None:
            super().__init__()
            h = cfg.d_model
            zd = cfg.context_dim if cfg.uses_context else 0
            self.embed_t, self.embed_r = nn.Embedding(max_t, h), nn.Linear(1, h)
            self.embed_s, self.embed_a = nn.Linear(d + zd, h), nn.Linear(a, h)
            if cfg.uses_prompt:
                self.p_t, self.p_r = nn.Embedding(max_t, h), nn.Linear(1, h)
                self.p_s, self.p_a = nn.Linear(d, h), nn.Linear(a, h)
            self.ln = nn.LayerNorm(h)
            layer = nn.TransformerEncoderLayer(h, cfg.n_heads, 4 * h, dropout=cfg.dropout,
                                               activation="gelu", batch_first=True,
                                               norm_first=True)
            self.blocks = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
            self.head = nn.Sequential(nn.LayerNorm(h), nn.Linear(h, a), nn.Tanh())

        @staticmethod
        def _tokens(r: Any, s: Any, a: Any) -> Any:
            b, n, h = s.shape
            return torch.stack([r, s, a], 2).reshape(b, 3 * n, h)

        def forward(self, s: Any, a: Any, r: Any, t: Any, z: Any = None,
                    prompt: tuple[Any, Any, Any, Any] | None = None) -> Any:
            """Actions predicted at each state token: ``[B, L, A]``."""
            et = self.embed_t(t)
            s_in = s if z is None else torch.cat([s, z], -1)
            x = self._tokens(self.embed_r(r[..., None]) + et, self.embed_s(s_in) + et,
                             self.embed_a(a) + et)
            n_main = x.shape[1]
            if prompt is not None:
                ps, pa, pr, pt = prompt
                pe = self.p_t(pt)
                px = self._tokens(self.p_r(pr[..., None]) + pe, self.p_s(ps) + pe,
                                  self.p_a(pa) + pe)
                x = torch.cat([px, x], 1)
            x = self.ln(x)
            n = x.shape[1]
            mask = nn.Transformer.generate_square_subsequent_mask(n, device=x.device)
            y = self.blocks(x, mask=mask, is_causal=True)[:, n - n_main:]
            return self.head(y[:, 1::3])

    return WorldModel, ConditionalDT


# ---- 3. training ---------------------------------------------------------------------------
def _torch_seed(cfg: MetaDTConfig, stream: str, step: int) -> int:
    return int(np.random.SeedSequence([cfg.seed, _STREAM[stream], step]).generate_state(1)[0])


def _lr(base: float, warmup: int, step: int) -> float:
    return base * min(1.0, (step + 1) / max(1, warmup))


def world_model_step(wm: Any, opt: Any, data: Prepared, trans: np.ndarray,
                     cfg: MetaDTConfig, step: int) -> float:
    """One world-model step on ``wm_batch_size`` random transitions; returns the loss."""
    import torch

    rng = np.random.default_rng([cfg.seed, _STREAM["wm"], step])
    n = rng.integers(0, data.obs.shape[0], cfg.wm_batch_size)
    t = rng.integers(0, data.T, cfg.wm_batch_size)
    ctx = torch.from_numpy(np.ascontiguousarray(
        context_windows(trans[n], cfg.context_horizon)[np.arange(len(n)), t]))
    s, s2 = torch.from_numpy(data.obs[n, t]), torch.from_numpy(data.obs[n, t + 1])
    a = torch.from_numpy(data.actions[n, t])
    r = torch.from_numpy(data.rewards[n, t] / REWARD_SCALE)
    wm.train()
    r_hat, ds_hat = wm.predict(s, a, s2, wm.encode(ctx))
    loss = ((r_hat - r) ** 2).mean() + ((ds_hat - (s2 - s)) ** 2).mean()
    for g in opt.param_groups:
        g["lr"] = cfg.wm_lr
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach())


def world_model_outputs(wm: Any, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
                        cfg: MetaDTConfig) -> tuple[np.ndarray, np.ndarray]:
    """Task representations ``z_t`` (``[N, T, z]``) and per-step prediction errors
    (``[N, T]``: reward error + mean state-change error) of normalised episodes."""
    import torch

    trans = transitions(obs, actions, rewards)
    win = context_windows(trans, cfg.context_horizon)
    n, steps = actions.shape[:2]
    wm.eval()
    with torch.no_grad():
        ctx = torch.from_numpy(np.ascontiguousarray(win.reshape(n * steps, *win.shape[-2:])))
        z = torch.cat([wm.encode(c) for c in ctx.split(4096)])
        s = torch.from_numpy(obs[:, :-1].reshape(n * steps, -1))
        s2 = torch.from_numpy(obs[:, 1:].reshape(n * steps, -1))
        a = torch.from_numpy(actions.reshape(n * steps, -1))
        r_hat, ds_hat = wm.predict(s, a, s2, z)
        r = torch.from_numpy(rewards.reshape(-1) / REWARD_SCALE)
        err = (r_hat - r).abs() + (ds_hat - (s2 - s)).abs().mean(-1)
    return z.numpy().reshape(n, steps, -1), err.numpy().reshape(n, steps)


@dataclass
class _Aux:
    """What the decision transformer's batches read besides the data."""

    z: np.ndarray | None = None  # [N, T, z]
    errors: np.ndarray | None = None  # [N, T]


def _prompt_arrays(obs: np.ndarray, actions: np.ndarray, rtg: np.ndarray,
                   start: int, k: int) -> tuple[np.ndarray, ...]:
    sl = slice(start, start + k)
    return obs[sl], actions[sl], rtg[sl], np.arange(start, start + k)


def dt_batch(data: Prepared, aux: _Aux, cfg: MetaDTConfig, step: int) -> dict[str, Any]:
    """The batch of step ``step`` (a pure function of seed and step): windows, their
    task representations and their prompts."""
    rng = np.random.default_rng([cfg.seed, _STREAM["dt"], step])
    win, k = min(cfg.horizon, data.T), min(cfg.prompt_length, data.T)
    n = rng.integers(0, data.obs.shape[0], cfg.batch_size)
    t0 = rng.integers(0, data.T - win + 1, cfg.batch_size)
    idx = t0[:, None] + np.arange(win)
    rows = n[:, None]
    batch: dict[str, Any] = {"s": data.obs[rows, idx], "a": data.actions[rows, idx],
                             "r": data.rtg[rows, idx], "t": idx}
    if aux.z is not None:
        batch["z"] = aux.z[rows, idx]
    drop = cfg.variant == "meta-dt" and rng.random() < cfg.prompt_drop
    if cfg.uses_prompt and not drop:
        parts = [_training_prompt(data, aux, cfg, int(i), k, rng) for i in n]
        batch["prompt"] = tuple(np.stack(p) for p in zip(*parts, strict=True))
    return batch


def _training_prompt(data: Prepared, aux: _Aux, cfg: MetaDTConfig, n: int, k: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    task = int(data.task_of[n])
    if cfg.variant == "prompt-dt":
        e = data.expert[task]
        start = data.T - k
    else:
        same = data.by_task(task)
        others = same[same != n] if len(same) > 1 else same
        e = int(rng.choice(others))
        assert aux.errors is not None
        start = complementary_segment(aux.errors[e], k, min_start=cfg.context_horizon,
                                      rng=rng if cfg.prompt_sampling else None)
    return _prompt_arrays(data.obs[e], data.actions[e], data.rtg[e], start, k)


def _tensors(batch: dict[str, Any]) -> dict[str, Any]:
    import torch

    out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()
           if k != "prompt"}
    if "prompt" in batch:
        out["prompt"] = tuple(torch.from_numpy(np.ascontiguousarray(p)) for p in batch["prompt"])
    return out


def dt_step(model: Any, opt: Any, data: Prepared, aux: _Aux, cfg: MetaDTConfig,
            step: int) -> float:
    """One decision-transformer step (action MSE); returns the loss."""
    import torch

    b = _tensors(dt_batch(data, aux, cfg, step))
    model.train()
    with torch.random.fork_rng(devices=[]):  # dropout masks: a function of (seed, step)
        torch.manual_seed(_torch_seed(cfg, "torch-dt", step))
        pred = model(b["s"], b["a"], b["r"], b["t"], b.get("z"), b.get("prompt"))
    loss = ((pred - b["a"]) ** 2).mean()
    for g in opt.param_groups:
        g["lr"] = _lr(cfg.lr, cfg.warmup_steps, step)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
    opt.step()
    return float(loss.detach())


# ---- 4. acting and zero-shot evaluation ---------------------------------------------------
class DTActor:
    """The trained transformer as an ``act(obs, prev_reward)`` policy for one episode.

    Keeps the episode's history; for ``meta-dt`` computes ``z_t`` online from the last
    ``context_horizon`` transitions.
    """

    def __init__(self, bundle: Bundle, prompt: tuple[np.ndarray, ...] | None) -> None:
        import torch

        self.b, self.torch = bundle, torch
        self.prompt = None if prompt is None else tuple(
            torch.from_numpy(np.ascontiguousarray(p))[None] for p in prompt)
        self.s: list[np.ndarray] = []
        self.a: list[np.ndarray] = []
        self.r: list[float] = []
        self.rtg = [bundle.target_return]
        self.z: list[np.ndarray] = []

    def __call__(self, obs: np.ndarray, prev_reward: float) -> np.ndarray:
        b, torch, cfg = self.b, self.torch, self.b.cfg
        s = ((np.asarray(obs, np.float32) - b.mean) / b.std).astype(np.float32)
        if self.s:
            self.r.append(prev_reward)
            self.rtg.append(self.rtg[-1] - prev_reward / b.scale)
        self.s.append(s)
        if cfg.uses_context:
            self.z.append(self._context())
        t = len(self.s) - 1
        lo = max(0, len(self.s) - cfg.horizon)
        a_hist = np.array([*self.a[lo:], np.zeros(b.act_dim, np.float32)], np.float32)
        x = {"s": np.array(self.s[lo:]), "a": a_hist, "r": np.array(self.rtg[lo:], np.float32),
             "t": np.arange(lo, t + 1)}
        if cfg.uses_context:
            x["z"] = np.array(self.z[lo:], np.float32)
        xt = {k: torch.from_numpy(np.ascontiguousarray(v))[None] for k, v in x.items()}
        with torch.no_grad():
            act = b.dt(xt["s"], xt["a"], xt["r"], xt["t"], xt.get("z"), self.prompt)[0, -1]
        action = act.numpy().astype(np.float32)
        self.a.append(action)
        return action

    def _context(self) -> np.ndarray:
        b, torch, h = self.b, self.torch, self.b.cfg.context_horizon
        n = len(self.s) - 1  # transitions so far
        if n == 0:
            ctx = np.zeros((h, 2 * b.obs_dim + b.act_dim + 1), np.float32)
        else:
            lo = max(0, n - h)
            tr = transitions(np.array(self.s[lo:]), np.array(self.a[lo:n]),
                             np.array(self.r[lo:n], np.float32))
            ctx = np.concatenate([np.zeros((h - len(tr), tr.shape[1]), np.float32), tr])
        with torch.no_grad():
            return b.wm.encode(torch.from_numpy(ctx)[None])[0].numpy()


@dataclass
class Bundle:
    """Everything a trained policy needs to act: models, normalisation, configuration."""

    cfg: MetaDTConfig
    dt: Any
    wm: Any
    mean: np.ndarray
    std: np.ndarray
    scale: float
    target_return: float
    obs_dim: int
    act_dim: int


def _episode_arrays(bundle: Bundle, ep: Episode) -> tuple[np.ndarray, ...]:
    obs = ((ep.obs - bundle.mean) / bundle.std).astype(np.float32)
    rtg = np.flip(np.cumsum(np.flip(ep.rewards))) / bundle.scale
    return obs, ep.actions.astype(np.float32), ep.rewards.astype(np.float32), \
        np.ascontiguousarray(rtg, np.float32)


def run_task(bundle: Bundle, env: Any, max_steps: int, key: str,
             expert: Episode | None = None) -> dict[str, Any]:
    """Zero-shot episode(s) of one task for ``bundle``'s variant (see step 4 above)."""
    cfg, k = bundle.cfg, min(bundle.cfg.prompt_length, max_steps)
    out: dict[str, Any] = {"task": key}
    prompt = None
    if cfg.variant == "meta-dt":
        first = rollout(env, DTActor(bundle, None), max_steps, key)
        obs, act, rew, rtg = _episode_arrays(bundle, first)
        _, err = world_model_outputs(bundle.wm, obs[None], act[None], rew[None], cfg)
        start = complementary_segment(err[0], k, min_start=cfg.context_horizon)
        prompt, out["first_success"], out["prompt_start"] = (
            _prompt_arrays(obs, act, rtg, start, k), first.solved, start)
    elif cfg.variant == "prompt-dt":
        if expert is None:
            raise MetaDTError(f"prompt-dt needs an expert episode of task {key}.")
        obs, act, _, rtg = _episode_arrays(bundle, expert)
        prompt = _prompt_arrays(obs, act, rtg, max_steps - k, k)
    ep = rollout(env, DTActor(bundle, prompt), max_steps, key)
    out.update(success=ep.solved, ret=round(ep.ret, 3))
    return out


def evaluate(bundle: Bundle, suite: Any, refs: Sequence[Any], max_steps: int,
             experts: dict[str, Episode]) -> dict[str, Any]:
    """Success rate of ``bundle`` over the tasks ``refs`` (each a fresh environment)."""
    bundle.dt.eval()
    bundle.wm.eval()
    per = [run_task(bundle, suite.make_env(r), max_steps, r.key, experts.get(r.key))
           for r in refs]
    out = {"success": success_rate([p["success"] for p in per]),
           "return": float(np.mean([p["ret"] for p in per])) if per else 0.0, "tasks": per}
    if per and "first_success" in per[0]:
        out["first_success"] = success_rate([p["first_success"] for p in per])
    return out


# ---- 5. the run: resumable training with checkpoints and a report --------------------------
def train_meta_dt(data_dir: str | Path, out: str | Path, cfg: MetaDTConfig, *,
                  progress: bool = True, log: Callable[[str], None] | None = None,
                  threads: int | None = 1, suite: Any = None) -> dict[str, Any]:
    """Train (or resume) ``cfg.variant`` on a dataset's training tasks, evaluate zero-shot
    on its test tasks along the way, and write ``report.html``.

    Args:
        data_dir: a dataset folder from :func:`~metaskill.metalearn.rl.metaworld.collect_dataset`.
        out: the run folder (``manifest.json``, ``state.pt``, ``report.html``); a folder
            holding a run of another configuration is refused, except for a larger
            ``steps`` (training goes on).
        cfg: the configuration.
        progress: show progress bars.
        log: where to send one-line messages.
        threads: torch CPU threads during the call (restored after; None: unchanged). One
            is fastest for these small models: per-step acting took 3 ms on one thread and
            70 ms on two busy cores.
        suite: the dataset's :class:`~metaskill.metalearn.rl.metaworld.Suite`, if already
            built (ML10 takes seconds to build); None: built here.

    Returns:
        The run manifest (``evals``: success per evaluation; ``losses``; ``wall_s``).

    Example (needs the ``metarl`` extra)::

        m = train_meta_dt("data/ml1-reach", "runs/dt", MetaDTConfig(variant="dt", steps=500))
    """
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _train(Path(data_dir), Path(out), cfg, progress, log or (lambda _m: None), suite)
    finally:
        torch.set_num_threads(before)


def _train(data_dir: Path, out: Path, cfg: MetaDTConfig, progress: bool,
           log: Callable[[str], None], suite: Any) -> dict[str, Any]:
    import torch

    data_set = load_dataset(data_dir)
    manifest = _start_run(out, cfg, data_set)
    t_start = time.time()
    data = prepare(data_set.episodes("train"))
    experts = {e.task: e for e in data_set.episodes("test")}
    experts.update({data.tasks[i]: _episode_of(data, e) for i, e in enumerate(data.expert)})
    wm_cls, dt_cls = _nets()
    d, a = data.obs.shape[-1], data.actions.shape[-1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_torch_seed(cfg, "init", 0))
        wm, dt = wm_cls(d, a, cfg), dt_cls(d, a, data.T, cfg)
    wm_opt = torch.optim.Adam(wm.parameters(), lr=cfg.wm_lr)
    dt_opt = torch.optim.AdamW(dt.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if (out / STATE).exists() and (manifest["wm_step"] or manifest["step"]):
        state = torch.load(out / STATE, weights_only=True)
        for obj, key in ((wm, "wm"), (wm_opt, "wm_opt"), (dt, "dt"), (dt_opt, "dt_opt")):
            obj.load_state_dict(state[key])
        log(f"resuming at world-model step {manifest['wm_step']}, DT step {manifest['step']}")
    save = functools.partial(_checkpoint, out, manifest, {"wm": wm, "wm_opt": wm_opt,
                                                          "dt": dt, "dt_opt": dt_opt})
    aux = _Aux()
    if cfg.uses_context:
        trans = transitions(data.obs, data.actions, data.rewards)
        _train_loop("world model", manifest, "wm_step", "wm_losses", cfg.wm_steps, progress,
                    lambda s: world_model_step(wm, wm_opt, data, trans, cfg, s), cfg, save,
                    t_start)
        aux.z, aux.errors = world_model_outputs(wm, data.obs, data.actions, data.rewards, cfg)
    bundle = Bundle(cfg, dt, wm, data.mean, data.std, data.scale,
                    float(data.rtg[:, 0].max()), d, a)
    dc = data_set.config
    if suite is None:
        suite = load_suite(dc.benchmark, dc.env, seed=dc.seed, n_train=dc.n_train,
                           n_test=dc.n_test)
    test_refs = data_set.task_refs("test")[: cfg.eval_test_tasks]
    train_refs = data_set.task_refs("train")[: cfg.eval_train_tasks]

    def on_step(step: int) -> None:
        if step == cfg.steps or (cfg.eval_every and step % cfg.eval_every == 0):
            _evaluate_into(manifest, bundle, suite, test_refs, train_refs, dc.max_steps,
                           experts, step, log)

    _train_loop("decision transformer", manifest, "step", "losses", cfg.steps, progress,
                lambda s: dt_step(dt, dt_opt, data, aux, cfg, s), cfg, save, t_start, on_step)
    if not manifest["evals"] or manifest["evals"][-1]["step"] != manifest["step"]:
        _evaluate_into(manifest, bundle, suite, test_refs, train_refs, dc.max_steps, experts,
                       manifest["step"], log)
    manifest["complete"] = True
    save(t_start)
    manifest.pop("_t", None)
    write_report(out)
    return manifest


def _episode_of(data: Prepared, n: int) -> Episode:
    raw = data.obs[n] * data.std + data.mean
    return Episode(data.tasks[int(data.task_of[n])], raw, data.actions[n], data.rewards[n],
                   np.zeros(data.T, bool))


def _train_loop(label: str, manifest: dict[str, Any], step_key: str, loss_key: str,
                total: int, progress: bool, step_fn: Callable[[int], float],
                cfg: MetaDTConfig, save: Callable[[float], None], t_start: float,
                on_step: Callable[[int], None] | None = None) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    start = manifest[step_key]
    every = max(1, total // 200)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(),
                   disable=not progress)
    with bar:
        task = bar.add_task(label, total=total, completed=start, loss=float("nan"))
        for step in range(start, total):
            loss = step_fn(step)
            manifest[step_key] = step + 1
            if step % every == 0 or step + 1 == total:
                manifest[loss_key].append([step + 1, round(loss, 6)])
            bar.update(task, advance=1, loss=loss)
            if on_step is not None:
                on_step(step + 1)
            if (step + 1) % cfg.ckpt_every == 0 or step + 1 == total:
                save(t_start)


def _evaluate_into(manifest: dict[str, Any], bundle: Bundle, suite: Any, test_refs: list[Any],
                   train_refs: list[Any], max_steps: int, experts: dict[str, Episode],
                   step: int, log: Callable[[str], None]) -> None:
    t0 = time.time()
    row: dict[str, Any] = {"step": step}
    for split, refs in (("test", test_refs), ("train", train_refs)):
        if refs:
            row[split] = evaluate(bundle, suite, refs, max_steps, experts)
    row["eval_s"] = round(time.time() - t0, 2)
    manifest["evals"].append(row)
    test = row.get("test", {}).get("success", float("nan"))
    train = row.get("train", {}).get("success", float("nan"))
    log(f"step {step}: test success {test:.2f}, train success {train:.2f} "
        f"({row['eval_s']:.0f} s)")


def _start_run(out: Path, cfg: MetaDTConfig, data_set: Dataset) -> dict[str, Any]:
    path = out / MANIFEST
    given = asdict(cfg)
    if path.exists():
        manifest = read_run(out)
        stored = manifest["config"]
        diff = sorted(k for k in given if k != "steps" and stored.get(k) != given[k])
        if diff:
            raise MetaDTError(f"'{out}' holds a run with different {', '.join(diff)}; use "
                              "another --out (only --steps may change on resume).")
        if given["steps"] < manifest["step"]:
            raise MetaDTError(f"'{out}' is already at step {manifest['step']} > --steps "
                              f"{given['steps']}.")
        if manifest["data_created"] != data_set.manifest.get("created"):
            raise MetaDTError(f"'{out}' was trained on another dataset than '{data_set.root}'.")
        manifest["config"], manifest["complete"] = given, False
        return manifest
    out.mkdir(parents=True, exist_ok=True)
    return {"schema_version": SCHEMA_VERSION, "kind": "meta-dt", "variant": cfg.variant,
            "config": given, "data": str(data_set.root),
            "data_created": data_set.manifest.get("created"),
            "benchmark": data_set.manifest["benchmark"], "env": data_set.manifest["env"],
            "wm_step": 0, "step": 0, "wm_losses": [], "losses": [], "evals": [],
            "wall_s": 0.0, "complete": False}


def _checkpoint(out: Path, manifest: dict[str, Any], objs: dict[str, Any],
                t_start: float) -> None:
    import torch

    tmp = out / (STATE + ".tmp")
    torch.save({k: v.state_dict() for k, v in objs.items()}, tmp)
    tmp.replace(out / STATE)
    now = time.time()
    manifest["wall_s"] = round(manifest["wall_s"] + now - manifest.pop("_t", t_start), 2)
    manifest["_t"] = now
    _write_json(out / MANIFEST, {k: v for k, v in manifest.items() if k != "_t"})


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def read_run(out: str | Path) -> dict[str, Any]:
    """Read and check a run's ``manifest.json``."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        raise MetaDTError(f"no Meta-DT run in '{out}' (missing {MANIFEST}).")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise MetaDTError(f"'{path}' is not valid JSON ({e}).") from None
    if manifest.get("schema_version") != SCHEMA_VERSION or manifest.get("kind") != "meta-dt":
        raise MetaDTError(f"'{path}' is not a Meta-DT run of schema version {SCHEMA_VERSION}.")
    return manifest


# ---- 6. the report -----------------------------------------------------------------------
def write_report(out: str | Path, runs: Sequence[dict[str, Any]] | None = None) -> Path:
    """Write ``report.html`` into ``out``: a summary table, success curves (test and
    training tasks against steps) and loss curves of the run there (or of ``runs``).

    Example (needs matplotlib)::

        write_report("runs/meta-dt")
    """
    from metaskill.eval.report import Section, figure_svg, render_html

    runs = list(runs) if runs is not None else [read_run(out)]
    rows = "".join(
        f"<tr><td>{_label(r)}</td><td>{r['benchmark']} {r['env'] or ''}</td>"
        f"<td>{r['step']}</td><td>{_last(r, 'test')}</td><td>{_last(r, 'train')}</td>"
        f"<td>{r['wall_s']:.0f}</td></tr>" for r in runs)
    table = ("<table><tr><th>variant</th><th>benchmark</th><th>steps</th>"
             "<th>test success</th><th>train success</th><th>wall s</th></tr>"
             f"{rows}</table>")
    curves = figure_svg(lambda fig: _draw_success(fig, runs), (7.0, 3.0), "metadt-succ")
    losses = figure_svg(lambda fig: _draw_losses(fig, runs), (7.0, 2.6), "metadt-loss")
    sections = [Section("summary", "Summary", table),
                Section("success", "Success rate", curves),
                Section("loss", "Training loss", losses)]
    page = render_html([], sections=[lambda _r, s=s: s for s in sections],
                       title="Meta-DT on Meta-World",
                       subtitle=f"{len(runs)} run(s); zero-shot success on held-out tasks")
    path = Path(out) / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def _label(run: dict[str, Any]) -> str:
    return f"{run['variant']} seed {run['config']['seed']}"


def _last(run: dict[str, Any], split: str) -> str:
    evals = [e for e in run["evals"] if split in e]
    return f"{100 * evals[-1][split]['success']:.0f}%" if evals else "-"


def _draw_success(fig: Any, runs: Sequence[dict[str, Any]]) -> None:
    axes = fig.subplots(1, 2, sharey=True)
    for ax, split in zip(axes, ("test", "train"), strict=True):
        for r in runs:
            pts = [(e["step"], e[split]["success"]) for e in r["evals"] if split in e]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=_label(r))
        ax.set_title(f"{split} tasks")
        ax.set_xlabel("DT step")
        ax.set_ylim(-0.05, 1.05)
    axes[0].set_ylabel("success rate")
    axes[0].legend(fontsize=7)


def _draw_losses(fig: Any, runs: Sequence[dict[str, Any]]) -> None:
    axes = fig.subplots(1, 2)
    for r in runs:
        if r["losses"]:
            axes[0].plot(*zip(*r["losses"], strict=True), label=_label(r))
        if r["wm_losses"]:
            axes[1].plot(*zip(*r["wm_losses"], strict=True), label=_label(r))
    axes[0].set_title("decision transformer (action MSE)")
    axes[1].set_title("world model (reward + dynamics MSE)")
    for ax in axes:
        ax.set_xlabel("step")
        if ax.lines:
            ax.set_yscale("log")
        else:
            ax.text(0.5, 0.5, "not trained by this variant", ha="center",
                    transform=ax.transAxes)


__all__ = [
    "SCHEMA_VERSION",
    "VARIANTS",
    "Bundle",
    "DTActor",
    "MetaDTConfig",
    "MetaDTError",
    "Prepared",
    "complementary_segment",
    "context_windows",
    "dt_batch",
    "dt_step",
    "evaluate",
    "prepare",
    "read_run",
    "run_task",
    "train_meta_dt",
    "transitions",
    "world_model_outputs",
    "world_model_step",
    "write_report",
]
