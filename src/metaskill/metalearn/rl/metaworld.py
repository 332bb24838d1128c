"""Meta-World ML1/ML10 task sets and offline datasets from the scripted expert policies.

Paper:
    Yu, Quillen, He, Julian, Hausman, Finn, Levine (2019). "Meta-World: A Benchmark and
    Evaluation for Multi-Task and Meta Reinforcement Learning." ML1 varies the goal (and
    object) position of one manipulation task: train and test goals are disjoint samples;
    ML10 trains on 10 tasks and tests on 5 others. The goal is hidden from the observation
    (the last three numbers are zero), so an agent must infer the task from rewards.
    Success (``info["success"]``) at any step of an episode is the metric.

Everything comes from the ``metaworld`` package (3.x, gymnasium API, MuJoCo through
``mujoco``): the benchmarks and their train/test task lists (``metaworld.ML1(env, seed)``,
``metaworld.ML10(seed)``), the environments and their rewards, and the scripted expert of
each task (``metaworld.policies.ENV_POLICY_MAP``). No rendering is needed: observations are
39-number states.

Algorithm (what :func:`collect_dataset` does):

1. Build the benchmark with its own train/test split and keep the first ``n_train`` train
   tasks and ``n_test`` test tasks of each environment, in the benchmark's order.
2. For every train task and episode ``e``: run the scripted expert with Gaussian action
   noise of std ``noise * e / (episodes - 1)`` (``noise_spread``; else ``noise`` for every
   episode), so one task's episodes range from expert to noisy: mixed-quality data, as
   Meta-DT assumes. The noise draws come from a generator seeded by ``(seed, split,
   task index, episode)``, so the same configuration gives the same files.
3. For every test task: one noise-free expert episode, kept apart (``split="test"``); it is
   only ever used as the expert prompt of the Prompt-DT baseline, never for training.
4. Each task's episodes go to one ``.npz`` (observations, actions, rewards, per-step
   success, noise); ``manifest.json`` (schema version, configuration, environment names,
   task indices, goals, noise, seeds, returns, success) is rewritten after every task, so
   an interrupted collection resumes where it stopped.

What we changed: the expert reads the goal from the simulator (it is hidden in the stored
observation, which is what a learner sees); episodes are cut at ``max_steps`` (the benchmark
allows 500) to fit CPU budgets; Meta-DT's own data came from SAC checkpoints per task, ours
from the noisy scripted experts the issue asks for.

Example (needs the ``metarl`` extra)::

    cfg = CollectConfig(benchmark="ML1", env="reach-v3", episodes=10, noise=0.5)
    manifest = collect_dataset(cfg, "data/ml1-reach")
    data = load_dataset("data/ml1-reach")
    len(data.episodes("train"))       # n_train tasks x 10 episodes
"""

from __future__ import annotations

import json
import pickle
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metaskill.core.errors import MetaskillError

SCHEMA_VERSION = 1
BENCHMARKS = ("ML1", "ML10")
SPLITS = ("train", "test")
MANIFEST = "manifest.json"

#: ``act(obs, prev_reward) -> action``: what :func:`rollout` asks at every step.
Actor = Callable[[np.ndarray, float], np.ndarray]


class MetaWorldError(MetaskillError):
    """A Meta-World benchmark, task or dataset that cannot be used as asked."""


def require_metaworld() -> Any:
    """Import ``metaworld`` or say in one line how to install it."""
    try:
        import metaworld
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MetaWorldError(
            "Meta-World needs the metarl extra: pip install 'metaskill[metarl]' "
            f"(metaworld, mujoco, gymnasium); import failed: {e}") from None
    return metaworld


# ---- task sets -------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskRef:
    """One Meta-World task: an environment with one goal (and initial object position).

    Attributes:
        split: ``"train"`` or ``"test"``: the benchmark's list the task comes from.
        env_name: the environment, e.g. ``"reach-v3"``.
        index: the task's position in the benchmark's ``train_tasks`` or ``test_tasks``.
    """

    split: str
    env_name: str
    index: int

    @property
    def key(self) -> str:
        """A file-name-safe id, e.g. ``train-003-reach-v3``."""
        return f"{self.split}-{self.index:03d}-{self.env_name}"


