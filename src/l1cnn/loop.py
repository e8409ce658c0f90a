"""Our own training loop: the step, the epoch loop and early stopping, owned by us.

``model.fit`` cannot run under ``MultiWorkerMirroredStrategy`` with Keras 3, while a step of our
own through ``strategy.run`` can; so the step (``make_train_step``), the loss and the
early-stopping logic are plain code callable from any driver. The step is the only
backend-specific part (``tf.GradientTape``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from l1cnn import losses
from l1cnn.config import Config
from l1cnn.model import regularized_kernels

PROGRESS_METRICS = ("loss", "l1_penalty", "accuracy", "val_loss", "val_accuracy")


@dataclass
class EarlyStopping:
    """Stop when ``monitor`` has not improved for ``patience`` epochs; keep the best weights.

    Plain state, no Keras callback: the loop calls :meth:`update` after each epoch.
    """

    monitor: str = "val_loss"
    patience: int = 5
    restore_best_weights: bool = True
    min_delta: float = 0.0
    best: float = math.inf
    best_epoch: int = 0
    wait: int = 0
    best_weights: list[np.ndarray] | None = field(default=None, repr=False)

    def update(self, epoch: int, logs: dict[str, float], model: keras.Model) -> bool:
        """Record epoch ``epoch`` (1-based); return True when training should stop."""
        value = logs[self.monitor]
        if value < self.best - self.min_delta:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_weights = model.get_weights()
            return False
        self.wait += 1
        return self.wait >= self.patience  # as keras.callbacks.EarlyStopping counts

    def restore(self, model: keras.Model) -> bool:
        """Put the best weights back into ``model``; False when there are none."""
        if self.restore_best_weights and self.best_weights is not None:
            model.set_weights(self.best_weights)
            return True
        return False


def make_early_stopping(config: Config) -> EarlyStopping | None:
    """Early stopping on validation loss as configured, or None for a fixed number of epochs."""
    if not config.train.early_stopping:
        return None
    return EarlyStopping(
        monitor="val_loss",
        patience=config.train.patience,
        restore_best_weights=config.train.restore_best_weights,
    )


@dataclass
class StepSettings:
    """What one training step needs besides the model and optimizer."""

    l1_lambda: float
    l1_mode: str  # "penalty" or "proximal"
    learning_rate: float

    @classmethod
    def from_config(cls, config: Config) -> StepSettings:
        """The step settings of a run's configuration."""
        return cls(config.model.l1_lambda, config.model.l1_mode, config.train.learning_rate)


# Steps run per call of the compiled training function. Each call from Python costs about
# 1-1.5 ms (argument handling, the executor start, ~30 captured variables); 16 steps per call
# make that ~5% of the epoch time vanish (benchmarks/RESULTS.md, "Training levers"), while the
# progress bar still moves and Ctrl-C still lands within ~0.5 s.
STEPS_PER_CALL = 16

# Sums the epoch loop keeps, in this order (float64, as the history is computed):
# loss * batch, data_loss * batch, l1_penalty * batch, correct predictions, images seen.
N_SUMS = 5


def _step_settings(model: keras.Model, settings: StepSettings) -> tuple[list, bool, bool, float]:
    kernels = regularized_kernels(model)
    penalize = settings.l1_mode == "penalty" and settings.l1_lambda > 0
    proximal = settings.l1_mode == "proximal" and settings.l1_lambda > 0
    return kernels, penalize, proximal, settings.learning_rate * settings.l1_lambda


