"""Magnitude pruning: turn L1's near-zero weights into exact zeros, and measure what that buys.

``prune_run`` zeroes the smallest-magnitude kernel weights of a run (a fraction per layer, or
everything below an absolute magnitude), optionally fine-tunes with the zeros held fixed, and
writes a new run with its own metrics, report and ``prune.json``: the sparsity per layer, the
accuracy and ROC-AUC change, and the gzip size of the model file against the dense one.
TensorFlow Model Optimization's pruning needs tf-keras, not Keras 3, so this is ours.
"""

from __future__ import annotations

import datetime as dt
import gzip
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from l1cnn import outputs, runs
from l1cnn.config import PruneOptions
from l1cnn.data import PREDICT_CHUNK, Dataset, class_weights, image_read_errors, make_tf_dataset
from l1cnn.errors import RunError
from l1cnn.loop import FitData, FitResult, ProgressBar, StepSettings, fit, make_early_stopping
from l1cnn.model import compile_model, kernel_sparsity, regularized_kernels
from l1cnn.predict import reload_run_data

PRUNE_FILE = "prune.json"
SUMMARY_METRICS = ("accuracy", "roc_auc", "f1", "loss")


def magnitude_mask(kernel: np.ndarray, options: PruneOptions) -> np.ndarray:
    """True where a weight is kept: all but the ``sparsity`` smallest, or those >= min_magnitude.

    Args:
        kernel: one layer's kernel.
        options: the pruning rule.

    Returns:
        A boolean array of the kernel's shape.
    """
    magnitude = np.abs(kernel).reshape(-1)
    if options.min_magnitude is not None:
        keep = magnitude >= options.min_magnitude
    else:
        n_zero = int(np.floor(options.sparsity * magnitude.size))
        keep = np.ones(magnitude.size, bool)
        keep[np.argsort(magnitude, kind="stable")[:n_zero]] = False  # exact count despite ties
    return keep.reshape(kernel.shape)


def layer_sparsity(model: keras.Model) -> dict[str, dict[str, float]]:
    """Per Conv2D/Dense layer: kernel weights, exact zeros and their fraction, plus the total."""
    counts = kernel_sparsity(model)
    out: dict[str, dict[str, float]] = {
        c.layer: {"weights": c.weights, "zeros": c.zeros, "sparsity": c.zeros / c.weights}
        for c in counts
    }
    total, zeros = sum(c.weights for c in counts), sum(c.zeros for c in counts)
    out["total"] = {"weights": total, "zeros": zeros, "sparsity": zeros / total if total else 0.0}
    return out


def gzip_size(path: str | Path) -> int:
    """Bytes of ``path`` after gzip -9: what the zeros save on disk and on the wire."""
    return len(gzip.compress(Path(path).read_bytes(), compresslevel=9, mtime=0))


def plain_copy(model: keras.Model) -> keras.Model:
    """An uncompiled copy with the same weights (no optimizer state travels with it).

    Built from the config: ``keras.models.clone_model`` re-compiles a compiled model.
    """
    clean = keras.Model.from_config(model.get_config())
    clean.set_weights(model.get_weights())
    return clean


def model_file_sizes(model: keras.Model) -> dict[str, int]:
    """Size of the model saved as ``.keras`` without optimizer state, raw and gzipped.

    Both the dense and the pruned model are measured this way, so the comparison is fair (a
    training run's own ``model.keras`` also holds the optimizer's slots).
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        plain_copy(model).save(path)
        return {"bytes": path.stat().st_size, "gzip_bytes": gzip_size(path)}


def apply_masks(model: keras.Model, masks: list[np.ndarray]) -> None:
    """Set the masked kernel weights to exactly +0.0.

    ``np.where`` rather than ``w * mask``: a product leaves -0.0 for negative weights, whose
    random sign bits cost gzip a lot.
    """
    for kernel, mask in zip(regularized_kernels(model), masks, strict=True):
        kernel.assign(np.where(mask, keras.ops.convert_to_numpy(kernel), np.float32(0.0)))


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics.get(k) for k in SUMMARY_METRICS}


def _change(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float | None]:
    return {
        k: (after[k] - before[k])
        if before.get(k) is not None and after.get(k) is not None
        else None
        for k in SUMMARY_METRICS
    }


class _KeepMask:
    """A variable constraint that keeps masked weights at +0.0 (see :func:`apply_masks`)."""

    def __init__(self, mask: np.ndarray) -> None:
        self.mask = keras.ops.convert_to_tensor(mask, "bool")

    def __call__(self, w: Any) -> Any:
        return keras.ops.where(self.mask, w, keras.ops.zeros_like(w))


def _fine_tune(
    model: keras.Model,
    masks: list[np.ndarray],
    run: runs.Run,
    dataset: Dataset,
    epochs: int,
    verbose: bool,
) -> FitResult:
    """Our training loop with each kernel constrained to its mask, so zeros stay zero.

    Keras applies a variable's ``constraint`` right after every optimizer update, i.e. inside
    each step; the constraints are removed afterwards so the saved model is plain.
    """
    config = run.config
    runs.set_seed(config.train.seed)
    compile_model(model, config)
    kernels = regularized_kernels(model)
    for kernel, mask in zip(kernels, masks, strict=True):
        kernel.constraint = _KeepMask(mask)
    try:
        weights = class_weights(dataset.splits["train"].labels, config.train.class_weight)
        train_ds = make_tf_dataset(
            dataset.splits["train"],
            config.train.batch_size,
            shuffle=True,
            seed=config.train.seed,
            weights=weights,
        )
        val = dataset.splits["val"]
        with image_read_errors():
            return fit(
                model,
                FitData(train_ds, make_tf_dataset(val, PREDICT_CHUNK), val.labels),
                StepSettings.from_config(config),
                epochs=epochs,
                early_stopping=make_early_stopping(config),
                callbacks=[ProgressBar()] if verbose else [],
            )
    finally:
        for kernel in kernels:
            kernel.constraint = None
        apply_masks(model, masks)  # restored best weights were masked too; this makes it certain


@dataclass
class PruneResult:
    """What ``prune_run`` produced; the same facts are in the new run's ``prune.json``."""

    run_dir: Path
    record: dict[str, Any]