@dataclass
class Suite:
    """An ML1 or ML10 benchmark built by ``metaworld`` with a selection of its tasks.

    Attributes:
        benchmark: ``"ML1"`` or ``"ML10"``.
        env: the ML1 environment (None for ML10).
        seed: the benchmark seed (fixes the sampled goals).
        train: the selected training tasks.
        test: the selected test tasks.
    """

    benchmark: str
    env: str | None
    seed: int
    train: tuple[TaskRef, ...]
    test: tuple[TaskRef, ...]
    _bench: Any = field(repr=False)

    @property
    def train_envs(self) -> list[str]:
        """Names of the training environments, in the benchmark's order."""
        return list(self._bench.train_classes)

    @property
    def test_envs(self) -> list[str]:
        """Names of the test environments, in the benchmark's order."""
        return list(self._bench.test_classes)

    def tasks(self, split: str) -> tuple[TaskRef, ...]:
        """The selected tasks of ``split``."""
        return self.train if split == "train" else self.test

    def rand_vec(self, ref: TaskRef) -> np.ndarray:
        """The task's frozen random vector (object and goal positions) from the benchmark."""
        return np.asarray(pickle.loads(self._raw(ref).data)["rand_vec"], dtype=np.float64)

    def make_env(self, ref: TaskRef) -> Any:
        """A fresh environment with ``ref``'s task set (states only, no rendering)."""
        classes = self._bench.train_classes if ref.split == "train" else self._bench.test_classes
        env = classes[ref.env_name]()
        env.set_task(self._raw(ref))
        return env

    def _raw(self, ref: TaskRef) -> Any:
        tasks = self._bench.train_tasks if ref.split == "train" else self._bench.test_tasks
        task = tasks[ref.index]
        if task.env_name != ref.env_name:
            raise MetaWorldError(f"task {ref.key} is a '{task.env_name}' task in this benchmark.")
        return task


def load_suite(benchmark: str = "ML1", env: str | None = "reach-v3", *, seed: int = 0,
               n_train: int | None = None, n_test: int | None = None) -> Suite:
    """Build ``metaworld.ML1(env)`` or ``metaworld.ML10()`` and select tasks per environment.

    Args:
        benchmark: ``"ML1"`` (one environment, train and test goals differ) or ``"ML10"``
            (10 training environments, 5 test environments).
        env: the ML1 environment (ignored for ML10).
        seed: the benchmark seed; the same seed gives the same goals.
        n_train: training tasks kept per environment (None: all 50).
        n_test: test tasks kept per environment (None: all 50).

    Example (needs the ``metarl`` extra)::

        suite = load_suite("ML1", "reach-v3", n_train=10, n_test=5)
        env = suite.make_env(suite.test[0])
    """
    metaworld = require_metaworld()
    if benchmark not in BENCHMARKS:
        raise MetaWorldError(f"unknown benchmark '{benchmark}'; "
                             f"available: {', '.join(BENCHMARKS)}.")
    for name, n in (("n_train", n_train), ("n_test", n_test)):
        if n is not None and n < 1:
            raise MetaWorldError(f"{name} must be >= 1, got {n}.")
    if benchmark == "ML1":
        if env not in metaworld.ML1.ENV_NAMES:
            raise MetaWorldError(f"unknown Meta-World environment '{env}' "
                                 "(e.g. reach-v3, push-v3).")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bench = metaworld.ML1(env, seed=seed)
    else:
        env = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bench = metaworld.ML10(seed=seed)
    return Suite(benchmark, env, seed, _select(bench.train_tasks, "train", n_train),
                 _select(bench.test_tasks, "test", n_test), bench)


def _select(tasks: list[Any], split: str, per_env: int | None) -> tuple[TaskRef, ...]:
    seen: dict[str, int] = {}
    out = []
    for i, t in enumerate(tasks):
        if per_env is None or seen.get(t.env_name, 0) < per_env:
            seen[t.env_name] = seen.get(t.env_name, 0) + 1
            out.append(TaskRef(split, t.env_name, i))
    return tuple(out)


# ---- episodes --------------------------------------------------------------------------
@dataclass
class Episode:
    """One episode of ``max_steps`` steps (Meta-World never terminates early).

    Attributes:
        task: the task's :attr:`TaskRef.key`.
        obs: ``[T + 1, 39]`` observations (goal hidden, as the learner sees them).
        actions: ``[T, 4]`` actions taken (after noise and clipping).
        rewards: ``[T]`` rewards.
        success: ``[T]`` the environment's per-step success flag.
        noise: the action-noise std of the episode (0: expert).
    """

    task: str
    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    success: np.ndarray
    noise: float = 0.0

    @property
    def ret(self) -> float:
        """The undiscounted return."""
        return float(self.rewards.sum())

    @property
    def solved(self) -> bool:
        """Whether the task was solved at any step (Meta-World's success criterion)."""
        return bool(self.success.any())


