"""A finished run folder's plain records, read back for its report (no model, no TensorFlow)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from l1cnn import runs
from l1cnn.errors import RunError
from l1cnn.runs import EXPLAIN_FILE


@dataclass
class RunFiles:
    """The plain records of a run folder (no model)."""

    path: Path
    config_text: str
    info: dict[str, Any]
    data: dict[str, Any]
    metrics: dict[str, Any]
    history: list[dict[str, float]]
    predictions: dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (labels, probabilities)
    explanation: dict[str, Any] | None
    # A temperature-scaled run: split -> the model's own probabilities (issue 15), else None.
    uncalibrated: dict[str, np.ndarray] | None = None

    @property
    def name(self) -> str:
        """The run folder's name, used as the run's label."""
        return self.path.name

    @property
    def threshold(self) -> float:
        """The run's decision threshold (as in ``metrics.json``)."""
        return float(self.metrics["threshold"]["value"])


def _float(value: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _read_explanation(path: Path) -> dict[str, Any] | None:
    if not (path / EXPLAIN_FILE).exists():
        return None
    try:
        with np.load(path / EXPLAIN_FILE, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise RunError(f"'{path / EXPLAIN_FILE}' cannot be read: {exc}") from None


def read_run_files(path: str | Path) -> RunFiles:
    """Read everything the report needs from a run folder.

    Args:
        path: the run folder.

    Returns:
        A RunFiles; ``explanation`` is None when ``explain.npz`` is absent.

    Raises:
        RunError: not a finished run, or a record that cannot be read.
    """
    path = runs.check_is_run(path)
    try:
        config_text = (path / runs.CONFIG_FILE).read_text(encoding="utf-8")
        info = runs.read_json(path / runs.RUN_FILE)
        data = runs.read_json(path / runs.DATA_FILE)
        metrics = runs.read_json(path / runs.METRICS_FILE)
        history = [
            {k: _float(v) for k, v in row.items()}
            for row in runs.read_csv(path / runs.HISTORY_FILE)
        ]
        rows = runs.read_csv(path / runs.PREDICTIONS_FILE)
    except FileNotFoundError as exc:
        raise RunError(f"run '{path}' is missing {Path(exc.filename).name}") from None
    except (OSError, ValueError) as exc:
        raise RunError(f"run '{path}' has an unreadable record: {exc}") from None
    predictions = {}
    for split in ("val", "test"):
        chosen = [r for r in rows if r["split"] == split]
        predictions[split] = (
            np.array([int(r["label"]) for r in chosen], dtype=np.int64),
            np.array([float(r["probability"]) for r in chosen]),
        )
    uncalibrated = None
    if rows and runs.UNCALIBRATED_FIELD in rows[0]:  # a temperature-scaled run (issue 15)
        uncalibrated = {
            split: np.array(
                [float(r[runs.UNCALIBRATED_FIELD]) for r in rows if r["split"] == split]
            )
            for split in ("val", "test")
        }
    explanation = _read_explanation(path)
    return RunFiles(
        path, config_text, info, data, metrics, history, predictions, explanation, uncalibrated
    )


def column(history: list[dict[str, float]], key: str) -> np.ndarray:
    """One column of ``history.csv`` as floats (NaN where a row lacks it)."""
    return np.array([row.get(key, math.nan) for row in history], dtype=np.float64)


def operating_point(m: dict[str, Any]) -> tuple[float, float, float, float]:
    """``(fpr, tpr, precision, recall)`` of one split's metrics at the run's threshold."""
    cm = m["confusion_matrix"]
    fpr = cm["fp"] / (cm["fp"] + cm["tn"]) if cm["fp"] + cm["tn"] else math.nan
    tpr = cm["tp"] / (cm["tp"] + cm["fn"]) if cm["tp"] + cm["fn"] else math.nan
    return fpr, tpr, m["precision"], m["recall"]


def both_classes(labels: np.ndarray) -> bool:
    """Whether ``labels`` hold both classes (curves need them)."""
    return len(np.unique(labels)) == 2