def prune_run(
    run: runs.Run | str | Path,
    options: PruneOptions,
    out: str | Path | None = None,
    overwrite: bool = False,
    verbose: bool = False,
    command: list[str] | None = None,
) -> PruneResult:
    """Prune a run's kernels, optionally fine-tune with the zeros fixed, and write a new run.

    Args:
        run: a Run or its folder.
        options: the pruning rule and fine-tuning epochs.
        out: the new run folder (default ``<run>-pruned-<s0.9|t0.001>``).
        overwrite: replace an existing run folder at ``out``.
        verbose: show a progress bar per fine-tuning epoch.
        command: the command line, recorded in ``run.json``.

    Returns:
        A PruneResult with the new run's folder and the ``prune.json`` record.
    """
    started = time.perf_counter()
    run = run if isinstance(run, runs.Run) else runs.load_run(run)
    # Before any layer is built: Dropout's seed generators draw from the global seed.
    runs.set_seed(run.config.train.seed)
    if out is None:
        out = run.path.parent / f"{run.path.name}-pruned-{options.name}"
    out = Path(out)
    if out.resolve() == run.path.resolve():
        raise RunError("the pruned run needs its own folder (--out must differ from RUN)")
    runs.prepare_run_dir(out, overwrite)
    dataset = reload_run_data(run)
    model = plain_copy(run.model)  # the caller's Run keeps its dense model

    masks = [
        magnitude_mask(keras.ops.convert_to_numpy(k), options) for k in regularized_kernels(model)
    ]
    apply_masks(model, masks)
    threshold_rule = run.config.train.threshold
    pruned_metrics, _ = outputs.score_dataset(model, dataset, threshold_rule)
    result, how = FitResult([], "completed", 0, 0), "no fine-tuning"
    if options.fine_tune_epochs:
        result = _fine_tune(model, masks, run, dataset, options.fine_tune_epochs, verbose)
        how = f"fine-tuned with the zeros fixed: {result.status}, {result.epochs_run} epoch(s)"
    metrics, probs = outputs.score_dataset(model, dataset, threshold_rule)
    metrics, probs, calibration = outputs.calibrate_scores(  # train.calibration (issue 15)
        metrics, probs, dataset, threshold_rule, run.config.train.calibration
    )
    outputs.add_diagnosis(
        metrics, probs, result.history, result.best_epoch, run.config.model.l1_lambda
    )
    record = _prune_record(run, options, model, pruned_metrics["test"], metrics["test"])
    run_dir = runs.create_run_dir(out, overwrite)
    info = _pruned_run_info(run, f"{options.name}; {how}", result, command, started)
    outputs.write_run_records(
        run_dir, run.config, info, run.data, runs.read_json(run.path / runs.SPLIT_FILE)
    )
    outputs.write_finished_run(
        run_dir,
        outputs.FinishedRun(
            plain_copy(model),
            dataset,
            result.history,
            metrics,
            probs,
            info,
            {PRUNE_FILE: record},
            calibration=calibration,
        ),
    )
    return PruneResult(run_dir, record)


def _prune_record(
    run: runs.Run,
    options: PruneOptions,
    model: keras.Model,
    after_pruning: dict[str, Any],
    after: dict[str, Any],
) -> dict[str, Any]:
    """``prune.json``: the rule, sparsity per layer, test metrics before/after, file sizes."""
    before = run.metrics["test"]
    dense_sizes, pruned_sizes = model_file_sizes(run.model), model_file_sizes(model)
    return {
        "source_run": str(run.path),
        "rule": {
            "sparsity": options.sparsity,
            "min_magnitude": options.min_magnitude,
            "scope": "per layer" if options.sparsity is not None else "absolute |w|",
            "weights": "Conv2D and Dense kernels (biases kept)",
        },
        "fine_tune_epochs": options.fine_tune_epochs,
        "sparsity": layer_sparsity(model),
        "dense_sparsity": layer_sparsity(run.model),
        "test_before": _summary(before),
        "test_after_pruning": _summary(after_pruning),
        "test_after": _summary(after),
        "test_change": _change(before, after),
        "model_file": {
            "dense": dense_sizes,
            "pruned": pruned_sizes,
            "gzip_ratio": pruned_sizes["gzip_bytes"] / dense_sizes["gzip_bytes"],
        },
        "data": f"{run.info['source']} (test split)",
        "seed": run.config.train.seed,
    }


def _pruned_run_info(
    run: runs.Run, how: str, result: FitResult, command: list[str] | None, started: float
) -> dict[str, Any]:
    """``run.json`` of the pruned run: a finished run, so `train --resume` leaves it alone."""
    return {
        "status": "completed",
        "message": f"pruned from {run.path} ({how})",
        "source": run.info["source"],
        "seed": run.config.train.seed,
        "class_weight": run.info.get("class_weight"),
        "command": command,
        "pruned_from": str(run.path),
        "started": run.info.get("started"),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "wall_time_s": round(time.perf_counter() - started, 3),
        "versions": runs.library_versions(),
    }
