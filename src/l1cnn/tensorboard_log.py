"""TensorBoard event files for our own loop: per-epoch scalars and histograms, report figures.

Keras' TensorBoard callback needs ``model.fit``; our loop (``l1cnn.loop``) is not ``fit``, so
:class:`TensorBoardLog` is an :class:`~l1cnn.loop.EpochCallback` writing with ``tf.summary``
(whose ops come from the ``tensorboard`` package). A resumed run appends to the same folder
and skips every epoch already logged, so no step is ever written twice.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from l1cnn.errors import RunError
from l1cnn.loop import EpochCallback

TENSORBOARD_DIR = "tensorboard"  # inside a run folder
# Figures of the report (``plots/<name>.png``) logged as images when the run has finished.
KEY_FIGURES = ("learning_curves", "roc", "confusion", "weights")

# history key -> TensorBoard tag: losses with their data and L1 parts, grouped as TensorBoard
# shows a tag's prefix as one card section.
SCALARS = {
    "loss": "loss/train",
    "data_loss": "loss/train_data",
    "l1_penalty": "loss/train_l1",
    "val_loss": "loss/val",
    "val_data_loss": "loss/val_data",
    "accuracy": "accuracy/train",
    "val_accuracy": "accuracy/val",
}


def open_log_dir(path: Path) -> Path:
    """Create ``path`` and prove it writable (before training starts).

    Raises:
        RunError: the folder cannot be created or written.
    """
    probe = path / ".write-test"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise RunError(
            f"cannot write the TensorBoard folder '{path}': {reason}; make it a writable "
            "folder, or train with tensorboard=false"
        ) from None
    return path


def logged_values(log_dir: Path) -> dict[str, set[int]]:
    """Every tag in the event files of ``log_dir`` with the steps it has values at.

    A file cut short by a kill ends with a partial record; everything before it counts.
    """
    import tensorflow as tf

    seen: dict[str, set[int]] = {}
    for path in sorted(log_dir.glob("events.out.tfevents.*")):
        try:
            for record in tf.data.TFRecordDataset(str(path)):
                event = tf.compat.v1.Event.FromString(record.numpy())
                for value in event.summary.value:
                    seen.setdefault(value.tag, set()).add(int(event.step))
        except tf.errors.DataLossError:
            continue
    return seen


def last_logged_epoch(log_dir: Path) -> int:
    """The highest step of any per-epoch value already in ``log_dir`` (0: none)."""
    steps = [max(s) for tag, s in logged_values(log_dir).items() if not tag.startswith("report/")]
    return max(steps, default=0)


def _roc_auc(labels: np.ndarray, prob: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(labels)) < 2:
        return None
    return float(roc_auc_score(labels, prob))


HISTOGRAM_BINS = 30  # tf.summary.histogram's default bucket count


def histogram_buckets(values: np.ndarray, bins: int = HISTOGRAM_BINS) -> np.ndarray | None:
    """The histogram plugin's tensor, (k, 3) rows of [left edge, right edge, count], by numpy.

    What ``tf.summary.histogram`` writes, computed in numpy: five to six times faster per epoch
    than its TF ops in eager mode (benchmarks/RESULTS.md, "Whole command"). None when there is no
    finite value to count.
    """
    finite = np.asarray(values, np.float64).ravel()
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return None
    low, high = float(finite.min()), float(finite.max())
    if low == high:
        return np.array([[low, high, float(finite.size)]])
    counts, edges = np.histogram(finite, bins=bins, range=(low, high))
    return np.stack([edges[:-1], edges[1:], counts.astype(np.float64)], axis=1)


def _histogram_metadata() -> Any:
    from tensorboard.plugins.histogram import metadata

    return metadata.create_summary_metadata(display_name=None, description=None)


class TensorBoardLog(EpochCallback):
    """Per epoch: losses (data and L1 parts), accuracy, validation ROC-AUC, learning rate,
    each layer's share of kernel weights below 1e-3 and exactly 0, and weight histograms.

    Epochs up to the last step already in ``log_dir`` are skipped (resume appends).
    """

    def __init__(self, log_dir: Path, model: Any, val_labels: np.ndarray) -> None:
        import tensorflow as tf

        self.log_dir, self.model, self.val_labels = log_dir, model, np.asarray(val_labels)
        self.skip_to = last_logged_epoch(log_dir)
        self.writer = tf.summary.create_file_writer(str(log_dir))
        self.val_roc_auc: float | None = None

    def on_validation(self, epoch: int, val_prob: np.ndarray) -> None:
        self.val_roc_auc = _roc_auc(self.val_labels, val_prob) if epoch > self.skip_to else None

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if epoch <= self.skip_to:
            return
        import keras
        import tensorflow as tf

        from l1cnn.model import kernel_sparsity

        with self.writer.as_default(step=epoch):
            for key, tag in SCALARS.items():
                if key in logs and math.isfinite(logs[key]):
                    tf.summary.scalar(tag, logs[key])
            if self.val_roc_auc is not None:
                tf.summary.scalar("roc_auc/val", self.val_roc_auc)
            lr = keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
            tf.summary.scalar("learning_rate", float(lr))
            for count in kernel_sparsity(self.model):
                prefix = f"sparsity/{count.layer}"
                tf.summary.scalar(f"{prefix}/below_1e-3", count.near_zero / count.weights)
                tf.summary.scalar(f"{prefix}/exact_zero", count.zeros / count.weights)
            for layer in self.model.layers:
                for weight in layer.weights:
                    name = weight.path if hasattr(weight, "path") else weight.name
                    buckets = histogram_buckets(keras.ops.convert_to_numpy(weight))
                    if buckets is not None:
                        tf.summary.write(
                            f"weights/{name}", buckets, step=epoch, metadata=_histogram_metadata()
                        )
        self.writer.flush()  # on disk before the backup of this epoch is saved

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()


def log_figures(log_dir: Path, run_dir: Path, step: int) -> list[str]:
    """Write the report's key figures (``plots/*.png``) as images at ``step``; return the tags."""
    import tensorflow as tf

    from l1cnn.reporting import PLOTS_DIR

    tags = []
    seen = logged_values(log_dir)
    writer = tf.summary.create_file_writer(str(log_dir))
    with writer.as_default(step=step):
        for name in KEY_FIGURES:
            path = run_dir / PLOTS_DIR / f"{name}.png"
            if not path.is_file() or step in seen.get(f"report/{name}", ()):
                continue
            image = tf.io.decode_png(path.read_bytes(), channels=3)
            tf.summary.image(f"report/{name}", image[tf.newaxis], step=step)
            tags.append(f"report/{name}")
    writer.close()
    return tags