def rollout(env: Any, act: Actor, max_steps: int, task: str = "") -> Episode:
    """Run one episode of ``max_steps`` steps with ``act(obs, prev_reward) -> action``.

    Example (needs the ``metarl`` extra)::

        ep = rollout(suite.make_env(ref), expert_actor(env, 0.0, rng), 150)
        ep.solved
    """
    obs, _ = env.reset()
    o = np.zeros((max_steps + 1, obs.shape[0]), np.float32)
    a = np.zeros((max_steps, env.action_space.shape[0]), np.float32)
    r = np.zeros(max_steps, np.float32)
    s = np.zeros(max_steps, bool)
    o[0], prev = obs, 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in range(max_steps):
            action = np.clip(np.asarray(act(obs, prev), np.float64), -1.0, 1.0)
            obs, reward, _term, _trunc, info = env.step(action)
            o[t + 1], a[t], r[t], s[t] = obs, action, reward, bool(info.get("success", 0.0))
            prev = float(reward)
    return Episode(task, o, a, r, s)


def expert_actor(env: Any, env_name: str, noise: float, rng: np.random.Generator) -> Actor:
    """The scripted expert of ``env_name`` with Gaussian action noise of std ``noise``.

    The expert is given the goal from the simulator (the observation hides it).
    """
    from metaworld.policies import ENV_POLICY_MAP

    policy = ENV_POLICY_MAP[env_name]()

    def act(obs: np.ndarray, _prev: float) -> np.ndarray:
        full = np.array(obs, np.float64)
        full[-3:] = env._get_pos_goal()
        action = policy.get_action(full)
        return action + (rng.normal(0.0, noise, size=action.shape) if noise > 0 else 0.0)

    return act


def episode_seed(seed: int, ref: TaskRef, episode: int) -> int:
    """The noise seed of one episode, derived from ``(seed, split, task index, episode)``.

    Example:
        >>> episode_seed(0, TaskRef("train", "reach-v3", 3), 1) == episode_seed(
        ...     0, TaskRef("train", "reach-v3", 3), 1)
        True
    """
    ss = np.random.SeedSequence([seed, SPLITS.index(ref.split), ref.index, episode])
    return int(ss.generate_state(1, np.uint32)[0])


# ---- collection ------------------------------------------------------------------------
@dataclass(frozen=True)
class CollectConfig:
    """How an offline dataset is collected.

    Attributes:
        benchmark: ``"ML1"`` or ``"ML10"``.
        env: the ML1 environment (None for ML10).
        episodes: episodes per training task.
        noise: the largest Gaussian action-noise std (actions lie in [-1, 1]).
        noise_spread: episode ``e`` uses ``noise * e / (episodes - 1)`` (expert to noisy);
            False: every episode uses ``noise``.
        max_steps: steps per episode (Meta-World allows 500).
        n_train: training tasks per environment (None: all 50).
        n_test: test tasks per environment (None: all 50).
        seed: benchmark and noise seed.
    """

    benchmark: str = "ML1"
    env: str | None = "reach-v3"
    episodes: int = 10
    noise: float = 0.5
    noise_spread: bool = True
    max_steps: int = 150
    n_train: int | None = 10
    n_test: int | None = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.benchmark not in BENCHMARKS:
            raise MetaWorldError(f"unknown benchmark '{self.benchmark}'; available: "
                                 f"{', '.join(BENCHMARKS)}.")
        if self.benchmark == "ML10" and self.env is not None:
            object.__setattr__(self, "env", None)
        if self.episodes < 1 or self.max_steps < 1:
            raise MetaWorldError("episodes and max_steps must be >= 1.")
        if self.noise < 0:
            raise MetaWorldError(f"noise must be >= 0, got {self.noise}.")

    def noise_of(self, episode: int) -> float:
        """The action-noise std of episode ``episode`` of a training task."""
        if not self.noise_spread or self.episodes == 1:
            return float(self.noise)
        return float(self.noise * episode / (self.episodes - 1))