def _make_step_body(
    model: keras.Model, optimizer: keras.optimizers.Optimizer, settings: StepSettings
) -> Callable[[Any, Any, Any], tuple[Any, Any, Any, Any]]:
    """The traced body of one step: (x, y, w) -> (loss, data_loss, l1_penalty, n_correct)."""
    import tensorflow as tf

    kernels, penalize, proximal, threshold = _step_settings(model, settings)

    def body(x: Any, y: Any, w: Any) -> tuple[Any, Any, Any, Any]:
        with tf.GradientTape() as tape:
            prob = model(x, training=True)
            fit_loss = losses.data_loss(y, prob, w)
            penalty = losses.l1_penalty(kernels, settings.l1_lambda)
            objective = fit_loss + penalty if penalize else fit_loss
        grads = tape.gradient(objective, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        if proximal:
            losses.soft_threshold(kernels, threshold)
        correct = tf.reduce_sum(
            tf.cast(tf.equal(tf.cast(tf.reshape(prob, [-1]) > 0.5, tf.float32), y), tf.float32)
        )
        return fit_loss + penalty, fit_loss, penalty, correct

    return body


def make_train_step(
    model: keras.Model, optimizer: keras.optimizers.Optimizer, settings: StepSettings
) -> Callable[[Any, Any, Any], tuple[Any, Any, Any, Any]]:
    """A compiled step: (pixels, labels, weights) -> (loss, data_loss, l1_penalty, n_correct).

    In penalty mode the gradient includes the L1 term; in proximal mode the step takes a plain
    gradient step on the data loss and then soft-thresholds the kernels by lr * l1_lambda.
    One step per call, for drivers of their own (e.g. ``strategy.run``); :func:`fit` runs
    :func:`make_train_steps`, the same step several times per call.
    """
    import tensorflow as tf

    pixels = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)
    vector = tf.TensorSpec([None], tf.float32)
    return tf.function(
        _make_step_body(model, optimizer, settings), input_signature=[pixels, vector, vector]
    )


def make_train_steps(
    model: keras.Model, optimizer: keras.optimizers.Optimizer, settings: StepSettings
) -> Callable[[Any, Any, Any], tuple[Any, Any]]:
    """A compiled function running up to ``n`` steps of :func:`make_train_step` in one call.

    ``(iterator, n, sums) -> (sums, steps)``: takes up to ``n`` batches (x, y, w) from a
    ``tf.data`` iterator (fewer when it runs out), trains on each, and adds to ``sums``
    (float64, :data:`N_SUMS`) per batch, in order: loss * batch, data_loss * batch,
    l1_penalty * batch, correct predictions, batch size. ``steps`` is how many it ran.
    Adding to the running ``sums`` one batch at a time keeps the epoch means exactly what a
    step-by-step loop computes in float64, so the history does not depend on the chunking.
    """
    import tensorflow as tf

    body = _make_step_body(model, optimizer, settings)
    if not optimizer.built:  # variables cannot be created inside the loop below
        optimizer.build(model.trainable_variables)

    @tf.function
    def run(iterator: Any, n: Any, sums: Any) -> tuple[Any, Any]:
        steps = tf.constant(0)
        for _ in tf.range(n):
            batch = iterator.get_next_as_optional()
            if not batch.has_value():
                break
            x, y, w = batch.get_value()
            loss, fit_loss, penalty, correct = body(x, y, w)
            size = tf.cast(tf.shape(y)[0], tf.float64)
            sums += tf.stack(
                [
                    tf.cast(loss, tf.float64) * size,
                    tf.cast(fit_loss, tf.float64) * size,
                    tf.cast(penalty, tf.float64) * size,
                    tf.cast(correct, tf.float64),
                    size,
                ]
            )
            steps += 1
        return sums, steps

    return run


