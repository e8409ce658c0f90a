"""Re-choose a finished run's decision threshold from its stored validation predictions.

``l1cnn evaluate RUN --threshold RULE`` uses :func:`rechoose_threshold` (no retraining, no
TensorFlow: ``predictions.csv`` holds the validation probabilities); with ``--save``,
:func:`save_threshold` makes the new threshold the run's own, so ``predict`` uses it.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np

from l1cnn import runs
from l1cnn.errors import RunError
from l1cnn.evaluate import compute_metrics, threshold_choice


def stored_predictions(run_dir: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"val": (labels, probabilities), "test": (...)}`` from a run's ``predictions.csv``."""
    path = Path(run_dir) / runs.PREDICTIONS_FILE
    try:
        rows = runs.read_csv(path)
        out = {}
        for split in ("val", "test"):
            chosen = [r for r in rows if r["split"] == split]
            out[split] = (
                np.array([int(r["label"]) for r in chosen], dtype=np.int64),
                np.array([float(r["probability"]) for r in chosen]),
            )
    except FileNotFoundError:
        raise RunError(f"run '{run_dir}' has no {runs.PREDICTIONS_FILE}") from None
    except (OSError, KeyError, ValueError) as exc:
        raise RunError(f"'{path}' cannot be read: {exc}") from None
    return out


def rechoose_threshold(run_dir: str | Path, rule: str) -> dict[str, Any]:
    """Choose a threshold by ``rule`` on the run's stored validation predictions.

    Args:
        run_dir: a finished run folder.
        rule: a threshold rule (see :func:`l1cnn.evaluate.threshold_choice`).

    Returns:
        ``{"rule", "value", "note"}``.

    Raises:
        ConfigError: a malformed rule. RunError: not a run, or no readable predictions.
    """
    runs.check_is_run(run_dir)
    labels, probs = stored_predictions(run_dir)["val"]
    return threshold_choice(rule, labels, probs)


def save_threshold(run_dir: str | Path, rule: str, command: list[str] | None = None) -> dict:
    """Make the threshold chosen by ``rule`` the run's own and refresh what depends on it.

    Rewrites ``metrics.json`` (threshold, and train/val/test metrics at the new value; val and
    test from ``predictions.csv``, train from the model on the re-checked data), then
    ``explain.npz`` and the report. ``config.toml`` keeps the rule the run was trained with.

    Args:
        run_dir: a finished run folder.
        rule: a threshold rule.
        command: the command line, recorded as ``threshold.changed_by``.

    Returns:
        The new ``metrics.json`` content.

    Raises:
        ConfigError, RunError, ModelError, DataError: bad rule, run, model or changed data
        (nothing is written then).
    """
    from l1cnn.outputs import explain_and_report, writing_to
    from l1cnn.predict import predict_split, reload_run_data

    choice = rechoose_threshold(run_dir, rule)
    run = runs.load_run(run_dir)
    dataset = reload_run_data(run)
    stored = stored_predictions(run.path)
    value = float(choice["value"])
    metrics = dict(run.metrics)
    train_split = dataset.splits["train"]
    metrics["train"] = compute_metrics(
        train_split.labels, predict_split(run.calibrated_model, train_split), value
    )
    for split in ("val", "test"):
        metrics[split] = compute_metrics(*stored[split], value)
    choice["changed_by"] = " ".join(command) if command else "l1cnn.rethreshold.save_threshold"
    choice["changed_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    metrics["threshold"] = choice
    with writing_to(run.path):
        runs.write_json(run.path / runs.METRICS_FILE, metrics)
    explain_and_report(run.path, run.model, dataset.splits["test"], stored["test"][1], value)
    return metrics