def collect_dataset(config: CollectConfig, out: str | Path, *, progress: bool = True,
                    log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Collect (or finish collecting) the dataset of ``config`` into ``out``.

    Returns the manifest. A folder holding another configuration is refused.

    Example (needs the ``metarl`` extra)::

        manifest = collect_dataset(CollectConfig(episodes=4, n_train=3, n_test=2), "data/x")
        manifest["summary"]["train"]["success"]
    """
    out = Path(out)
    manifest = _start_manifest(config, out)
    t0 = time.time()
    suite = load_suite(config.benchmark, config.env, seed=config.seed,
                       n_train=config.n_train, n_test=config.n_test)
    manifest["train_envs"], manifest["test_envs"] = suite.train_envs, suite.test_envs
    done = {t["key"] for t in manifest["tasks"]}
    todo = [r for r in (*suite.train, *suite.test) if r.key not in done]
    with _Bar(progress, "collect", len(suite.train) + len(suite.test), len(done)) as step:
        for ref in todo:
            manifest["tasks"].append(_collect_task(suite, ref, config, out))
            manifest["wall_s"] = manifest.get("wall_s", 0.0) + time.time() - t0
            t0 = time.time()
            _write_manifest(out, manifest)
            step()
    manifest["complete"] = True
    manifest["summary"] = summarize(manifest)
    _write_manifest(out, manifest)
    if log:
        s = manifest["summary"]
        log(f"{config.benchmark}: train success {s['train']['success']:.2f} over "
            f"{s['train']['episodes']} episodes; test experts {s['test']['success']:.2f}")
    return manifest


def _collect_task(suite: Suite, ref: TaskRef, config: CollectConfig, out: Path) -> dict[str, Any]:
    n = config.episodes if ref.split == "train" else 1
    noises = [config.noise_of(e) if ref.split == "train" else 0.0 for e in range(n)]
    seeds = [episode_seed(config.seed, ref, e) for e in range(n)]
    env = suite.make_env(ref)
    eps = []
    for noise, seed in zip(noises, seeds, strict=True):
        act = expert_actor(env, ref.env_name, noise, np.random.default_rng(seed))
        eps.append(rollout(env, act, config.max_steps, ref.key))
    goal = np.asarray(env._get_pos_goal(), float).round(6).tolist()
    env.close()
    file = f"{ref.key}.npz"
    tmp = out / f".{file}.tmp.npz"
    np.savez_compressed(tmp, obs=np.stack([e.obs for e in eps]),
                        actions=np.stack([e.actions for e in eps]),
                        rewards=np.stack([e.rewards for e in eps]),
                        success=np.stack([e.success for e in eps]),
                        noise=np.asarray(noises, np.float32))
    tmp.replace(out / file)
    return {"key": ref.key, "file": file, "split": ref.split, "env_name": ref.env_name,
            "index": ref.index, "goal": goal, "rand_vec": suite.rand_vec(ref).round(6).tolist(),
            "episodes": n, "noise": noises, "seeds": seeds,
            "returns": [round(e.ret, 4) for e in eps], "success": [e.solved for e in eps]}


def summarize(manifest: dict[str, Any]) -> dict[str, Any]:
    """Mean success and return per split over the manifest's episodes."""
    out: dict[str, Any] = {}
    for split in SPLITS:
        tasks = [t for t in manifest["tasks"] if t["split"] == split]
        succ = [s for t in tasks for s in t["success"]]
        rets = [r for t in tasks for r in t["returns"]]
        out[split] = {"tasks": len(tasks), "episodes": len(succ), "success": success_rate(succ),
                      "return": float(np.mean(rets)) if rets else 0.0}
    return out


def success_rate(solved: list[bool] | np.ndarray) -> float:
    """The fraction of solved episodes (0.0 for none).

    Example:
        >>> success_rate([True, False, True, True])
        0.75
    """
    solved = list(solved)
    return float(np.mean(solved)) if solved else 0.0


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("metaworld", "mujoco", "gymnasium"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "missing"
    return out


def _start_manifest(config: CollectConfig, out: Path) -> dict[str, Any]:
    path = out / MANIFEST
    cfg = asdict(config)
    if path.exists():
        manifest = read_manifest(out)
        if manifest["config"] != cfg:
            diff = sorted(k for k in cfg if manifest["config"].get(k) != cfg[k])
            raise MetaWorldError(f"'{out}' holds a dataset with different {', '.join(diff)}; "
                                 "use another --out.")
        return manifest
    out.mkdir(parents=True, exist_ok=True)
    return {"schema_version": SCHEMA_VERSION, "kind": "metaworld-offline", "config": cfg,
            "benchmark": config.benchmark, "env": config.env, "versions": _versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "complete": False, "tasks": []}


def _write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(out / MANIFEST)


def read_manifest(out: str | Path) -> dict[str, Any]:
    """Read and check a dataset's ``manifest.json``."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        raise MetaWorldError(f"no Meta-World dataset in '{out}' (missing {MANIFEST}); "
                             "collect one with `metaskill metarl metaworld-data`.")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise MetaWorldError(f"'{path}' is not valid JSON ({e}).") from None
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise MetaWorldError(f"'{path}' has schema version {manifest.get('schema_version')}; "
                             f"this metaskill reads version {SCHEMA_VERSION}.")
    return manifest


class _Bar:
    """A rich progress bar (or nothing) whose context value advances it by one."""

    def __init__(self, enabled: bool, label: str, total: int, done: int = 0) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self.progress = Progress("{task.description}", BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), disable=not enabled)
        self.task = self.progress.add_task(label, total=total, completed=done)

    def __enter__(self) -> Callable[[], None]:
        self.progress.start()
        return lambda: self.progress.advance(self.task)

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


# ---- loading ---------------------------------------------------------------------------
@dataclass
class Dataset:
    """A collected dataset: its manifest and its episodes, loaded on demand.

    Attributes:
        root: the dataset folder.
        manifest: the parsed ``manifest.json``.
    """

    root: Path
    manifest: dict[str, Any]

    @property
    def config(self) -> CollectConfig:
        """The collection configuration."""
        return CollectConfig(**self.manifest["config"])

    def task_refs(self, split: str) -> list[TaskRef]:
        """The tasks of ``split`` in the dataset, in collection order."""
        return [TaskRef(t["split"], t["env_name"], t["index"])
                for t in self.manifest["tasks"] if t["split"] == split]

    def episodes(self, split: str) -> list[Episode]:
        """All episodes of ``split`` (``"train"``: training data; ``"test"``: the experts
        kept only as Prompt-DT's prompts)."""
        return [ep for t in self.manifest["tasks"] if t["split"] == split
                for ep in self._load(t)]

    def _load(self, entry: dict[str, Any]) -> Iterator[Episode]:
        path = self.root / entry["file"]
        if not path.is_file():
            raise MetaWorldError(f"dataset file '{path}' is missing; rerun the collection.")
        with np.load(path) as z:
            for e in range(z["obs"].shape[0]):
                yield Episode(entry["key"], z["obs"][e], z["actions"][e], z["rewards"][e],
                              z["success"][e], float(z["noise"][e]))


def load_dataset(root: str | Path) -> Dataset:
    """Open a dataset folder written by :func:`collect_dataset` (it must be complete)."""
    manifest = read_manifest(root)
    if not manifest.get("complete"):
        raise MetaWorldError(f"the dataset in '{root}' is incomplete; rerun the same "
                             "`metaworld-data` command to finish it.")
    return Dataset(Path(root), manifest)


def check_no_leak(manifest: dict[str, Any]) -> None:
    """Raise if any test task (ML10: test environment; ML1: test goal) is among the
    training tasks of ``manifest``.

    Example:
        >>> m = {"benchmark": "ML1", "tasks": [
        ...     {"split": "train", "env_name": "reach-v3", "rand_vec": [0, 1]},
        ...     {"split": "test", "env_name": "reach-v3", "rand_vec": [0, 1]}]}
        >>> try:
        ...     check_no_leak(m)
        ... except MetaWorldError as e:
        ...     print(e)
        test task reach-v3 [0, 1] is also a training task.
    """
    train = [t for t in manifest["tasks"] if t["split"] == "train"]
    envs = {t["env_name"] for t in train}
    vecs = {(t["env_name"], tuple(t["rand_vec"])) for t in train}
    for t in manifest["tasks"]:
        if t["split"] != "test":
            continue
        if manifest["benchmark"] == "ML10" and t["env_name"] in envs:
            raise MetaWorldError(f"test environment {t['env_name']} is also a training "
                                 "environment.")
        if (t["env_name"], tuple(t["rand_vec"])) in vecs:
            raise MetaWorldError(f"test task {t['env_name']} {t['rand_vec']} is also a "
                                 "training task.")


__all__ = [
    "BENCHMARKS",
    "SCHEMA_VERSION",
    "Actor",
    "CollectConfig",
    "Dataset",
    "Episode",
    "MetaWorldError",
    "Suite",
    "TaskRef",
    "check_no_leak",
    "collect_dataset",
    "episode_seed",
    "expert_actor",
    "load_dataset",
    "load_suite",
    "read_manifest",
    "require_metaworld",
    "rollout",
    "success_rate",
    "summarize",
]