def without_autotune(dataset: Any) -> Any:
    """``dataset`` with tf.data autotuning off, for a loop that reads it to the end each epoch.

    With autotuning on, dropping a finished iterator sometimes waits 0.5-2.5 s for tf.data's
    tuning thread while both cores are busy training (measured: a mean 0.57 s per epoch of
    ~2-4 s); this pipeline (cached tensors, one cast) needs no tuning. Data and order are the
    same: autotuning only chooses buffer sizes and parallelism.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def make_predict_fn(model: keras.Model) -> Callable[[Any], np.ndarray]:
    """A compiled inference function: pixels (N, H, W, C) -> positive-class probabilities (N,).

    Built once per model and kept on it: tracing costs more than predicting a test split.
    """
    import tensorflow as tf

    cached = getattr(model, "_l1cnn_predict_fn", None)
    if cached is not None:
        return cached

    @tf.function(input_signature=[tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)])
    def forward(x: Any) -> Any:
        return tf.reshape(model(x, training=False), [-1])

    def predict(x: Any) -> np.ndarray:
        return forward(tf.cast(x, tf.float32)).numpy()

    model._l1cnn_predict_fn = predict
    return predict


def predict_dataset(predict: Callable[[Any], np.ndarray], dataset: Any) -> np.ndarray:
    """Probabilities for every batch of a ``tf.data`` dataset of (x, ...) tuples."""
    out = [predict(batch[0]) for batch in without_autotune(dataset)]
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


@dataclass
class FitResult:
    """What the epoch loop did."""

    history: list[dict[str, float]]
    status: str  # "early_stopped", "completed", "interrupted", "diverged" or a callback's
    best_epoch: int
    epochs_run: int
    message: str = ""


class StopTraining(Exception):  # noqa: N818  (a signal, not an error)
    """Raised by an epoch callback to end training after this epoch with its own status.

    The epoch stays in the history and the best weights are restored, as after early stopping.
    """

    def __init__(self, status: str, message: str = "") -> None:
        super().__init__(message or status)
        self.status, self.message = status, message


class EpochCallback:
    """Hooks the loop calls around each epoch; subclasses override what they need.

    ``on_epoch_end`` runs after early stopping has seen the epoch, so a callback that saves
    state (the backup) saves the stopper's too; it may raise :class:`StopTraining`.
    """

    def on_epoch_begin(self, epoch: int, epochs: int, n_batches: int | None) -> None:
        """Epoch ``epoch`` of ``epochs`` starts (``n_batches`` None: unknown length)."""

    def on_batches(self, done: int, sums: np.ndarray) -> None:
        """``done`` batches of this epoch have run; ``sums`` as in :func:`make_train_steps`."""

    def on_validation(self, epoch: int, val_prob: np.ndarray) -> None:
        """The validation probabilities of epoch ``epoch``; called just before on_epoch_end."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        """Epoch ``epoch`` finished with ``logs`` (one row of the history)."""


class ProgressBar(EpochCallback):
    """Keras' progress bar, one per epoch, with the loss, L1 penalty and accuracy."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.done = 0

    def on_epoch_begin(self, epoch: int, epochs: int, n_batches: int | None) -> None:
        self.bar = keras.utils.Progbar(n_batches, stateful_metrics=[*PROGRESS_METRICS])
        self.done = 0
        print(f"Epoch {epoch}/{epochs}")

    def on_batches(self, done: int, sums: np.ndarray) -> None:
        self.done = done
        self.bar.update(done, [("loss", sums[0] / sums[4]), ("accuracy", sums[3] / sums[4])])

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self.bar.update(self.done, [(k, logs[k]) for k in PROGRESS_METRICS], finalize=True)


@dataclass
class FitData:
    """The data of one fit: training batches (or ``epoch -> batches``) and validation.

    ``train`` may be a function of the epoch number, so that each epoch's shuffle depends on
    the epoch alone, not on how many epochs this process ran (resume stays bit-identical).
    """

    train: Any
    val: Any
    val_labels: np.ndarray

    def train_batches(self, epoch: int) -> Any:
        """The training ``tf.data`` dataset of ``epoch``, autotuning off."""
        return without_autotune(self.train(epoch) if callable(self.train) else self.train)


StepFactory = Callable[[keras.Model, keras.optimizers.Optimizer, StepSettings], Any]


def _run_epoch(
    run_steps: Any, epoch_ds: Any, n_batches: int, callbacks: list[EpochCallback]
) -> tuple[np.ndarray, int]:
    """Train on every batch of ``epoch_ds`` (``n_batches``, -1: unknown); return sums and count.

    Up to STEPS_PER_CALL steps per call; the sums stay a tensor between calls and are read
    once per call, for the callbacks (the progress bar).
    """
    import tensorflow as tf

    iterator = iter(epoch_ds)
    sums = tf.zeros([N_SUMS], tf.float64)
    i = 0
    while True:
        want = STEPS_PER_CALL if n_batches < 0 else min(STEPS_PER_CALL, n_batches - i)
        if want <= 0:
            break
        sums, ran = run_steps(iterator, tf.constant(want), sums)
        i += int(ran)
        if int(ran) < want:
            break
        if n_batches < 0 or i < n_batches:
            now = sums.numpy()
            for callback in callbacks:
                callback.on_batches(i, now)
    del iterator
    return sums.numpy(), i


