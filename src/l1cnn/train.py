"""``train(source, config) -> TrainResult``: data, model, our loop, metrics, and the run folder."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from l1cnn import augment, backup, distribute, outputs, runs
from l1cnn.callbacks import CollapseGuard, make_callbacks
from l1cnn.config import Config, replace
from l1cnn.data import (
    PREDICT_CHUNK,
    Dataset,
    class_weights,
    epoch_shuffle_seed,
    image_read_errors,
    load_data,
    make_tf_dataset,
)
from l1cnn.errors import DataError, RunError, TrainingError
from l1cnn.loop import (
    EpochCallback,
    FitData,
    FitResult,
    ProgressBar,
    StepSettings,
    fit,
    make_early_stopping,
)
from l1cnn.model import build_model, compile_model, float32_twin
from l1cnn.sampling import oversample_index
from l1cnn.tracking import MlflowTarget, TrainTracking


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
    # Seconds per part of the command: data, epochs, scoring, writing, explanation, report.
    timings: dict[str, float] = field(default_factory=dict)


def resolve_config(config: Config, dataset: Dataset) -> Config:
    """Fill the "automatic" data keys with what the data turned out to be."""
    height, _width, channels = dataset.image_shape
    return replace(
        config,
        data={"image_size": height, "channels": channels, "positive_class": dataset.positive_class},
    )


def resume(
    run_dir: str | Path,
    verbose: bool = False,
    command: list[str] | None = None,
    mlflow: MlflowTarget | None = None,
    cluster: distribute.ClusterOptions | None = None,
) -> TrainResult | None:
    """Continue a killed or interrupted run from its last backup, with its own config and data.

    Args:
        run_dir: the run folder (its ``config.toml`` and ``run.json``'s source are used).
        verbose: print a progress bar per epoch.
        command: the command line, recorded in ``run.json`` under ``resumed``.
        mlflow: also log the run to MLflow (a new MLflow run, with the epochs before too).
        cluster: how this process joins a multi-worker run (its config's ``train.strategy``).

    Returns:
        The TrainResult of the completed run, or None when the run had already finished
        (a status in ``runs.FINAL_STATUSES``): then nothing is done.

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
    return train(
        info["source"],
        config,
        run_dir,
        verbose=verbose,
        command=command,
        resume=True,
        mlflow=mlflow,
        cluster=cluster,
    )


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


@dataclass
class OpenRun:
    """A run ready to train: its data, resolved config, folder and records (the lock is held)."""

    config: Config
    dataset: Dataset
    run_dir: Path
    info: dict[str, Any]
    summary: dict[str, Any]  # data.json: what the data turned out to be, with its fingerprint
    state: backup.TrainingState | None  # the backup to go on from (resume), else None
    started: float  # time.perf_counter() at the start, for the wall time


def train(
    source: str | Path,
    config: Config | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    verbose: bool = False,
    command: list[str] | None = None,
    resume: bool = False,
    mlflow: MlflowTarget | None = None,
    extra_callbacks: list[EpochCallback] | None = None,
    cluster: distribute.ClusterOptions | None = None,
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
        mlflow: also log the run to MLflow (``l1cnn.tracking``); its failures only warn.
        extra_callbacks: epoch callbacks called after the run's own (after its backup), e.g.
            ``l1cnn tune``'s pruning; they may end training with ``StopTraining``.
        cluster: how this process joins a ``multi-worker`` run (``l1cnn.distribute``:
            ``--workers``, ``--worker-index``, timeouts); None: ``TF_CONFIG`` and defaults.

    Returns:
        A TrainResult; the same facts are in the run folder.

    Raises:
        ConfigError, DataError, RunError: bad input, found before anything is written.
        RunError: also when the run folder cannot be written mid-training (the files of the
            last finished epoch stay intact) or another process trains into it.
        TrainingError: the loss diverged (the run folder keeps the last good weights).
    """
    started = (time.perf_counter(), dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    config = config or Config()
    # -- distributed (l1cnn.distribute): strategy "none" is today's path, untouched
    dist = distribute.setup(config.train.strategy, cluster)  # joins the cluster, if any
    shared = Path(out) if out is not None else None
    dataset = dist.agreed_data(
        lambda: load_data(source, config.data, config.train.seed),
        config,
        shared / runs.BACKUP_FILE if resume and shared is not None else None,
    )
    # -- end distributed
    timings = {"data": time.perf_counter() - started[0]}
    config = resolve_config(config, dataset)
    shared = shared if shared is not None else runs.default_run_dir(dataset.name)
    with dist.run_folder(shared, resume) as run_dir:  # the chief writes; others a temp copy
        if not resume:
            runs.prepare_run_dir(run_dir, overwrite)
        # Dropout's seed generators and the initial weights draw from the global seed. The
        # model is built before the folder is made: a network too big for the images writes
        # nothing.
        runs.set_seed(config.train.seed)
        with dist.scope():
            model = compile_model(build_model(config.model, dataset.image_shape), config)
        run_dir = run_dir if resume else runs.create_run_dir(run_dir, overwrite)
        # MLflow only when asked, and from the chief alone (one MLflow run per training)
        tracked = TrainTracking(mlflow if dist.is_chief else None)
        with runs.RunLock(run_dir), tracked as tracking:
            opened = _open_run(source, config, dataset, run_dir, command, resume, started)
            opened.info.update(dist.facts())  # in the final run.json; {} for one process
            tracking.start(opened.config, opened.run_dir, opened.info)
            fitted = time.perf_counter()
            result = _fit_run(
                opened, model, verbose, dist, tracking.callbacks, extra_callbacks or []
            )
            timings["epochs"] = time.perf_counter() - fitted
            finished = _finish_run(opened, model, result, timings)
            finished.run_dir = shared
            return finished


def _open_run(
    source: str | Path,
    config: Config,
    dataset: Dataset,
    run_dir: Path,
    command: list[str] | None,
    resume: bool,
    started: tuple[float, str],
) -> OpenRun:
    """Write the run's records (config, run.json, data, split); on resume, find its backup."""
    info: dict[str, Any] = {
        "status": "running",
        "source": str(source),
        "seed": config.train.seed,
        "class_weight": class_weights(dataset.splits["train"].labels, config.train.class_weight),
        "command": command,
        "started": started[1],
        "versions": runs.library_versions(),
    }
    summary = dataset.summary()
    state = None
    if resume:
        info, state = _resumed_info(run_dir, summary, info)
    outputs.write_run_records(run_dir, config, info, summary, dataset.split_ids())
    if augment.enabled(config.augment):  # a grid of augmented training images, for the report
        train_split = dataset.splits["train"]
        first = np.arange(min(6, len(train_split)))
        pixels = (
            train_split.images.read(first) if train_split.streamed else train_split.images[first]
        )
        with outputs.writing_to(run_dir):
            augment.write_samples_grid(run_dir, pixels, config.augment, config.train.seed)
    return OpenRun(config, dataset, run_dir, info, summary, state, started[0])


class _Backup(EpochCallback):
    """Save weights, optimizer, RNG, early-stopping and callback state after every epoch."""

    def __init__(
        self, run_dir: Path, model: keras.Model, done: list, stopper: Any, stateful: list
    ) -> None:
        self.run_dir, self.model, self.done, self.stopper = run_dir, model, done, stopper
        self.stateful = stateful  # callbacks with state_key / get_state (l1cnn.callbacks)

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self.done.append(logs)
        states = {c.state_key: c.get_state() for c in self.stateful}
        try:
            state = backup.capture(
                self.model, self.model.optimizer, self.done, self.stopper, states
            )
            backup.save(self.run_dir, state)
        except OSError as exc:
            raise RunError(
                f"cannot write the backup of epoch {epoch} to run folder '{self.run_dir}': "
                f"{exc.strerror}; its files from epoch {epoch - 1} are intact: fix this and run "
                f"`l1cnn train --resume {self.run_dir}`"
            ) from None


def _resume_advice(run_dir: Path) -> str:
    return f"; restore it, then `l1cnn train --resume {run_dir}` goes on from the last epoch"


def _fit_run(
    opened: OpenRun,
    model: keras.Model,
    verbose: bool,
    dist: distribute.Single | Any = None,
    loggers: list[EpochCallback] | None = None,
    extra: list[EpochCallback] | None = None,
) -> FitResult:
    """Our loop over the run's data, from its backup if any, with a backup after every epoch."""
    dist = dist if dist is not None else distribute.Single()
    config, dataset, state = opened.config, opened.dataset, opened.state
    weights = opened.info["class_weight"]

    def train_batches(epoch: int) -> Any:  # a fresh shuffle per epoch, seeded by (seed, epoch)
        split = dataset.splits["train"]
        if config.train.sampling == "oversample":  # minority drawn again, by (seed, epoch)
            split = split.take(oversample_index(split.labels, config.train.seed, epoch))
        batches = make_tf_dataset(
            split,
            config.train.batch_size,
            shuffle=True,
            seed=epoch_shuffle_seed(config.train.seed, epoch),
            weights=weights,
        )  # augmentation (off by default) on training batches only, seeded by (seed, epoch)
        batches = augment.augment_dataset(batches, config.augment, config.train.seed, epoch)
        return dist.take_part(batches)  # a worker's rows of each global batch (l1cnn.distribute)

    val = dataset.splits["val"]
    data = FitData(train_batches, make_tf_dataset(val, PREDICT_CHUNK), val.labels)
    stopper = make_early_stopping(config)
    stateful = make_callbacks(config, model.optimizer, val.labels)
    if state is not None:  # weights, optimizer, dropout RNG, early stopping, callbacks
        with dist.scope():  # the optimizer's variables are made (mirrored) here
            backup.restore(state, model, model.optimizer, stopper)
        for callback in stateful:
            if callback.state_key in state.callbacks:
                callback.set_state(state.callbacks[callback.state_key])
    done = list(state.history) if state is not None else []
    schedules = [c for c in stateful if not isinstance(c, CollapseGuard)]
    guards = [c for c in stateful if isinstance(c, CollapseGuard)]
    callbacks: list[EpochCallback] = [ProgressBar()] if verbose else []
    board = _tensorboard(opened, model) if config.train.tensorboard else None
    # The schedule changes the rate before the board logs it and the backup saves it; an epoch
    # backed up is an epoch logged; the guard comes after the backup, so the epoch it stops on
    # is saved with its counter (resume then stops at once). Extra loggers (MLflow) see an
    # epoch once it is backed up, and before the guard may stop on it.
    callbacks += [*schedules, *([board] if board is not None else [])]
    callbacks += [_Backup(opened.run_dir, model, done, stopper, stateful), *(loggers or [])]
    callbacks += [*guards, *(extra or [])]
    # Streamed images are decoded during training: one that changed since the scan stops it.
    try:
        with image_read_errors(_resume_advice(opened.run_dir)):
            return fit(
                model,
                data,
                StepSettings.from_config(config),
                epochs=config.train.epochs,
                early_stopping=stopper,
                callbacks=callbacks,
                done=state.history if state is not None else None,
                step_factory=dist.step_factory(),
            )
    finally:
        if board is not None:
            board.close()


def _tensorboard(opened: OpenRun, model: keras.Model) -> EpochCallback:
    """The run's TensorBoard logger; its folder is checked writable before training starts."""
    from l1cnn.tensorboard_log import TENSORBOARD_DIR, TensorBoardLog, open_log_dir

    log_dir = open_log_dir(opened.run_dir / TENSORBOARD_DIR)
    return TensorBoardLog(log_dir, model, opened.dataset.splits["val"].labels)


def _finish_run(
    opened: OpenRun, model: keras.Model, result: FitResult, timings: dict[str, float]
) -> TrainResult:
    """Score, diagnose and write the finished run folder; raise if training diverged."""
    config, run_dir, info = opened.config, opened.run_dir, opened.info
    advice = f"(lower learning_rate, now {config.train.learning_rate:g})"
    if result.status == "diverged" and not result.history:
        info.update(status="diverged", message=result.message)
        outputs.write_run_info(run_dir, info)
        raise TrainingError(f"{result.message}; no epoch finished, so no model was saved {advice}")
    scoring = time.perf_counter()
    model = float32_twin(model, config)  # mixed precision is for the training steps only
    with image_read_errors(_resume_advice(run_dir)):
        metrics, probs = outputs.score_dataset(model, opened.dataset, config.train.threshold)
    metrics, probs, calibration = outputs.calibrate_scores(  # train.calibration (issue 15)
        metrics, probs, opened.dataset, config.train.threshold, config.train.calibration
    )
    outputs.add_diagnosis(metrics, probs, result.history, result.best_epoch, config.model.l1_lambda)
    timings["scoring"] = time.perf_counter() - scoring
    wall = time.perf_counter() - opened.started
    info.update(
        status=result.status,
        message=result.message,
        epochs_run=result.epochs_run,
        best_epoch=result.best_epoch,
        finished=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        wall_time_s=round(wall, 3),
    )
    timings |= outputs.write_finished_run(
        run_dir,
        outputs.FinishedRun(
            model, opened.dataset, result.history, metrics, probs, info, calibration=calibration
        ),
    )
    if result.status == "diverged":
        raise TrainingError(
            f"{result.message}; training stopped and '{run_dir}' keeps the weights of epoch "
            f"{result.best_epoch} {advice}"
        )
    if config.train.tensorboard and result.history:
        from l1cnn.tensorboard_log import TENSORBOARD_DIR, log_figures

        log_figures(run_dir / TENSORBOARD_DIR, run_dir, len(result.history))
    return TrainResult(
        run_dir=run_dir,
        config=config,
        metrics=metrics,
        history=result.history,
        status=result.status,
        best_epoch=result.best_epoch,
        epochs_run=result.epochs_run,
        data=opened.summary,
        wall_time_s=wall,
        timings=timings,
    )