# results.csv columns shown in TensorBoard's HParams dashboard: what a trial changed, and what
# it scored.
HPARAM_COLUMNS = ("configuration", "l1_lambda", "l1_mode", "dropout_rate", "early_stopping", "seed")
METRIC_COLUMNS = (
    "test_roc_auc",
    "test_accuracy",
    "test_f1",
    "val_loss",
    "gap_accuracy",
    "near_zero_all",
    "exact_zero_all",
    "epochs_run",
)


def write_hparams(log_dir: Path, rows: list[dict[str, Any]]) -> Path:
    """Write the HParams plugin's records of a study's (or search's) finished trials.

    One experiment record in ``log_dir`` and one session per row in
    ``log_dir/<configuration>/seed-<seed>`` with its metrics as scalars at step 1. The folder
    is derived from the rows, so it is rewritten whole (temp-then-rename) each time.

    Args:
        log_dir: the folder (e.g. ``<study>/tensorboard``); replaced.
        rows: ``results.csv`` rows (:func:`l1cnn.study.trial_row`).

    Returns:
        ``log_dir``.
    """
    import shutil
    import tempfile

    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    hparams = {name: hp.HParam(name) for name in HPARAM_COLUMNS}
    metrics = [hp.Metric(name) for name in METRIC_COLUMNS]
    log_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{log_dir.name}.", dir=log_dir.parent))
    try:
        with tf.summary.create_file_writer(str(tmp)).as_default():
            hp.hparams_config(hparams=list(hparams.values()), metrics=metrics)
        for row in rows:
            session = f"{row['configuration']}/seed-{row['seed']}"
            writer = tf.summary.create_file_writer(str(tmp / session))
            with writer.as_default(step=1):
                values = {hparams[k]: row[k] for k in HPARAM_COLUMNS if row.get(k) is not None}
                hp.hparams(values, trial_id=session)
                for name in METRIC_COLUMNS:
                    value = row.get(name)
                    if isinstance(value, int | float) and math.isfinite(value):
                        tf.summary.scalar(name, float(value))
            writer.close()
        if log_dir.exists():
            shutil.rmtree(log_dir)
        tmp.rename(log_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return log_dir
