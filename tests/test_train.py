"""Training end to end: run folder, seeding, save/load, collapse detection, early stopping."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import interruptible, make_images, tiny_config

from l1cnn import load_run, train
from l1cnn.errors import RunError
from l1cnn.loop import EarlyStopping
from l1cnn.predict import predict_split, reload_run_data
from l1cnn.runs import read_csv


@pytest.fixture
def xy_npz(tmp_path: Path) -> Path:
    x, y = make_images(120, seed=3)
    path = tmp_path / "xy.npz"
    np.savez(path, x=x, y=y)
    return path


def test_run_folder_holds_everything(trained_run: Path) -> None:
    names = {p.name for p in trained_run.iterdir()}
    assert {
        "config.toml",
        "run.json",
        "data.json",
        "split.json",
        "model.keras",
        "history.csv",
        "metrics.json",
        "predictions.csv",
    } <= names
    info = json.loads((trained_run / "run.json").read_text())
    assert info["status"] in ("completed", "early_stopped") and info["seed"] == 7
    assert info["versions"]["keras"] and info["versions"]["tensorflow"]
    assert info["versions"]["tf_onednn_opts"] == os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    assert info["wall_time_s"] > 0 and info["epochs_run"] == 3
    data = json.loads((trained_run / "data.json").read_text())
    assert data["counts"]["train"] == {"0": 42, "1": 42} and len(data["fingerprint"]) == 64
    history = read_csv(trained_run / "history.csv")
    assert [int(r["epoch"]) for r in history] == [1, 2, 3]
    for row in history:  # the loss is the data part plus the L1 part
        total = float(row["data_loss"]) + float(row["l1_penalty"])
        assert float(row["loss"]) == pytest.approx(total, rel=1e-4)
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["threshold"]["value"] == 0.5
    for split in ("train", "val", "test"):
        assert {
            "loss",
            "accuracy",
            "precision",
            "recall",
            "f1",
            "roc_auc",
            "pr_auc",
            "confusion_matrix",
        } <= set(metrics[split])
    assert metrics["test"]["n"] == 18
    split = json.loads((trained_run / "split.json").read_text())
    assert sorted(len(v) for v in split.values()) == [18, 18, 84]
    predictions = read_csv(trained_run / "predictions.csv")
    assert len(predictions) == 36 and {r["split"] for r in predictions} == {"val", "test"}


def test_learns_the_toy_task(trained_run: Path) -> None:
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["test"]["roc_auc"] > 0.9
    assert metrics["diagnosis"]["collapsed"] is False


def test_save_load_gives_identical_predictions(trained_run: Path) -> None:
    run = load_run(trained_run)
    dataset = reload_run_data(run)
    probs = predict_split(run.model, dataset.splits["test"])
    saved = [
        float(r["probability"])
        for r in read_csv(trained_run / "predictions.csv")
        if r["split"] == "test"
    ]
    np.testing.assert_allclose(probs, saved, atol=1e-7)
    assert run.class_names == ["0", "1"] and run.image_shape == (12, 12, 1)


def test_same_seed_same_metrics(xy_npz: Path, tmp_path: Path) -> None:
    config = tiny_config(train={"epochs": 2})
    a = train(xy_npz, config, out=tmp_path / "a")
    b = train(xy_npz, config, out=tmp_path / "b")
    assert a.metrics["test"] == b.metrics["test"]
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    c = train(xy_npz, tiny_config(train={"epochs": 2, "seed": 8}), out=tmp_path / "c")
    assert [h["loss"] for h in a.history] != [h["loss"] for h in c.history]


def test_collapse_is_detected_and_explained(xy_npz: Path, tmp_path: Path) -> None:
    config = tiny_config(model={"l1_lambda": 1.0}, train={"epochs": 6, "learning_rate": 0.05})
    result = train(xy_npz, config, out=tmp_path / "collapsed")
    diagnosis = result.metrics["diagnosis"]
    assert diagnosis["collapsed"] is True
    assert any("constant" in r or "chance" in r for r in diagnosis["reasons"])
    assert "smaller l1_lambda" in diagnosis["advice"]
    assert 0.5 < diagnosis["l1_share_of_loss"] <= 1.0
    saved = json.loads((result.run_dir / "metrics.json").read_text())
    assert saved["diagnosis"]["collapsed"] is True


def test_early_stopping_logic() -> None:
    import keras

    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    stopper = EarlyStopping(patience=2)
    losses = [1.0, 0.8, 0.9, 0.85, 0.7, 0.75, 0.71, 0.72]
    stops = [stopper.update(i + 1, {"val_loss": v}, model) for i, v in enumerate(losses)]
    assert stops == [False, False, False, True, False, False, True, True]
    assert stopper.best == 0.7 and stopper.best_epoch == 5


def test_early_stopping_stops_and_restores_best(tmp_path: Path) -> None:
    # random labels: an unregularized network memorizes the training split and val_loss rises;
    # validation is at chance by construction, so the collapse guard is switched off here
    x, _ = make_images(120, seed=4)
    y = np.random.default_rng(4).permutation(np.arange(120) % 2)
    np.savez(tmp_path / "noise.npz", x=x, y=y)
    config = tiny_config(
        model={"l1_lambda": 0.0, "dropout_rate": 0.0},
        train={"epochs": 60, "patience": 2, "learning_rate": 0.01, "stop_on_collapse": False},
    )
    result = train(tmp_path / "noise.npz", config, out=tmp_path / "es")
    assert result.status == "early_stopped" and result.epochs_run < 60
    assert result.epochs_run == result.best_epoch + 2  # patience 2: stops 2 epochs after best
    best = min(h["val_loss"] for h in result.history)
    assert result.history[result.best_epoch - 1]["val_loss"] == best
    # the saved model holds the best epoch's weights, not the last ones
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["val"]["loss"] == pytest.approx(best, abs=1e-4)


def test_class_weight_balanced_is_recorded(tmp_path: Path) -> None:
    x, y = make_images(120, seed=1)
    keep = np.concatenate([np.where(y == 0)[0], np.where(y == 1)[0][:20]])
    path = tmp_path / "imbalanced.npz"
    np.savez(path, x=x[keep], y=y[keep])
    result = train(
        path, tiny_config(train={"class_weight": "balanced", "epochs": 1}), out=tmp_path / "w"
    )
    info = json.loads((result.run_dir / "run.json").read_text())
    weights = {int(k): v for k, v in info["class_weight"].items()}
    assert weights[1] > 1 > weights[0]
    counts = result.data["counts"]["train"]
    n = counts["0"] + counts["1"]
    assert weights[1] == pytest.approx(n / (2 * counts["1"]))


def test_existing_run_is_not_overwritten(trained_run: Path, xy_npz: Path) -> None:
    before = (trained_run / "metrics.json").read_bytes()
    with pytest.raises(RunError, match="already exists; use --overwrite"):
        train(xy_npz, tiny_config(), out=trained_run)
    assert (trained_run / "metrics.json").read_bytes() == before


def test_overwrite_replaces_a_run(xy_npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(xy_npz, tiny_config(train={"epochs": 1}), out=out)
    (out / "stale.txt").write_text("old")
    train(xy_npz, tiny_config(train={"epochs": 1}), out=out, overwrite=True)
    assert not (out / "stale.txt").exists() and (out / "model.keras").exists()


def test_overwrite_refuses_a_folder_that_is_not_a_run(xy_npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(RunError, match="not a run folder"):
        train(xy_npz, tiny_config(), out=out, overwrite=True)
    assert (out / "thesis.tex").exists()


@pytest.mark.slow
def test_ctrl_c_leaves_a_usable_run(xy_npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "interrupted"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [
        sys.executable,
        "-m",
        "l1cnn.cli",
        "train",
        str(xy_npz),
        "--out",
        str(out),
        "--conv-filters",
        "4,8",
        "--dense-units",
        "8",
        "--epochs",
        "100000",
        "--early-stopping",
        "false",
        "--batch-size",
        "16",
        "--quiet",
    ]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=interruptible
    )
    deadline = time.time() + 120
    # wait until an epoch has finished (its backup exists), so the signal lands in training
    while not (out / "backup.npz").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr.decode()
    assert b"interrupted after" in stdout
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "interrupted"
    run = load_run(out)
    assert run.model is not None and (out / "metrics.json").exists()


def test_run_files_are_readable_by_others(trained_run: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.keras", "metrics.json", "config.toml"):
        mode = (trained_run / name).stat().st_mode & 0o777
        assert mode == 0o666 & ~umask, (name, oct(mode))


@pytest.mark.parametrize(("given", "expected"), [(None, "1"), ("0", "0")])
def test_onednn_is_asked_for_unless_the_user_chose(given: str | None, expected: str) -> None:
    """oneDNN is on by default (faster here) but a user's own setting wins."""
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if given is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = given
    code = "import os, l1cnn; print(os.environ['TF_ENABLE_ONEDNN_OPTS'])"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == expected


