"""GPICL (metalearn/gpicl.py): the seeded task sampler, sequence layout, a small real run,
and the resumable sweep."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch", reason="GPICL needs torch (the train extra)")
pytest.importorskip("sklearn", reason="GPICL's datasets come from scikit-learn (embed extra)")

from metaskill.metalearn.gpicl import (
    N_CLASSES,
    Dataset,
    GPICLConfig,
    GPICLError,
    evaluate_point,
    load_dataset,
    make_sequences,
    meta_train,
    read_sweep,
    run_sweep,
    sample_task,
    training_batch,
)

TINY = {"dim": 16, "seq_len": 12, "d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64,
        "batch_size": 8, "eval_sequences": 8, "warmup_steps": 5, "threads": 2}


def test_sampler_is_seeded_and_reproducible() -> None:
    cfg = GPICLConfig(seed=3)
    a, b = sample_task(cfg, 7, 64), sample_task(cfg, 7, 64)
    assert np.array_equal(a.proj, b.proj) and np.array_equal(a.perm, b.perm)
    other_id, other_seed = sample_task(cfg, 8, 64), sample_task(GPICLConfig(seed=4), 7, 64)
    assert not np.array_equal(a.proj, other_id.proj)
    assert not np.array_equal(a.proj, other_seed.proj)
    unseen = sample_task(cfg, 7, 64, stream="unseen")
    assert not np.array_equal(a.proj, unseen.proj)  # fresh seeds are not training tasks
    # the same (seed, N, step) gives the same batch, so a resumed run sees the same data
    data = Dataset("toy", np.random.default_rng(0).normal(size=(40, 5)).astype(np.float32),
                   np.arange(40) % N_CLASSES)
    x1, y1 = training_batch(GPICLConfig(**TINY), data, 16, 5, {})
    x2, y2 = training_batch(GPICLConfig(**TINY), data, 16, 5, {})
    x3, _ = training_batch(GPICLConfig(**TINY), data, 16, 6, {})
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2) and not np.array_equal(x1, x3)


def test_projection_scale_and_label_permutation() -> None:
    cfg = GPICLConfig(dim=32)
    t = sample_task(cfg, 0, 64)
    assert t.proj.shape == (32, 64)
    assert abs(float(t.proj.std()) - 1 / 8) < 0.02  # N(0, 1/raw_dim)
    assert sorted(t.perm.tolist()) == list(range(N_CLASSES))
    perms = {tuple(sample_task(cfg, i, 64).perm.tolist()) for i in range(20)}
    assert len(perms) == 20  # labels really are permuted, differently per task


def test_sequence_layout_shifts_labels_by_one() -> None:
    cfg = GPICLConfig(dim=4, seq_len=6)
    x = np.random.default_rng(1).normal(size=(6, 3)).astype(np.float32)
    data = Dataset("toy", x, np.array([0, 1, 2, 0, 1, 2]))
    task = sample_task(cfg, 1, 3)
    xs, ys = make_sequences(data, [task, task], 6, np.random.default_rng(0))
    assert xs.shape == (2, 6, 4 + N_CLASSES + 1) and ys.shape == (2, 6)
    onehot = xs[..., 4:]
    assert (onehot.sum(-1) == 1).all()
    assert (onehot[:, 0, N_CLASSES] == 1).all()  # nothing seen before position 0
    assert (onehot[:, 1:].argmax(-1) == ys[:, :-1]).all()  # previous label, one-hot
    assert set(ys.ravel().tolist()) == {int(task.perm[c]) for c in (0, 1, 2)}
    # each input is a projected example, x' = A x, and its target is perm[y] of that example
    projected = x @ task.proj.T  # (6 examples, dim)
    rows = [int(np.argmin(((projected - v) ** 2).sum(1))) for v in xs[0, :, :4]]
    assert np.allclose(projected[rows], xs[0, :, :4], atol=1e-5)
    assert sorted(rows) == list(range(6))  # drawn without replacement
    assert ys[0].tolist() == [int(task.perm[data.y[r]]) for r in rows]


def test_digits_split_is_disjoint_and_normalised() -> None:
    cfg = GPICLConfig()
    tr, te = load_dataset("digits", cfg, "train"), load_dataset("digits", cfg, "test")
    assert len(tr.y) + len(te.y) == 1797 and tr.x.shape[1] == 64
    both = np.concatenate([tr.x, te.x])
    assert len({r.tobytes() for r in both}) >= 1797 - 20  # digits has a few duplicates
    assert abs(float(both.mean())) < 1e-4
    assert load_dataset("wine", cfg).n_classes == 3


def test_config_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="n_heads"):
        GPICLConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="unknown unseen"):
        GPICLConfig(unseen_datasets=["mnist"])


@pytest.mark.slow
def test_tiny_run_learns_its_tasks_and_resumes(tmp_path) -> None:
    """Two tasks, 150 steps: the model memorises them (training-task accuracy far above
    the 10% chance), well under a minute on two cores."""
    cfg = GPICLConfig(**TINY, steps=150, learning_rate=3e-3, checkpoint_every=100)
    ckpt = tmp_path / "ck.pt"
    model, info = meta_train(cfg, 2, checkpoint=ckpt, progress=False)
    ev = evaluate_point(model, cfg, 2)
    assert ev["train_tasks"]["late_accuracy"] > 0.4, ev["train_tasks"]
    assert info["losses"][-1] < info["losses"][0]
    assert len(ev["train_tasks"]["by_position"]) == cfg.seq_len
    assert {"unseen_tasks", "unseen_dataset:wine", "unseen_dataset:breast_cancer"} <= set(ev)
    # a finished checkpoint is picked up, not retrained; another run's checkpoint refused
    _again, info2 = meta_train(cfg, 2, checkpoint=ckpt, progress=False)
    assert info2["losses"] == info["losses"]
    with pytest.raises(GPICLError, match="another run"):
        meta_train(cfg, 4, checkpoint=ckpt, progress=False)


@pytest.mark.slow
def test_sweep_resumes_and_refuses_other_settings(tmp_path) -> None:
    cfg = GPICLConfig(**TINY, steps=3)
    data = run_sweep([4, 2], cfg, tmp_path, progress=False)
    assert [p["n_tasks"] for p in data["points"]] == [2, 4]
    assert (tmp_path / "sweep.svg").read_text().lstrip().startswith("<?xml")
    stored = json.loads((tmp_path / "sweep.json").read_text())
    assert stored["schema_version"] == 1 and stored["config"]["steps"] == 3
    seen: list[str] = []
    run_sweep([2, 4], cfg, tmp_path, progress=False, log=seen.append)
    assert all("done before" in s for s in seen) and len(seen) == 2
    assert read_sweep(tmp_path)["points"] == data["points"]
    with pytest.raises(GPICLError, match="steps"):
        run_sweep([2], GPICLConfig(**TINY, steps=4), tmp_path, progress=False)


@pytest.mark.slow
def test_cli_sweep_resumes(tmp_path) -> None:
    from typer.testing import CliRunner

    from metaskill.cli import app

    args = ["metatrain", "gpicl", "--tasks", "2,4", "--steps", "2", "--out", str(tmp_path),
            "--seq-len", "12", "--d-model", "16", "--layers", "1", "--heads", "2",
            "--eval-sequences", "4", "--batch-size", "4", "--threads", "2"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout.strip().splitlines()[-1])
    assert [r["n_tasks"] for r in rows] == [2, 4]
    assert set(rows[0]) >= {"train_tasks", "unseen_tasks", "unseen_dataset:wine"}
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "done before" in again.output
    bad = CliRunner().invoke(app, [*args[:5], "3", *args[6:]])
    assert bad.exit_code != 0  # the root command prints MetaskillError as one line
    assert "different steps" in f"{bad.output} {bad.exception}"
