"""Epoch callbacks with a say in training: the collapse guard and the learning-rate schedules.

Each is an :class:`~l1cnn.loop.EpochCallback` whose state a resumed run needs is a small
JSON-able dict (``state_key``, :meth:`get_state`, :meth:`set_state`), saved in the backup after
every epoch, so a resumed run stops, or changes its learning rate, exactly where an
uninterrupted one does.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np

from l1cnn.config import Config
from l1cnn.evaluate import diagnose
from l1cnn.loop import EpochCallback, StopTraining

# Plateau schedule: halve the learning rate after this many epochs without a val_loss
# improvement. Below early stopping's default patience (5), so a plateau gets one or two
# reductions before early stopping ends the run; floor keeps the optimizer moving.
PLATEAU_FACTOR = 0.5
PLATEAU_PATIENCE = 2
MIN_LEARNING_RATE = 1e-6

COLLAPSED = "collapsed"  # the status of a run the guard stopped


class CollapseGuard(EpochCallback):
    """Stop a run whose validation predictions have collapsed for ``patience`` epochs in a row.

    "Collapsed" is the after-training diagnosis' rule (:func:`l1cnn.evaluate.diagnose`): the
    validation probabilities are constant (std below ``CONSTANT_PREDICTION_STD``) or their
    ROC-AUC is at chance. The counter is not recomputable from ``history.csv`` (it needs each
    epoch's validation probabilities), so it travels in the backup.
    """

    state_key = "collapse_guard"

    def __init__(self, val_labels: np.ndarray, patience: int) -> None:
        self.val_labels = np.asarray(val_labels).reshape(-1)
        self.patience = max(patience, 1)  # patience 0 would stop before anything was seen
        self.wait = 0
        self.reasons: list[str] = []

    def _auc(self, val_prob: np.ndarray) -> float | None:
        from sklearn.metrics import roc_auc_score

        if len(np.unique(self.val_labels)) < 2:
            return None
        return float(roc_auc_score(self.val_labels, val_prob))

    def _stop(self, epoch: int) -> StopTraining:
        first = epoch - self.wait + 1
        return StopTraining(
            COLLAPSED,
            f"the model collapsed in {self.wait} epochs in a row ({first}-{epoch}): "
            f"{'; '.join(self.reasons)}; training stopped after epoch {epoch} "
            "(train.stop_on_collapse = false trains on)",
        )

    def on_train_begin(self, done: list[dict[str, float]]) -> None:
        if self.wait >= self.patience:  # resumed after the stop was saved but not finished
            raise self._stop(len(done))

    def on_validation(self, epoch: int, val_prob: np.ndarray) -> None:
        verdict = diagnose(val_prob, self._auc(val_prob), None, 0.0)
        if verdict["collapsed"]:
            self.wait += 1
            self.reasons = verdict["reasons"]
        else:
            self.wait, self.reasons = 0, []

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if self.wait >= self.patience:
            raise self._stop(epoch)

    def get_state(self) -> dict[str, Any]:
        """What a resumed run needs: the counter and the last reasons."""
        return {"wait": self.wait, "reasons": list(self.reasons)}

    def set_state(self, state: dict[str, Any]) -> None:
        """Take the state :meth:`get_state` gave (saved in the backup)."""
        self.wait, self.reasons = int(state["wait"]), list(state["reasons"])


def cosine_learning_rate(base: float, epoch: int, epochs: int) -> float:
    """Cosine decay per epoch: ``base`` in epoch 1, falling towards 0 after epoch ``epochs``."""
    return base * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / epochs))


class LearningRateSchedule(EpochCallback):
    """Change the optimizer's learning rate between epochs: ``plateau`` or ``cosine``.

    The rate itself is an optimizer variable, so the backup already keeps it; ``plateau`` also
    needs its best val_loss and wait, which :meth:`get_state` gives to the backup. Cosine is a
    function of the epoch number alone.
    """

    state_key = "lr_schedule"

    def __init__(
        self,
        optimizer: keras.optimizers.Optimizer,
        kind: str,
        base: float,
        epochs: int,
        min_delta: float = 0.0,
    ) -> None:
        self.optimizer, self.kind, self.base, self.epochs = optimizer, kind, base, epochs
        self.min_delta = min_delta
        self.best = math.inf
        self.wait = 0

    @property
    def learning_rate(self) -> float:
        """The optimizer's current learning rate."""
        return float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))

    def on_epoch_begin(self, epoch: int, epochs: int, n_batches: int | None) -> None:
        if self.kind == "cosine":
            self.optimizer.learning_rate = cosine_learning_rate(self.base, epoch, self.epochs)

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if self.kind != "plateau":
            return
        if logs["val_loss"] < self.best - self.min_delta:
            self.best, self.wait = logs["val_loss"], 0
            return
        self.wait += 1
        if self.wait >= PLATEAU_PATIENCE:
            self.optimizer.learning_rate = max(
                self.learning_rate * PLATEAU_FACTOR, MIN_LEARNING_RATE
            )
            self.wait = 0

    def get_state(self) -> dict[str, Any]:
        """Plateau's best val_loss (None: none yet) and wait."""
        return {"best": self.best if math.isfinite(self.best) else None, "wait": self.wait}

    def set_state(self, state: dict[str, Any]) -> None:
        """Take the state :meth:`get_state` gave (saved in the backup)."""
        self.best = math.inf if state["best"] is None else float(state["best"])
        self.wait = int(state["wait"])


def make_callbacks(config: Config, optimizer: Any, val_labels: np.ndarray) -> list[Any]:
    """The run's stateful callbacks as configured (none for the specified model's schedule)."""
    out: list[Any] = []
    t = config.train
    if t.lr_schedule != "constant":
        out.append(
            LearningRateSchedule(optimizer, t.lr_schedule, t.learning_rate, t.epochs, t.min_delta)
        )
    if t.stop_on_collapse:
        out.append(CollapseGuard(val_labels, t.patience))
    return out
