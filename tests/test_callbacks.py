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