def test_mixed_bfloat16_computes_in_bfloat16_and_the_run_keeps_a_float32_model(
    xy_npz, tmp_path
) -> None:
    """bfloat16 compute on float32 weights while training; everything after is the float32 twin."""
    import keras

    from l1cnn.config import config_from_dict
    from l1cnn.errors import ConfigError
    from l1cnn.model import build_model, float32_twin
    from l1cnn.runs import load_run

    config = tiny_config(model={"precision": "mixed_bfloat16", "l1_lambda": 0.001})
    model = build_model(config.model, (12, 12, 1))
    compute = {layer.name: layer.dtype_policy.compute_dtype for layer in model.layers[1:]}
    assert set(compute.values()) == {"bfloat16", "float32"} and compute["output"] == "float32"
    assert all(w.dtype == "float32" for w in model.weights)
    pixels = np.random.default_rng(0).integers(0, 255, (16, 12, 12, 1)).astype(np.float32)
    twin = float32_twin(model, config)
    assert {layer.dtype_policy.name for layer in twin.layers} == {"float32"}
    mixed_p = keras.ops.convert_to_numpy(model(pixels)).ravel()
    exact_p = keras.ops.convert_to_numpy(twin(pixels)).ravel()
    assert 0 < np.abs(mixed_p - exact_p).max() < 0.02  # bfloat16 keeps ~3 significant digits
    with pytest.raises(ConfigError, match="model.precision"):
        config_from_dict({"model": {"precision": "float16"}})  # not a choice

    result = train(xy_npz, config, out=tmp_path / "mixed")
    assert result.metrics["test"]["roc_auc"] > 0.5
    saved = load_run(tmp_path / "mixed").model
    assert {layer.dtype_policy.name for layer in saved.layers} == {"float32"}
    again = train(xy_npz, config, out=tmp_path / "again")  # still deterministic
    assert [h["loss"] for h in again.history] == [h["loss"] for h in result.history]