def _epoch_logs(
    epoch: int,
    sums: np.ndarray,
    val_prob: np.ndarray,
    val_labels: np.ndarray,
    penalty_now: float,
    started: float,
) -> dict[str, float]:
    """One row of the history: training means from the sums, validation from its probabilities.

    The validation loss adds the L1 penalty of the weights at the end of the epoch, as Keras'
    ``val_loss`` does.
    """
    seen = sums[4]
    val_data = float(losses.data_loss(val_labels, val_prob))
    return {
        "epoch": epoch,
        "loss": sums[0] / seen,
        "data_loss": sums[1] / seen,
        "l1_penalty": sums[2] / seen,
        "accuracy": sums[3] / seen,
        "val_loss": val_data + penalty_now,
        "val_data_loss": val_data,
        "val_accuracy": float(np.mean((val_prob > 0.5) == (val_labels == 1))),
        "seconds": time.perf_counter() - started,
    }


def fit(
    model: keras.Model,
    data: FitData,
    settings: StepSettings,
    epochs: int,
    early_stopping: EarlyStopping | None = None,
    callbacks: list[EpochCallback] | None = None,
    done: list[dict[str, float]] | None = None,
    step_factory: StepFactory = make_train_steps,
) -> FitResult:
    """Train ``model`` (compiled: its optimizer is used) for up to ``epochs`` epochs.

    Ctrl-C ends training cleanly (status "interrupted"); a non-finite loss ends it with status
    "diverged"; a callback may end it with :class:`StopTraining`. In every case, and after early
    stopping, the best weights are restored.

    Args:
        model: a compiled model.
        data: training and validation data.
        settings: L1 and learning rate of the step.
        epochs: the last epoch number to train.
        early_stopping: its state (None: train every epoch, keep the last weights).
        callbacks: called around every epoch, in order (e.g. :class:`ProgressBar`, a backup).
        done: the history of epochs already finished (resume): training goes on at epoch
            ``len(done) + 1``; the model, optimizer and ``early_stopping`` must hold that state.
        step_factory: builds the compiled step function (see :func:`make_train_steps`).
    """
    callbacks = list(callbacks or [])
    run_steps = step_factory(model, model.optimizer, settings)
    predict = make_predict_fn(model)
    kernels = regularized_kernels(model)
    val_ds = without_autotune(data.val)
    history: list[dict[str, float]] = list(done or [])
    status, message = "completed", ""
    last_good: list[np.ndarray] | None = model.get_weights() if history else None
    tracker = early_stopping or EarlyStopping(patience=epochs, restore_best_weights=False)
    # A resumed run whose last finished epoch had already triggered early stopping: stop now.
    stopped = early_stopping is not None and 0 < tracker.wait and tracker.wait >= tracker.patience
    try:
        for epoch in range(len(history) + 1, (len(history) if stopped else epochs) + 1):
            started = time.perf_counter()
            epoch_ds = data.train_batches(epoch)
            n_batches = int(epoch_ds.cardinality().numpy())
            for callback in callbacks:
                callback.on_epoch_begin(epoch, epochs, n_batches if n_batches >= 0 else None)
            sums, _ = _run_epoch(run_steps, epoch_ds, n_batches, callbacks)
            penalty_now = float(losses.l1_penalty(kernels, settings.l1_lambda))
            val_prob = predict_dataset(predict, val_ds)
            logs = _epoch_logs(epoch, sums, val_prob, data.val_labels, penalty_now, started)
            if not all(math.isfinite(v) for v in logs.values()):
                status = "diverged"
                message = f"the loss became NaN or infinite in epoch {epoch}"
                break
            history.append(logs)
            if early_stopping is None:
                last_good = model.get_weights()
            stop = tracker.update(epoch, logs, model)
            for callback in callbacks:
                callback.on_validation(epoch, val_prob)
                callback.on_epoch_end(epoch, logs)
            if stop and early_stopping is not None:
                status = "early_stopped"
                break
    except KeyboardInterrupt:
        status = "interrupted"
        message = f"interrupted by the user after {len(history)} finished epoch(s)"
    except StopTraining as stop_signal:
        status, message = stop_signal.status, stop_signal.message
    if stopped:
        status = "early_stopped"
    if early_stopping is not None:
        early_stopping.restore(model)
    elif status == "diverged" and last_good is not None:
        model.set_weights(last_good)
    best_epoch = tracker.best_epoch if early_stopping is not None else len(history)
    return FitResult(history, status, best_epoch, len(history), message)
