"""The resumable per-epoch backup of a training run: one ``backup.npz`` in the run folder.

After every finished epoch the trainer saves everything the next epoch depends on: the weights,
the optimizer's variables, the dropout layers' random-generator states, the history so far and
the early-stopping state (with its best weights). One file, written to a temporary name and
renamed, so a kill leaves the previous epoch's backup or the new one, never a mix of the two.
Plain arrays in an ``.npz`` (read back with ``allow_pickle=False``): nothing in it can run code.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from l1cnn.errors import RunError, first_line
from l1cnn.loop import EarlyStopping
from l1cnn.runs import BACKUP_FILE, atomic_write_bytes

FORMAT_VERSION = 1


@dataclass
class TrainingState:
    """Where training stood after epoch ``epoch`` (1-based), as saved in ``backup.npz``."""

    epoch: int
    history: list[dict[str, float]]
    weights: list[np.ndarray]
    optimizer: list[np.ndarray]
    rng: list[np.ndarray]  # states of the model's random seed generators (dropout)
    early_stopping: dict[str, Any] | None = None  # best, best_epoch, wait
    best_weights: list[np.ndarray] | None = field(default=None, repr=False)
    # JSON-able states of stateful epoch callbacks by their state_key (l1cnn.callbacks): the
    # collapse guard's counter, the plateau schedule's best and wait. Absent in older backups.
    callbacks: dict[str, Any] = field(default_factory=dict)


def rng_variables(model: keras.Model) -> list[keras.Variable]:
    """The model's variables that are not weights: the seed-generator states dropout draws from.

    ``model.get_weights()`` leaves them out, yet they decide the next dropout masks.
    """
    weights = {id(v) for v in model.weights}
    return [v for v in model.variables if id(v) not in weights]


def capture(
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    history: list[dict[str, float]],
    early_stopping: EarlyStopping | None,
    callbacks: dict[str, Any] | None = None,
) -> TrainingState:
    """Snapshot the training state after the last epoch in ``history``.

    Args:
        model: the model being trained.
        optimizer: its optimizer (built by the first step).
        history: one dict of logs per finished epoch.
        early_stopping: the early-stopping tracker, or None when it is off.
        callbacks: JSON-able callback states by key (see :class:`TrainingState`).

    Returns:
        A TrainingState holding copies of every array.
    """
    stopper = None
    best = None
    if early_stopping is not None:
        stopper = {
            "best": early_stopping.best if math.isfinite(early_stopping.best) else None,
            "best_epoch": early_stopping.best_epoch,
            "wait": early_stopping.wait,
        }
        if early_stopping.best_weights is not None:
            best = [np.array(w) for w in early_stopping.best_weights]
    return TrainingState(
        epoch=len(history),
        history=[dict(h) for h in history],
        weights=[np.array(w) for w in model.get_weights()],
        optimizer=[np.array(v) for v in optimizer.variables],
        rng=[np.array(v) for v in rng_variables(model)],
        early_stopping=stopper,
        best_weights=best,
        callbacks=dict(callbacks or {}),
    )


def save(run_dir: str | Path, state: TrainingState) -> Path:
    """Write ``state`` to ``run_dir/backup.npz`` atomically; returns the path.

    Raises:
        OSError: the folder cannot be written (the previous backup is then left intact).
    """
    meta = {
        "format": FORMAT_VERSION,
        "epoch": state.epoch,
        "history": state.history,
        "early_stopping": state.early_stopping,
        "callbacks": state.callbacks,
        "counts": {
            "w": len(state.weights),
            "o": len(state.optimizer),
            "r": len(state.rng),
            "b": len(state.best_weights) if state.best_weights is not None else -1,
        },
    }
    arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps(meta))}
    for prefix, values in (
        ("w", state.weights),
        ("o", state.optimizer),
        ("r", state.rng),
        ("b", state.best_weights or []),
    ):
        arrays.update({f"{prefix}{i}": v for i, v in enumerate(values)})
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path = Path(run_dir) / BACKUP_FILE
    atomic_write_bytes(path, buf.getvalue())
    return path


def load(run_dir: str | Path) -> TrainingState | None:
    """Read ``run_dir/backup.npz``; None when there is none (killed before epoch 1 ended).

    Raises:
        RunError: the backup exists but cannot be read.
    """
    path = Path(run_dir) / BACKUP_FILE
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
        meta = json.loads(str(arrays["meta"]))
        counts = meta["counts"]

        def listed(prefix: str) -> list[np.ndarray]:
            return [arrays[f"{prefix}{i}"] for i in range(counts[prefix])]

        if meta["format"] != FORMAT_VERSION:
            raise ValueError(f"format {meta['format']}, expected {FORMAT_VERSION}")
        return TrainingState(
            epoch=int(meta["epoch"]),
            history=list(meta["history"]),
            weights=listed("w"),
            optimizer=listed("o"),
            rng=listed("r"),
            early_stopping=meta["early_stopping"],
            best_weights=listed("b") if counts["b"] >= 0 else None,
            callbacks=dict(meta.get("callbacks") or {}),
        )
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        raise RunError(f"backup '{path}' cannot be read ({exc}); the run cannot resume") from None


def restore(
    state: TrainingState,
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    early_stopping: EarlyStopping | None,
) -> None:
    """Put ``state`` back into a freshly built ``model``, ``optimizer`` and ``early_stopping``.

    Raises:
        RunError: the backup does not fit the model (a different config).
    """
    targets = rng_variables(model)
    try:
        if len(state.rng) != len(targets):
            raise ValueError(f"{len(state.rng)} random states for {len(targets)} generators")
        model.set_weights(state.weights)
        optimizer.build(model.trainable_variables)
        if len(state.optimizer) != len(optimizer.variables):
            raise ValueError(
                f"{len(state.optimizer)} optimizer variables for {len(optimizer.variables)}"
            )
        for variable, value in zip(optimizer.variables, state.optimizer, strict=True):
            variable.assign(value)
        for variable, value in zip(targets, state.rng, strict=True):
            variable.assign(value)
    except ValueError as exc:
        raise RunError(f"the backup does not fit the run's model: {first_line(exc)}") from None
    if early_stopping is not None and state.early_stopping is not None:
        best = state.early_stopping["best"]
        early_stopping.best = math.inf if best is None else float(best)
        early_stopping.best_epoch = int(state.early_stopping["best_epoch"])
        early_stopping.wait = int(state.early_stopping["wait"])
        early_stopping.best_weights = state.best_weights
