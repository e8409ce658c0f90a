"""Finishing a run: score every split, diagnose, and write the finished run folder.

``train`` and ``prune`` end a run the same way and ``rethreshold`` rewrites part of one; this
module is that one way, and the one place that writes a run folder's records and results
(so "only the chief writes", for several machines, has one place to live). It sits below
``train``/``prune`` and above ``explain`` and the report.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from l1cnn import runs
from l1cnn.config import Config, dumps_config
from l1cnn.data import Dataset, Split
from l1cnn.errors import RunError
from l1cnn.evaluate import compute_metrics, diagnose, threshold_choice

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
PREDICTION_FIELDS = ["split", "id", "label", "probability"]
UNCALIBRATED_FIELD = runs.UNCALIBRATED_FIELD  # the model's own probability, when calibrated


@contextlib.contextmanager
def writing_to(run_dir: Path) -> Iterator[None]:
    """Turn a failed write into one RunError naming the folder (disk full, read-only, ...)."""
    try:
        yield
    except OSError as exc:
        raise RunError(f"cannot write to run folder '{run_dir}': {exc.strerror}") from None


def score_dataset(
    model: Any, dataset: Dataset, threshold_rule: str
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Metrics of every split at a threshold chosen on validation; also the probabilities."""
    from l1cnn.predict import predict_split

    probs = {name: predict_split(model, split) for name, split in dataset.splits.items()}
    # The rule, value and a note when the rule could not be met as asked.
    choice = threshold_choice(threshold_rule, dataset.splits["val"].labels, probs["val"])
    metrics: dict[str, Any] = {"threshold": choice}
    for name, split in dataset.splits.items():
        metrics[name] = compute_metrics(split.labels, probs[name], choice["value"])
    return metrics, probs


def calibrate_scores(
    metrics: dict[str, Any],
    probs: dict[str, np.ndarray],
    dataset: Dataset,
    threshold_rule: str,
    method: str,
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any] | None]:
    """Temperature-scale ``score_dataset``'s probabilities when ``method`` is "temperature".

    T is fitted on the validation probabilities; the threshold rule is applied again on the
    calibrated validation probabilities and every split's metrics recomputed.

    Returns:
        ``(metrics, probs, record)``: for "none", the inputs unchanged and ``None``; else the
        calibrated metrics (with ``metrics["calibration"]``), probabilities, and the
        ``calibration.json`` record for :class:`FinishedRun`, whose ``"uncalibrated"`` key holds
        the model's own probabilities (written into ``predictions.csv``, not the record).
    """
    from l1cnn.calibration import apply_temperature, fit_temperature, temperature_record

    if method == "none":
        return metrics, probs, None
    labels = {name: split.labels for name, split in dataset.splits.items()}
    temperature = fit_temperature(labels["val"], probs["val"])
    calibrated = {name: apply_temperature(p, temperature) for name, p in probs.items()}
    record = temperature_record(
        temperature,
        {s: (labels[s], probs[s]) for s in ("val", "test")},
        {s: calibrated[s] for s in ("val", "test")},
    )
    choice = threshold_choice(threshold_rule, labels["val"], calibrated["val"])
    new: dict[str, Any] = {"threshold": choice}
    for name in dataset.splits:
        new[name] = compute_metrics(labels[name], calibrated[name], choice["value"])
    new["calibration"] = dict(record)
    return new, calibrated, {**record, "uncalibrated": probs}


def add_diagnosis(
    metrics: dict[str, Any],
    probs: dict[str, np.ndarray],
    history: list[dict[str, float]],
    best_epoch: int,
    l1_lambda: float,
) -> None:
    """Add ``metrics["diagnosis"]``: did the model collapse, and how much of the loss was L1?"""
    last = history[-1] if history else None
    best = next((h for h in history if h["epoch"] == best_epoch), last)
    l1_share = best["l1_penalty"] / best["loss"] if best and best.get("loss") else None
    metrics["diagnosis"] = diagnose(probs["val"], metrics["val"]["roc_auc"], l1_share, l1_lambda)


