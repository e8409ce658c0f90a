"""``train(source, config) -> TrainResult``: data, model, our loop, metrics, and the run folder."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from l1cnn import runs
from l1cnn.config import Config, dumps_config, replace
from l1cnn.data import Dataset, class_weights, load_data, make_tf_dataset
from l1cnn.errors import RunError, TrainingError
from l1cnn.evaluate import choose_threshold, compute_metrics, diagnose
from l1cnn.loop import EarlyStopping, StepSettings, fit
from l1cnn.model import build_model
from l1cnn.predict import predict_split

HISTORY_FIELDS = [
    "epoch", "loss", "data_loss", "l1_penalty", "accuracy",
    "val_loss", "val_data_loss", "val_accuracy", "seconds",
]
PREDICT_BATCH = 512


@dataclass
class TrainResult:
    """What ``train`` produced; everything here is also in the run folder."""

    run_dir: Path
    config: Config
    metrics: dict[str, Any]
    history: list[dict[str, float]]
    status: str
    best_epoch: int
    epochs_run: int
    data: dict[str, Any]
    wall_time_s: float


def resolve_config(config: Config, dataset: Dataset) -> Config:
    """Fill the "automatic" data keys with what the data turned out to be."""
    height, _width, channels = dataset.image_shape
    return replace(
        config,
        data={"image_size": height, "channels": channels, "positive_class": dataset.positive_class},
    )


def compile_model(model: keras.Model, config: Config) -> keras.Model:
    """Compile with the specified loss and optimizer (used by our loop and by ``model.fit`` users)."""
    model.compile(
        optimizer=keras.optimizers.RMSprop(learning_rate=config.train.learning_rate),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=["accuracy"],
    )
    return model


def make_early_stopping(config: Config) -> EarlyStopping | None:
    """Early stopping on validation loss as configured, or None for a fixed number of epochs."""
    if not config.train.early_stopping:
        return None
    return EarlyStopping(
        monitor="val_loss",
        patience=config.train.patience,
        restore_best_weights=config.train.restore_best_weights,
    )


def score_dataset(
    model: keras.Model, dataset: Dataset, threshold_rule: str
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Metrics of every split at a threshold chosen on validation; also the probabilities."""
    probs = {name: predict_split(model, split) for name, split in dataset.splits.items()}
    threshold = choose_threshold(threshold_rule, dataset.splits["val"].labels, probs["val"])
    metrics: dict[str, Any] = {"threshold": {"rule": threshold_rule, "value": threshold}}
    for name, split in dataset.splits.items():
        metrics[name] = compute_metrics(split.labels, probs[name], threshold)
    return metrics, probs


def prediction_rows(dataset: Dataset, probs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Rows of ``predictions.csv``: validation and test probabilities with labels."""
    return [
        {"split": name, "id": split.ids[i], "label": int(split.labels[i]),
         "probability": f"{probs[name][i]:.8f}"}
        for name in ("val", "test")
        for split in [dataset.splits[name]]
        for i in range(len(split))
    ]


def train(
    source: str | Path,
    config: Config | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    verbose: bool = False,
    command: list[str] | None = None,
) -> TrainResult:
    """Train the classifier on ``source`` and write a run folder.

    Args:
        source: ``"digits"``, a ``.npz`` file, or a folder of two class folders.
        config: the configuration (defaults: the specified model).
        out: the run folder (default ``runs/<data name>-<time>``); must not exist unless
            ``overwrite``.
        verbose: print a progress bar per epoch.
        command: the command line, recorded in ``run.json``.

    Returns:
        A TrainResult; the same facts are in the run folder.

    Raises:
        ConfigError, DataError, RunError: bad input, found before anything is written.
        TrainingError: the loss diverged (the run folder keeps the last good weights).
    """
    config = config or Config()
    started = time.perf_counter()
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    dataset = load_data(source, config.data, config.train.seed)
    config = resolve_config(config, dataset)
    run_dir = Path(out) if out is not None else runs.default_run_dir(dataset.name)
    runs.prepare_run_dir(run_dir, overwrite)

    runs.set_seed(config.train.seed)
    model = compile_model(build_model(config.model, dataset.image_shape), config)
    weights = class_weights(dataset.splits["train"].labels, config.train.class_weight)
    train_ds = make_tf_dataset(dataset.splits["train"], config.train.batch_size, shuffle=True,
                               seed=config.train.seed, weights=weights)
    val_ds = make_tf_dataset(dataset.splits["val"], PREDICT_BATCH)

    summary = dataset.summary()
    run_dir = runs.create_run_dir(run_dir, overwrite)
    info: dict[str, Any] = {
        "status": "running",
        "source": str(source),
        "seed": config.train.seed,
        "class_weight": weights,
        "command": command,
        "started": started_at,
        "versions": runs.library_versions(),
    }
    try:
        runs.atomic_write_text(run_dir / runs.CONFIG_FILE, dumps_config(config))
        runs.write_json(run_dir / runs.RUN_FILE, info)
        runs.write_json(run_dir / runs.DATA_FILE, summary)
        runs.write_json(run_dir / runs.SPLIT_FILE, dataset.split_ids())
    except OSError as exc:
        raise RunError(f"cannot write to run folder '{run_dir}': {exc.strerror}") from None

    settings = StepSettings(config.model.l1_lambda, config.model.l1_mode,
                            config.train.learning_rate)
    result = fit(
        model, model.optimizer, train_ds, val_ds, dataset.splits["val"].labels, settings,
        epochs=config.train.epochs, early_stopping=make_early_stopping(config), verbose=verbose,
    )
    if result.status == "diverged" and not result.history:
        info.update(status="diverged", message=result.message)
        runs.write_json(run_dir / runs.RUN_FILE, info)
        raise TrainingError(f"{result.message}; no epoch finished, so no model was saved "
                            f"(lower learning_rate, now {config.train.learning_rate:g})")

    metrics, probs = score_dataset(model, dataset, config.train.threshold)
    last = result.history[-1] if result.history else {}
    best = next((h for h in result.history if h["epoch"] == result.best_epoch), last)
    l1_share = best["l1_penalty"] / best["loss"] if best and best.get("loss") else None
    metrics["diagnosis"] = diagnose(
        probs["val"], metrics["val"]["roc_auc"], l1_share, config.model.l1_lambda
    )
    wall = time.perf_counter() - started
    info.update(
        status=result.status,
        message=result.message,
        epochs_run=result.epochs_run,
        best_epoch=result.best_epoch,
        finished=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        wall_time_s=round(wall, 3),
    )
    try:
        runs.save_model_atomic(model, run_dir / runs.MODEL_FILE)
        runs.write_csv(run_dir / runs.HISTORY_FILE, result.history, HISTORY_FIELDS)
        runs.write_csv(run_dir / runs.PREDICTIONS_FILE, prediction_rows(dataset, probs),
                       ["split", "id", "label", "probability"])
        runs.write_json(run_dir / runs.METRICS_FILE, metrics)
        runs.write_json(run_dir / runs.RUN_FILE, info)
    except OSError as exc:
        raise RunError(f"cannot write to run folder '{run_dir}': {exc.strerror}") from None
    if result.status == "diverged":
        raise TrainingError(
            f"{result.message}; training stopped and '{run_dir}' keeps the weights of epoch "
            f"{result.best_epoch} (lower learning_rate, now {config.train.learning_rate:g})"
        )
    return TrainResult(
        run_dir=run_dir, config=config, metrics=metrics, history=result.history,
        status=result.status, best_epoch=result.best_epoch, epochs_run=result.epochs_run,
        data=summary, wall_time_s=wall,
    )
