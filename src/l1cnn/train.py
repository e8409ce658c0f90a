"""``train(source, config) -> TrainResult``: data, model, our loop, metrics, and the run folder."""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from l1cnn import backup, runs
from l1cnn.config import Config, dumps_config, replace
from l1cnn.data import Dataset, class_weights, image_read_errors, load_data, make_tf_dataset
from l1cnn.errors import DataError, RunError, TrainingError
from l1cnn.evaluate import compute_metrics, diagnose, threshold_choice
from l1cnn.explain import write_explanation
from l1cnn.loop import EarlyStopping, StepSettings, fit
from l1cnn.model import build_model
from l1cnn.predict import predict_split
from l1cnn.reporting import write_report

HISTORY_FIELDS = [
    "epoch",
    "loss",
    "data_loss",
    "l1_penalty",
    "accuracy",
    "val_loss",
    "val_data_loss",
    "val_accuracy",
    "seconds",
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
    """Compile with the specified loss and optimizer (for our loop and ``model.fit`` users)."""
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
    # The rule, value and a note when the rule could not be met as asked.
    choice = threshold_choice(threshold_rule, dataset.splits["val"].labels, probs["val"])
    threshold = choice["value"]
    metrics: dict[str, Any] = {"threshold": choice}
    for name, split in dataset.splits.items():
        metrics[name] = compute_metrics(split.labels, probs[name], threshold)
    return metrics, probs


def prediction_rows(dataset: Dataset, probs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Rows of ``predictions.csv``: validation and test probabilities with labels."""
    return [
        {
            "split": name,
            "id": split.ids[i],
            "label": int(split.labels[i]),
            "probability": f"{probs[name][i]:.8f}",
        }
        for name in ("val", "test")
        for split in [dataset.splits[name]]
        for i in range(len(split))
    ]


def epoch_shuffle_seed(seed: int, epoch: int) -> int:
    """The training data's shuffle seed in ``epoch``: a function of (seed, epoch) alone.

    So a resumed run sees the same batches in epoch k as an uninterrupted one.
    """
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def resume(
    run_dir: str | Path, verbose: bool = False, command: list[str] | None = None
) -> TrainResult | None:
    """Continue a killed or interrupted run from its last backup, with its own config and data.

    Args:
        run_dir: the run folder (its ``config.toml`` and ``run.json``'s source are used).
        verbose: print a progress bar per epoch.
        command: the command line, recorded in ``run.json`` under ``resumed``.

    Returns:
        The TrainResult of the completed run, or None when the run had already finished
        (status completed, early_stopped or diverged): then nothing is done.

    Raises:
        RunError: not a run folder, a live trainer holds it, or its backup is unreadable.
        DataError: the data has changed since the run started (fingerprint differs).
    """
    run_dir = Path(run_dir)
    if not (run_dir / runs.RUN_FILE).is_file() or not (run_dir / runs.CONFIG_FILE).is_file():
        raise RunError(f"'{run_dir}' is not an l1cnn run folder (no run.json and config.toml)")
    info = _read_record(run_dir, runs.RUN_FILE)
    if info.get("status") in runs.FINAL_STATUSES:
        return None
    config = runs.read_run_config(run_dir)
    return train(info["source"], config, out=run_dir, verbose=verbose, command=command, resume=True)


def _read_record(run_dir: Path, name: str) -> dict[str, Any]:
    try:
        return runs.read_json(run_dir / name)
    except (OSError, ValueError) as exc:
        raise RunError(f"run '{run_dir}' has an unreadable {name}: {exc}") from None


def _resumed_info(
    run_dir: Path, summary: dict[str, Any], info: dict[str, Any]
) -> tuple[dict[str, Any], backup.TrainingState | None]:
    """The run's own run.json, marked running again, and its backup (None: none yet)."""
    recorded = _read_record(run_dir, runs.DATA_FILE).get("fingerprint")
    if recorded != summary["fingerprint"]:
        raise DataError(
            f"the data at '{info['source']}' has changed since run '{run_dir}' started "
            "(fingerprint differs), so it cannot be resumed; train a new run instead"
        )
    runs.remove_orphan_temp_files(run_dir)  # a kill mid-write leaves one; we hold the lock
    state = backup.load(run_dir)
    old = _read_record(run_dir, runs.RUN_FILE)
    resumed = {
        "at": info["started"],
        "command": info["command"],
        "from_epoch": state.epoch if state else 0,
    }
    old["resumed"] = [*old.get("resumed", []), resumed]
    old.update(status="running", message="", versions=info["versions"])
    return old, state


def train(
    source: str | Path,
    config: Config | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    verbose: bool = False,
    command: list[str] | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train the classifier on ``source`` and write a run folder.

    Args:
        source: ``"digits"``, a ``.npz`` file, or a folder of two class folders.
        config: the configuration (defaults: the specified model).
        out: the run folder (default ``runs/<data name>-<time>``); must not exist unless
            ``overwrite``.
        verbose: print a progress bar per epoch.
        command: the command line, recorded in ``run.json``.
        resume: continue the unfinished run in ``out`` from its last backup (use
            :func:`resume`, which reads the run's config and source).

    Returns:
        A TrainResult; the same facts are in the run folder.

    Raises:
        ConfigError, DataError, RunError: bad input, found before anything is written.
        RunError: also when the run folder cannot be written mid-training (the files of the
            last finished epoch stay intact) or another process trains into it.
        TrainingError: the loss diverged (the run folder keeps the last good weights).
    """
    # The run folder is locked while training; the ExitStack releases the lock however
    # training ends. Add any new parameter to both train and _train.
    with contextlib.ExitStack() as cleanup:
        return _train(source, config, out, overwrite, verbose, command, resume, cleanup)


def _train(
    source: str | Path,
    config: Config | None,
    out: str | Path | None,
    overwrite: bool,
    verbose: bool,
    command: list[str] | None,
    resume: bool,
    cleanup: contextlib.ExitStack,
) -> TrainResult:
    """The body of :func:`train`; ``cleanup`` holds the run folder's lock."""
    config = config or Config()
    started = time.perf_counter()
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    dataset = load_data(source, config.data, config.train.seed)
    config = resolve_config(config, dataset)
    run_dir = Path(out) if out is not None else runs.default_run_dir(dataset.name)
    if not resume:
        runs.prepare_run_dir(run_dir, overwrite)

    runs.set_seed(config.train.seed)
    model = compile_model(build_model(config.model, dataset.image_shape), config)
    weights = class_weights(dataset.splits["train"].labels, config.train.class_weight)

    # A fresh shuffle per epoch, seeded by (seed, epoch), so that a resumed run sees the
    # same batches in epoch k as an uninterrupted one.
    def train_ds(epoch: int) -> Any:
        return make_tf_dataset(
            dataset.splits["train"],
            config.train.batch_size,
            shuffle=True,
            seed=epoch_shuffle_seed(config.train.seed, epoch),
            weights=weights,
        )

    val_ds = make_tf_dataset(dataset.splits["val"], PREDICT_BATCH)

    summary = dataset.summary()
    # A resumed run keeps its folder; the lock is held until training ends.
    run_dir = run_dir if resume else runs.create_run_dir(run_dir, overwrite)
    cleanup.enter_context(runs.RunLock(run_dir))
    info: dict[str, Any] = {
        "status": "running",
        "source": str(source),
        "seed": config.train.seed,
        "class_weight": weights,
        "command": command,
        "started": started_at,
        "versions": runs.library_versions(),
    }
    state = None
    if resume:
        info, state = _resumed_info(run_dir, summary, info)
    try:
        runs.atomic_write_text(run_dir / runs.CONFIG_FILE, dumps_config(config))
        runs.write_json(run_dir / runs.RUN_FILE, info)
        runs.write_json(run_dir / runs.DATA_FILE, summary)
        runs.write_json(run_dir / runs.SPLIT_FILE, dataset.split_ids())
    except OSError as exc:
        raise RunError(f"cannot write to run folder '{run_dir}': {exc.strerror}") from None

    settings = StepSettings(
        config.model.l1_lambda, config.model.l1_mode, config.train.learning_rate
    )
    # Restore the backup (weights, optimizer, dropout RNG, early stopping) and write a
    # new one after every epoch.
    stopper = make_early_stopping(config)
    if state is not None:
        backup.restore(state, model, model.optimizer, stopper)
    done = list(state.history) if state is not None else []

    def save_backup(epoch: int, logs: dict[str, float]) -> None:
        done.append(logs)
        try:
            backup.save(run_dir, backup.capture(model, model.optimizer, done, stopper))
        except OSError as exc:
            raise RunError(
                f"cannot write the backup of epoch {epoch} to run folder '{run_dir}': "
                f"{exc.strerror}; its files from epoch {epoch - 1} are intact: fix this and run "
                f"`l1cnn train --resume {run_dir}`"
            ) from None

    # Streamed images are decoded during training: one that changed since the scan stops it.
    advice = f"; restore it, then `l1cnn train --resume {run_dir}` goes on from the last epoch"
    with image_read_errors(advice):
        result = fit(
            model,
            model.optimizer,
            train_ds,
            val_ds,
            dataset.splits["val"].labels,
            settings,
            epochs=config.train.epochs,
            early_stopping=stopper,
            verbose=verbose,
            on_epoch_end=save_backup,
            done=state.history if state is not None else None,
        )
    if result.status == "diverged" and not result.history:
        info.update(status="diverged", message=result.message)
        runs.write_json(run_dir / runs.RUN_FILE, info)
        raise TrainingError(
            f"{result.message}; no epoch finished, so no model was saved "
            f"(lower learning_rate, now {config.train.learning_rate:g})"
        )

    with image_read_errors(advice):
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
        info["model_sha256"] = runs.save_model_atomic(model, run_dir / runs.MODEL_FILE)
        runs.write_csv(run_dir / runs.HISTORY_FILE, result.history, HISTORY_FIELDS)
        runs.write_csv(
            run_dir / runs.PREDICTIONS_FILE,
            prediction_rows(dataset, probs),
            ["split", "id", "label", "probability"],
        )
        runs.write_json(run_dir / runs.METRICS_FILE, metrics)
        runs.write_json(run_dir / runs.RUN_FILE, info)
        if result.status in runs.FINAL_STATUSES:  # Finished, the backup has done its job
            (run_dir / runs.BACKUP_FILE).unlink(missing_ok=True)
    except OSError as exc:
        raise RunError(f"cannot write to run folder '{run_dir}': {exc.strerror}") from None
    # Model-dependent arrays (explain.npz), then plots and report.html / report.md.
    write_explanation(
        run_dir, model, dataset.splits["test"], probs["test"], metrics["threshold"]["value"]
    )
    write_report(run_dir)
    if result.status == "diverged":
        raise TrainingError(
            f"{result.message}; training stopped and '{run_dir}' keeps the weights of epoch "
            f"{result.best_epoch} (lower learning_rate, now {config.train.learning_rate:g})"
        )
    return TrainResult(
        run_dir=run_dir,
        config=config,
        metrics=metrics,
        history=result.history,
        status=result.status,
        best_epoch=result.best_epoch,
        epochs_run=result.epochs_run,
        data=summary,
        wall_time_s=wall,
    )
