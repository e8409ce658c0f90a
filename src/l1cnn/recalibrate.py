"""``l1cnn calibrate RUN``: temperature-scale a finished run from its stored validation predictions.

Like ``rethreshold``, no retraining: ``predictions.csv`` holds the validation probabilities T is
fitted on. The run's ``model.keras`` is not touched; ``calibration.json`` holds T, and
``load_run`` gives ``Run.calibrated_model``, which predict, evaluate, serve and export use.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np

from l1cnn import runs
from l1cnn.errors import RunError


def uncalibrated_predictions(run_dir: str | Path) -> dict[str, tuple[list[str], np.ndarray, Any]]:
    """``{"val"/"test": (ids, labels, model's own probabilities)}`` from ``predictions.csv``.

    A run calibrated before keeps the model's own probabilities in ``uncalibrated_probability``,
    so calibrating again refits from them rather than stacking temperatures.

    Raises:
        RunError: no readable ``predictions.csv``, or no validation predictions in it.
    """
    path = Path(run_dir) / runs.PREDICTIONS_FILE
    try:
        rows = runs.read_csv(path)
        out = {}
        for split in ("val", "test"):
            chosen = [r for r in rows if r["split"] == split]
            column = (
                runs.UNCALIBRATED_FIELD if chosen and runs.UNCALIBRATED_FIELD in chosen[0] else None
            )
            out[split] = (
                [r["id"] for r in chosen],
                np.array([int(r["label"]) for r in chosen], dtype=np.int64),
                np.array([float(r[column or "probability"]) for r in chosen]),
            )
    except FileNotFoundError:
        raise RunError(
            f"run '{run_dir}' has no {runs.PREDICTIONS_FILE}: no validation predictions to "
            "fit a temperature on"
        ) from None
    except (OSError, KeyError, ValueError) as exc:
        raise RunError(f"'{path}' cannot be read: {exc}") from None
    if len(out["val"][0]) == 0:
        raise RunError(
            f"run '{run_dir}' has no validation predictions in {runs.PREDICTIONS_FILE} to fit "
            "a temperature on"
        )
    return out


def calibrate_run(run_dir: str | Path, command: list[str] | None = None) -> dict[str, Any]:
    """Fit a temperature on the run's validation predictions and make it the run's own.

    Writes ``calibration.json``, then ``predictions.csv`` (calibrated, with the model's own
    probabilities kept), ``metrics.json`` (threshold rule re-applied on the calibrated
    validation probabilities; train metrics from the model on the re-checked data), then
    ``explain.npz`` and the report.

    Args:
        run_dir: a finished run folder.
        command: the command line, recorded in ``calibration.json``.

    Returns:
        The ``calibration.json`` record (temperature, and ECE/Brier/log loss before and after).

    Raises:
        RunError, ModelError, DataError: not a run, no validation predictions, unusable
        model or changed data (nothing is written then).
    """
    from l1cnn.calibration import apply_temperature, fit_temperature, temperature_record
    from l1cnn.evaluate import compute_metrics, threshold_choice
    from l1cnn.outputs import PREDICTION_FIELDS, explain_and_report, writing_to
    from l1cnn.predict import predict_split, reload_run_data

    runs.check_is_run(run_dir)
    stored = uncalibrated_predictions(run_dir)
    run = runs.load_run(run_dir)
    dataset = reload_run_data(run)
    raw = {s: (stored[s][1], stored[s][2]) for s in ("val", "test")}
    temperature = fit_temperature(*raw["val"])
    calibrated = {s: apply_temperature(raw[s][1], temperature) for s in raw}
    record = temperature_record(temperature, raw, calibrated)
    record["fitted_by"] = " ".join(command) if command else "l1cnn.recalibrate.calibrate_run"
    record["fitted_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")

    rule = str(run.metrics["threshold"]["rule"])
    choice = threshold_choice(rule, raw["val"][0], calibrated["val"])
    value = float(choice["value"])
    metrics = dict(run.metrics)
    train_split = dataset.splits["train"]
    train_probs = apply_temperature(predict_split(run.model, train_split), temperature)
    metrics["train"] = compute_metrics(train_split.labels, train_probs, value)
    for split in ("val", "test"):
        metrics[split] = compute_metrics(raw[split][0], calibrated[split], value)
    metrics["threshold"] = choice
    metrics["calibration"] = record
    rows = [
        {
            "split": split,
            "id": stored[split][0][i],
            "label": int(stored[split][1][i]),
            "probability": f"{calibrated[split][i]:.8f}",
            runs.UNCALIBRATED_FIELD: f"{stored[split][2][i]:.8f}",
        }
        for split in ("val", "test")
        for i in range(len(stored[split][0]))
    ]
    with writing_to(run.path):
        runs.write_json(run.path / runs.CALIBRATION_FILE, record)
        runs.write_csv(
            run.path / runs.PREDICTIONS_FILE, rows, [*PREDICTION_FIELDS, runs.UNCALIBRATED_FIELD]
        )
        runs.write_json(run.path / runs.METRICS_FILE, metrics)
    explain_and_report(run.path, run.model, dataset.splits["test"], calibrated["test"], value)
    return record