def prediction_rows(
    dataset: Dataset,
    probs: dict[str, np.ndarray],
    uncalibrated: dict[str, np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """Rows of ``predictions.csv``: validation and test probabilities with labels.

    With ``uncalibrated`` (a calibrated run), each row also keeps the model's own probability.
    """
    rows = []
    for name in ("val", "test"):
        split = dataset.splits[name]
        for i in range(len(split)):
            row = {
                "split": name,
                "id": split.ids[i],
                "label": int(split.labels[i]),
                "probability": f"{probs[name][i]:.8f}",
            }
            if uncalibrated is not None:
                row[UNCALIBRATED_FIELD] = f"{uncalibrated[name][i]:.8f}"
            rows.append(row)
    return rows


def write_run_records(
    run_dir: Path,
    config: Config,
    info: dict[str, Any],
    data_summary: dict[str, Any],
    split_ids: dict[str, Any],
) -> None:
    """Write what made the run: ``config.toml``, ``run.json``, ``data.json``, ``split.json``."""
    with writing_to(run_dir):
        runs.atomic_write_text(run_dir / runs.CONFIG_FILE, dumps_config(config))
        runs.write_json(run_dir / runs.RUN_FILE, info)
        runs.write_json(run_dir / runs.DATA_FILE, data_summary)
        runs.write_json(run_dir / runs.SPLIT_FILE, split_ids)


def write_run_info(run_dir: Path, info: dict[str, Any]) -> None:
    """Rewrite ``run.json`` alone (a status change)."""
    with writing_to(run_dir):
        runs.write_json(run_dir / runs.RUN_FILE, info)


@dataclass
class FinishedRun:
    """Everything a finished run folder holds besides its records."""

    model: Any
    dataset: Dataset
    history: list[dict[str, float]]
    metrics: dict[str, Any]
    probs: dict[str, np.ndarray]
    info: dict[str, Any]
    extra_records: dict[str, Any] = field(default_factory=dict)  # file name -> JSON content
    # calibrate_scores' record (calibration.json, plus the model's own probabilities), or None.
    calibration: dict[str, Any] | None = None


def write_finished_run(run_dir: Path, finished: FinishedRun) -> dict[str, float]:
    """Write the model, history, predictions, metrics and ``run.json``, then explain and report.

    ``run.json`` is written last among the records (with the model's sha256), so a run folder
    whose ``run.json`` says finished holds a complete set; the backup is removed once the run
    has a final status. ``finished.info`` gains ``model_sha256``.

    Returns:
        Seconds spent writing the files, on the explanation and on the report.
    """
    info = finished.info
    extra = dict(finished.extra_records)
    uncalibrated = None
    if finished.calibration is not None:
        extra[runs.CALIBRATION_FILE] = dict(finished.calibration)
        uncalibrated = extra[runs.CALIBRATION_FILE].pop("uncalibrated")
    started = time.perf_counter()
    with writing_to(run_dir):
        info["model_sha256"] = runs.save_model_atomic(finished.model, run_dir / runs.MODEL_FILE)
        runs.write_csv(run_dir / runs.HISTORY_FILE, finished.history, HISTORY_FIELDS)
        runs.write_csv(
            run_dir / runs.PREDICTIONS_FILE,
            prediction_rows(finished.dataset, finished.probs, uncalibrated),
            PREDICTION_FIELDS + ([UNCALIBRATED_FIELD] if uncalibrated is not None else []),
        )
        runs.write_json(run_dir / runs.METRICS_FILE, finished.metrics)
        for name, record in extra.items():
            runs.write_json(run_dir / name, record)
        runs.write_json(run_dir / runs.RUN_FILE, info)
        if info.get("status") in runs.FINAL_STATUSES:  # finished: the backup has done its job
            (run_dir / runs.BACKUP_FILE).unlink(missing_ok=True)
    timings = {"writing": time.perf_counter() - started}
    timings.update(
        explain_and_report(
            run_dir,
            finished.model,
            finished.dataset.splits["test"],
            finished.probs["test"],
            finished.metrics["threshold"]["value"],
        )
    )
    return timings


def explain_and_report(
    run_dir: Path, model: Any, test: Split, test_probs: np.ndarray, threshold: float
) -> dict[str, float]:
    """Model-dependent arrays (``explain.npz``), then plots and ``report.html`` / ``report.md``.

    Returns:
        Seconds spent on each: ``{"explanation": s, "report": s}``.
    """
    from l1cnn.explain import write_explanation
    from l1cnn.reporting import write_report

    started = time.perf_counter()
    write_explanation(run_dir, model, test, test_probs, threshold)
    explained = time.perf_counter()
    write_report(run_dir)
    return {"explanation": explained - started, "report": time.perf_counter() - explained}
