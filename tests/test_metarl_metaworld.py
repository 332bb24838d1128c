"""Meta-World task sets and offline datasets (metalearn/rl/metaworld.py, issue 25)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("mujoco", reason="Meta-World needs the metarl extra (mujoco)")
pytest.importorskip("metaworld", reason="Meta-World needs the metarl extra (metaworld)")

from metaskill.metalearn.rl.metaworld import (
    CollectConfig,
    MetaWorldError,
    check_no_leak,
    collect_dataset,
    load_dataset,
    load_suite,
    read_manifest,
)

TINY = CollectConfig(benchmark="ML1", env="reach-v3", episodes=3, noise=0.8, max_steps=25,
                     n_train=2, n_test=2, seed=3)


def _arrays(root):
    out = {}
    for t in read_manifest(root)["tasks"]:
        with np.load(root / t["file"]) as z:
            out[t["key"]] = {k: z[k].copy() for k in z.files}
    return out


def test_collection_is_seeded_and_reproducible(tmp_path):
    a = collect_dataset(TINY, tmp_path / "a", progress=False)
    b = collect_dataset(TINY, tmp_path / "b", progress=False)
    assert [t["returns"] for t in a["tasks"]] == [t["returns"] for t in b["tasks"]]
    xa, xb = _arrays(tmp_path / "a"), _arrays(tmp_path / "b")
    assert xa.keys() == xb.keys()
    for key in xa:
        for name in xa[key]:
            np.testing.assert_array_equal(xa[key][name], xb[key][name])
    # another seed: other goals and other noise draws
    c = collect_dataset(replace(TINY, seed=4), tmp_path / "c", progress=False)
    assert [t["goal"] for t in c["tasks"]] != [t["goal"] for t in a["tasks"]]
    assert [t["seeds"] for t in c["tasks"]] != [t["seeds"] for t in a["tasks"]]


def test_manifest_records_noise_seeds_returns_and_success(tmp_path):
    m = collect_dataset(TINY, tmp_path, progress=False)
    train = [t for t in m["tasks"] if t["split"] == "train"]
    test = [t for t in m["tasks"] if t["split"] == "test"]
    assert len(train) == 2 and len(test) == 2
    assert m["schema_version"] == 1 and m["complete"] and m["train_envs"] == ["reach-v3"]
    for t in train:  # expert to noisy within one task: mixed-quality data
        assert t["noise"] == pytest.approx([0.0, 0.4, 0.8])
        assert len(t["seeds"]) == len(t["returns"]) == len(t["success"]) == 3
    for t in test:  # one noise-free expert episode per test task (Prompt-DT's prompt only)
        assert t["noise"] == [0.0] and t["episodes"] == 1
    z = np.load(tmp_path / train[0]["file"])
    assert z["obs"].shape == (3, 26, 39) and z["actions"].shape == (3, 25, 4)
    assert np.all(z["obs"][..., -3:] == 0)  # the goal is hidden from the learner
    assert z["rewards"].sum(1) == pytest.approx(train[0]["returns"], rel=1e-4)
    # the noise-free episode is the scripted expert acting on the true goal
    assert abs(z["actions"][0]).max() <= 1.0


def test_the_expert_solves_reach_and_noise_lowers_the_return(tmp_path):
    cfg = replace(TINY, episodes=2, noise=2.0, max_steps=100, n_train=1, n_test=1)
    m = collect_dataset(cfg, tmp_path, progress=False)
    train = next(t for t in m["tasks"] if t["split"] == "train")
    assert train["success"][0] is True
    assert train["returns"][0] > train["returns"][1]
    assert m["summary"]["test"]["success"] == 1.0


def test_an_interrupted_collection_resumes_to_the_same_files(tmp_path):
    full = collect_dataset(TINY, tmp_path / "full", progress=False)
    part = tmp_path / "part"
    collect_dataset(TINY, part, progress=False)
    m = read_manifest(part)
    dropped = m["tasks"].pop()
    (part / dropped["file"]).unlink()
    m["complete"] = False
    (part / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(MetaWorldError, match="incomplete"):
        load_dataset(part)
    resumed = collect_dataset(TINY, part, progress=False)
    assert [t["key"] for t in resumed["tasks"]] == [t["key"] for t in full["tasks"]]
    np.testing.assert_array_equal(_arrays(part)[dropped["key"]]["actions"],
                                  _arrays(tmp_path / "full")[dropped["key"]]["actions"])


def test_another_configuration_in_the_same_folder_is_refused(tmp_path):
    collect_dataset(TINY, tmp_path, progress=False)
    with pytest.raises(MetaWorldError, match="noise"):
        collect_dataset(replace(TINY, noise=0.1), tmp_path, progress=False)


def test_ml1_test_goals_never_appear_in_training():
    suite = load_suite("ML1", "reach-v3", seed=0)  # all 50 + 50 tasks of the benchmark
    assert len(suite.train) == 50 and len(suite.test) == 50
    train = {tuple(suite.rand_vec(r).round(8)) for r in suite.train}
    test = {tuple(suite.rand_vec(r).round(8)) for r in suite.test}
    assert len(train) == 50 and len(test) == 50
    assert not train & test


def test_the_training_data_holds_no_test_task(tmp_path):
    m = collect_dataset(TINY, tmp_path, progress=False)
    check_no_leak(m)  # raises on a leak
    data = load_dataset(tmp_path)
    test_keys = {r.key for r in data.task_refs("test")}
    train_eps = data.episodes("train")
    assert train_eps and all(e.task.startswith("train-") for e in train_eps)
    assert not {e.task for e in train_eps} & test_keys
    leaky = dict(m, tasks=[*m["tasks"], dict(m["tasks"][-1], split="train")])
    with pytest.raises(MetaWorldError, match="also a training task"):
        check_no_leak(leaky)


@pytest.mark.slow
def test_ml10_test_environments_are_not_training_environments():
    suite = load_suite("ML10", n_train=1, n_test=1)
    assert len(suite.train_envs) == 10 and len(suite.test_envs) == 5
    assert not set(suite.train_envs) & set(suite.test_envs)
    assert {r.env_name for r in suite.train} == set(suite.train_envs)
    assert {r.env_name for r in suite.test} <= set(suite.test_envs)


def test_bad_names_are_one_line_errors():
    with pytest.raises(MetaWorldError, match="unknown benchmark"):
        CollectConfig(benchmark="ML3")
    with pytest.raises(MetaWorldError, match="unknown Meta-World environment"):
        load_suite("ML1", "reach-v9")
