"""Issue 14: the collapse guard, min_delta, learning-rate schedules and oversampling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_images, tiny_config

from l1cnn import backup, runs
from l1cnn.callbacks import (
    COLLAPSED,
    PLATEAU_PATIENCE,
    CollapseGuard,
    LearningRateSchedule,
    cosine_learning_rate,
)
from l1cnn.cli import main
from l1cnn.config import Config, config_from_dict
from l1cnn.errors import ConfigError
from l1cnn.loop import StopTraining, make_early_stopping
from l1cnn.train import resume, train


def _history_without_time(rows: list[dict]) -> list[dict]:
    return [{k: float(v) for k, v in row.items() if k != "seconds"} for row in rows]


def _interrupt_after_backup(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    """Ctrl-C right after the backup of ``epoch`` is written (as a user would press it)."""
    real_save = backup.save

    def save_then_interrupt(run_dir, state):  # noqa: ANN001, ANN202
        path = real_save(run_dir, state)
        if state.epoch == epoch:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(backup, "save", save_then_interrupt)


def test_collapse_guard_counts_collapsed_epochs_in_a_row() -> None:
    labels = np.array([0, 1] * 10)
    good = labels * 0.8 + 0.1
    flat = np.full(20, 0.5)
    guard = CollapseGuard(labels, patience=2)
    guard.on_validation(1, flat)
    guard.on_epoch_end(1, {})  # one collapsed epoch: not yet
    guard.on_validation(2, good)
    assert guard.wait == 0  # a good epoch resets the count
    guard.on_validation(3, flat)
    guard.on_epoch_end(3, {})
    guard.on_validation(4, np.random.default_rng(0).random(20) * 0.1 + 0.45)  # chance AUC
    with pytest.raises(StopTraining) as stop:
        guard.on_epoch_end(4, {})
    assert stop.value.status == COLLAPSED
    assert "2 epochs in a row (3-4)" in stop.value.message
    assert "stop_on_collapse = false" in stop.value.message
    # patience 0 would stop on nothing seen: the guard waits for at least one collapsed epoch
    assert CollapseGuard(labels, patience=0).patience == 1


def test_collapse_guard_stops_the_specified_model_on_digits(tmp_path: Path, capsys) -> None:
    run = tmp_path / "spec"
    code = main(["train", "digits", "--epochs", "12", "--out", str(run), "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "Training: stopped after epoch 5: the model collapsed" in out
    assert "WARNING:" in out
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == COLLAPSED and info["epochs_run"] == 5  # patience 5, from epoch 1
    assert "collapsed in 5 epochs in a row (1-5)" in info["message"]
    assert len(runs.read_csv(run / "history.csv")) == 5
    assert not (run / "backup.npz").exists()
    assert COLLAPSED in runs.FINAL_STATUSES
    assert resume(run) is None  # finished: resume leaves it alone


def test_stop_on_collapse_false_trains_on(tmp_path: Path) -> None:
    config = config_from_dict({"train": {"epochs": 6, "stop_on_collapse": False}})
    result = train("digits", config, out=tmp_path / "on")
    assert result.status == "completed" and result.epochs_run == 6
    assert result.metrics["diagnosis"]["collapsed"] is True  # the diagnosis still says so


def test_resume_keeps_the_collapse_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = config_from_dict({"train": {"epochs": 12}})
    straight = train("digits", config, out=tmp_path / "straight")
    assert straight.status == COLLAPSED and straight.epochs_run == 5
    _interrupt_after_backup(monkeypatch, 3)
    run = tmp_path / "killed"
    first = train("digits", config, out=run)
    assert first.status == "interrupted" and first.epochs_run == 3
    assert backup.load(run).callbacks["collapse_guard"]["wait"] == 3
    monkeypatch.undo()
    resumed = resume(run)
    # a guard that forgot its count would train to epoch 7 before stopping
    assert resumed is not None and resumed.status == COLLAPSED and resumed.epochs_run == 5
    assert _history_without_time(resumed.history) == _history_without_time(straight.history)


def test_min_delta_reaches_early_stopping() -> None:
    stopper = make_early_stopping(config_from_dict({"train": {"min_delta": 0.1, "patience": 1}}))
    assert stopper.min_delta == 0.1
    assert not stopper.update(1, {"val_loss": 1.0}, _Weightless())
    assert stopper.update(2, {"val_loss": 0.95}, _Weightless())  # improved, but by < min_delta
    with pytest.raises(ConfigError, match="'train.min_delta' must be >= 0"):
        config_from_dict({"train": {"min_delta": -0.1}})
    assert Config().train.stop_on_collapse is True and Config().train.min_delta == 0.0


class _Weightless:
    """Stands in for a model where early stopping only asks for weights."""

    def get_weights(self) -> list:
        return []


def test_plateau_halves_the_rate_after_flat_epochs() -> None:
    import keras

    optimizer = keras.optimizers.RMSprop(0.01)
    schedule = LearningRateSchedule(optimizer, "plateau", 0.01, epochs=10)
    rates = []
    for epoch, val_loss in enumerate([1.0, 0.9, 0.95, 0.93, 0.8, 0.85, 0.85], start=1):
        schedule.on_epoch_end(epoch, {"val_loss": val_loss})
        rates.append(round(schedule.learning_rate, 6))
    assert PLATEAU_PATIENCE == 2
    # flat in epochs 3 and 4 -> halved after epoch 4; flat again in 6 and 7 -> halved again
    assert rates == [0.01, 0.01, 0.01, 0.005, 0.005, 0.005, 0.0025]
    assert schedule.get_state() == {"best": 0.8, "wait": 0}


def test_cosine_rate_per_epoch() -> None:
    import keras

    assert cosine_learning_rate(0.01, 1, 4) == 0.01
    assert cosine_learning_rate(0.01, 3, 4) == pytest.approx(0.005)
    optimizer = keras.optimizers.RMSprop(0.01)
    schedule = LearningRateSchedule(optimizer, "cosine", 0.01, epochs=4)
    schedule.on_epoch_begin(4, 4, None)
    assert schedule.learning_rate == pytest.approx(0.01 * 0.5 * (1 + np.cos(np.pi * 3 / 4)))


def test_oversample_index_balances_by_seed_and_epoch() -> None:
    from l1cnn.sampling import oversample_index

    labels = np.array([0] * 30 + [1] * 10)
    index = oversample_index(labels, 7, 1)
    assert np.bincount(labels[index]).tolist() == [30, 30]
    assert set(index[40:].tolist()) <= set(range(30, 40))  # only positives drawn again
    assert np.array_equal(index, oversample_index(labels, 7, 1))
    assert not np.array_equal(index, oversample_index(labels, 7, 2))  # a new draw per epoch
    assert np.array_equal(oversample_index(np.array([0, 1, 0, 1]), 7, 1), np.arange(4))


def test_schedule_and_sampling_values_are_checked() -> None:
    with pytest.raises(ConfigError, match="'train.lr_schedule' must be one of"):
        config_from_dict({"train": {"lr_schedule": "step"}})
    with pytest.raises(ConfigError, match="'train.sampling' must be one of"):
        config_from_dict({"train": {"sampling": "undersample"}})
    assert (Config().train.lr_schedule, Config().train.sampling) == ("constant", "none")


def test_resume_with_plateau_and_oversampling_equals_the_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Imbalanced random labels: val_loss rises, so the plateau schedule acts before the stop.
    x, _ = make_images(90, seed=6)
    y = (np.random.default_rng(6).random(90) < 0.3).astype(int)
    np.savez(tmp_path / "noise.npz", x=x, y=y)
    config = tiny_config(
        model={"l1_lambda": 0.0, "dropout_rate": 0.0},
        train={
            "epochs": 6,
            "learning_rate": 0.01,
            "early_stopping": False,
            "stop_on_collapse": False,
            "lr_schedule": "plateau",
            "sampling": "oversample",
        },
    )
    straight = train(tmp_path / "noise.npz", config, out=tmp_path / "straight")
    _interrupt_after_backup(monkeypatch, 3)
    run = tmp_path / "killed"
    assert train(tmp_path / "noise.npz", config, out=run).status == "interrupted"
    state = backup.load(run)
    assert state.epoch == 3 and "lr_schedule" in state.callbacks
    rate = next(
        float(v)
        for v, name in zip(state.optimizer, _optimizer_names(config), strict=True)
        if name == "learning_rate"
    )
    assert rate < 0.01  # the schedule had already lowered it: the state matters
    monkeypatch.undo()
    resumed = resume(run)
    assert resumed is not None and resumed.epochs_run == 6
    assert _history_without_time(resumed.history) == _history_without_time(straight.history)
    assert resumed.metrics["test"] == straight.metrics["test"]


def _optimizer_names(config: Config) -> list[str]:
    from l1cnn.model import build_model, compile_model

    model = compile_model(build_model(config.model, (12, 12, 1)), config)
    model.optimizer.build(model.trainable_variables)
    return [v.name for v in model.optimizer.variables]


def test_proximal_l1_follows_a_cosine_schedule(npz_file: Path, tmp_path: Path) -> None:
    from l1cnn import load_run
    from l1cnn.model import kernel_sparsity

    config = tiny_config(
        model={"l1_mode": "proximal", "l1_lambda": 0.05},
        train={"epochs": 2, "lr_schedule": "cosine", "learning_rate": 0.01},
    )
    result = train(npz_file, config, out=tmp_path / "prox")
    assert result.epochs_run == 2
    assert json.loads((result.run_dir / "run.json").read_text())["status"] == "completed"
    # the soft threshold (lr * l1_lambda, lr read from the optimizer) still makes exact zeros
    assert sum(k.zeros for k in kernel_sparsity(load_run(result.run_dir).model)) > 0
