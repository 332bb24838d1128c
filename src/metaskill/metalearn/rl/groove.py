"""GROOVE: environment parameters for meta-training chosen by algorithmic regret.

Jackson, Jiang, Parker-Holder, Vuorio, Lu, Farquhar, Whiteson, Foerster (2023),
"Discovering General Reinforcement Learning Algorithms with Adversarial Environment Design"
(NeurIPS 2023, arXiv:2310.02782). GROOVE meta-trains a learned RL objective on a curriculum
of environment *levels* kept in a buffer in the manner of Prioritized Level Replay (Jiang
et al. 2021, arXiv:2010.03934): each level is scored by its **algorithmic regret** (AR),

    AR(level) = return(handcrafted algorithm trained on level) - return(learned algorithm on level)

and levels with high AR are replayed more often; the rest of each batch is fresh levels
drawn uniformly. Uniform sampling of fresh levels alone ("domain randomisation") is the
control.

The algorithm box (one meta-training generation)::

    for each of the K slots of this generation:
        with probability p_replay (and enough scored levels in the buffer):
            take a buffer level, P(level) ~ rank prioritisation of its AR score
        else:
            draw a fresh level uniformly from the parameter box
    ... the caller trains every ES candidate, the ES mean and PPO on the K levels ...
    AR(level) = PPO's final return - the population's mean final return on that level
    put each fresh level in the buffer (replacing the lowest-scoring one once it is full)

What we changed, and why:

* A *level* here is a point in a box of gymnax environment parameters (e.g. CartPole's pole
  length, pole mass, gravity, force), not a Grid-World layout and lifetime.
* The antagonist is PPO (the paper used A2C, the hand-designed algorithm LPG was compared
  with; our learned algorithm is LPO, a PPO variant). It is trained on the same levels,
  with the same budget and the same seeds as the ES candidates in the same batched call,
  so AR costs one extra inner run per generation instead of a separate training job; the
  learned algorithm's return is the population mean (the candidates are the ES mean plus
  small noise), which needs no extra run.
* Replay picks by PLR's rank prioritisation ``1/rank^(1/temperature)`` (sampled without
  replacement) rather than GROOVE's top-k by score: the batches here are tiny (K = 1 to 4),
  where top-k would replay the same levels every generation.
* The buffer is small and lives in numpy, so it checkpoints to JSON with the ES state.

Example:
    >>> s = LevelSampler(LevelSamplerConfig(kind="groove", dims=2, levels_per_generation=2), seed=0)
    >>> levels = s.sample()          # (2, 2) unit-box points
    >>> s.update(levels, [5.0, -1.0]) # their algorithmic regrets
    >>> s.state()["buffer_size"]
    2
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any, Literal

import numpy as np

from metaskill.core.errors import InvalidParameterError, MethodError

SamplerKind = Literal["fixed", "uniform", "groove"]


# ---- the parameter box of each environment ----------------------------------------------
#: Per environment: (field, low, high) of the gymnax ``EnvParams`` the sampler may vary.
#: The default value of every field lies inside its range.
PARAM_SPACES: Mapping[str, tuple[tuple[str, float, float], ...]] = MappingProxyType({
    "CartPole-v1": (
        ("length", 0.2, 1.5),        # half pole length (default 0.5)
        ("masspole", 0.05, 0.5),     # default 0.1
        ("gravity", 4.9, 19.6),      # default 9.8
        ("force_mag", 5.0, 15.0),    # default 10
    ),
    "Acrobot-v1": (
        ("link_length_1", 0.5, 1.5),
        ("link_mass_1", 0.5, 1.5),
        ("link_mass_2", 0.5, 1.5),
        ("dt", 0.1, 0.3),
    ),
    "MountainCar-v0": (
        ("force", 0.0007, 0.0015),
        ("gravity", 0.0015, 0.0035),
    ),
})


def param_space(env: str) -> tuple[tuple[str, float, float], ...]:
    """The parameter box of ``env``; a one-line error names the environments that have one.

    Example:
        >>> [name for name, _, _ in param_space("CartPole-v1")][:2]
        ['length', 'masspole']
    """
    if env not in PARAM_SPACES:
        raise MethodError(
            f"lpo: no parameter box for {env!r} (uniform/groove samplers vary environment "
            f"parameters); use --sampler fixed, or one of: {', '.join(PARAM_SPACES)}")
    return PARAM_SPACES[env]


def level_params(env: str, default: Any, unit: Sequence[float]) -> Any:
    """The gymnax ``EnvParams`` of a level: ``default`` with the box fields set from ``unit``.

    Args:
        env: gymnax environment id.
        default: the environment's default ``EnvParams`` (a flax struct dataclass).
        unit: one point of the unit box, one coordinate per field of :func:`param_space`.

    Example (``default`` from ``gymnax.make("CartPole-v1")``)::

        p = level_params("CartPole-v1", default, [0.0, 0.0, 0.5, 0.5])  # shortest, lightest pole
    """
    space = param_space(env)
    values = {name: lo + float(u) * (hi - lo)
              for (name, lo, hi), u in zip(space, unit, strict=True)}
    params = default.replace(**values)
    if env == "CartPole-v1":  # derived fields of the cart-pole dynamics
        params = params.replace(total_mass=params.masscart + params.masspole,
                                polemass_length=params.masspole * params.length)
    return params


# ---- the sampler ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LevelSamplerConfig:
    """How meta-training levels are chosen.

    Attributes:
        kind: ``fixed`` (the environment's default parameters every generation, as LPO was
            meta-trained), ``uniform`` (fresh uniform levels: the control) or ``groove``.
        dims: dimensions of the unit box (the number of fields of the parameter box).
        levels_per_generation: K, levels every ES candidate is trained on per generation.
        buffer_size: GROOVE's level buffer capacity.
        p_replay: probability that a slot replays a buffer level (GROOVE: 0.5).
        temperature: PLR rank-prioritisation temperature (lower: greedier).
    """

    kind: SamplerKind = "fixed"
    dims: int = 0
    levels_per_generation: int = 1
    buffer_size: int = 32
    p_replay: float = 0.5
    temperature: float = 0.3

    def __post_init__(self) -> None:
        if self.kind not in ("fixed", "uniform", "groove"):
            raise InvalidParameterError(
                f"sampler must be fixed, uniform or groove, not {self.kind!r}")
        if self.levels_per_generation < 1:
            raise InvalidParameterError("levels_per_generation must be at least 1")
        if self.kind != "fixed" and self.dims < 1:
            raise InvalidParameterError(
                f"the {self.kind} sampler needs a parameter box (dims >= 1)")
        if not 0.0 <= self.p_replay <= 1.0:
            raise InvalidParameterError(f"p_replay must be in [0, 1], not {self.p_replay}")
        if self.temperature <= 0 or self.buffer_size < self.levels_per_generation:
            raise InvalidParameterError(
                "temperature must be > 0 and buffer_size >= levels_per_generation")


def rank_weights(scores: np.ndarray, temperature: float) -> np.ndarray:
    """PLR's rank prioritisation: ``P(i) ~ 1 / rank(score_i)^(1/temperature)`` (rank 1 = highest).

    Example:
        >>> rank_weights(np.array([0.0, 2.0, 1.0]), 1.0).round(3).tolist()
        [0.182, 0.545, 0.273]
    """
    ranks = np.empty(len(scores))
    ranks[np.argsort(-scores, kind="stable")] = np.arange(1, len(scores) + 1)
    w = ranks ** (-1.0 / temperature)
    return w / w.sum()


class LevelSampler:
    """Chooses the levels (unit-box points) of each meta-training generation.

    ``sample()`` returns the K levels of the next generation; ``update(levels, regrets)``
    records their algorithmic regrets (``groove`` keeps them in its buffer; the others
    ignore them). ``state()`` / ``from_state()`` round-trip everything, the random
    generator included, through plain JSON.

    Example:
        >>> s = LevelSampler(LevelSamplerConfig(kind="uniform", dims=3), seed=1)
        >>> s.sample().shape
        (1, 3)
    """

    def __init__(self, config: LevelSamplerConfig, seed: int) -> None:
        self.config = config
        self._rng = np.random.default_rng(seed)
        self._levels = np.zeros((0, config.dims))
        self._scores = np.zeros(0)
        self._last: list[bool] = []  # which slots of the last sample were replays

    def sample(self) -> np.ndarray:
        """The K levels of the next generation, shape ``(K, dims)`` (``(K, 0)`` for ``fixed``)."""
        cfg = self.config
        k = cfg.levels_per_generation
        if cfg.kind == "fixed":
            self._last = [False] * k
            return np.zeros((k, 0))
        fresh = self._rng.random((k, cfg.dims))
        if cfg.kind == "uniform" or len(self._scores) < k:
            self._last = [False] * k
            return fresh
        replay = self._rng.random(k) < cfg.p_replay
        n = int(replay.sum())
        if n:
            p = rank_weights(self._scores, cfg.temperature)
            picked = self._rng.choice(len(self._scores), size=n, replace=False, p=p)
            fresh[replay] = self._levels[picked]
        self._last = replay.tolist()
        return fresh

    def update(self, levels: np.ndarray, regrets: Sequence[float]) -> None:
        """Record the algorithmic regret of each level of the last sample (``groove`` only)."""
        if self.config.kind != "groove":
            return
        for level, score, was_replay in zip(np.asarray(levels), regrets, self._last, strict=True):
            hit = np.flatnonzero(np.all(self._levels == level, axis=1)) if was_replay else []
            if len(hit):
                self._scores[hit[0]] = float(score)  # a replayed level: refresh its score
            elif len(self._scores) < self.config.buffer_size:
                self._levels = np.vstack([self._levels, level])
                self._scores = np.append(self._scores, float(score))
            elif score > self._scores.min():  # full: the new level replaces the lowest
                i = int(np.argmin(self._scores))
                self._levels[i], self._scores[i] = level, float(score)

    def buffer(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the buffer's levels ``(n, dims)`` and their regret scores ``(n,)``."""
        return self._levels.copy(), self._scores.copy()

    def state(self) -> dict[str, Any]:
        """Plain-JSON state: config, buffer, last replay mask and the generator's state."""
        return {
            "config": asdict(self.config),
            "buffer_size": len(self._scores),
            "levels": self._levels.tolist(),
            "scores": self._scores.tolist(),
            "last_replay": list(self._last),
            "rng": self._rng.bit_generator.state,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> LevelSampler:
        """Rebuild a sampler from :meth:`state` (continues the same random stream)."""
        cfg = LevelSamplerConfig(**state["config"])
        s = cls(cfg, seed=0)
        s._rng.bit_generator.state = state["rng"]
        s._levels = np.asarray(state["levels"], dtype=float).reshape(-1, cfg.dims)
        s._scores = np.asarray(state["scores"], dtype=float)
        s._last = [bool(x) for x in state["last_replay"]]
        return s


__all__ = [
    "PARAM_SPACES",
    "LevelSampler",
    "LevelSamplerConfig",
    "SamplerKind",
    "level_params",
    "param_space",
    "rank_weights",
]
