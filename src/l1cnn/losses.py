"""The training objective, in two parts kept apart: the data loss and the L1 penalty.

``keras.ops`` only, so the same functions serve any backend, ``model.fit`` users and our own
training step (including one run through ``tf.distribute`` strategies).
"""

from __future__ import annotations

from typing import Any

from keras import ops


def per_example_loss(y_true: Any, y_prob: Any, sample_weight: Any | None = None) -> Any:
    """Binary cross-entropy of each example (N,), times its ``sample_weight`` when given.

    A replica of a distributed step sums these and divides by the global batch
    (``l1cnn.distribute``); :func:`data_loss` takes their mean.
    """
    y_true = ops.reshape(ops.cast(y_true, "float32"), (-1,))
    y_prob = ops.reshape(ops.cast(y_prob, "float32"), (-1,))
    per_example = ops.binary_crossentropy(y_true, y_prob, from_logits=False)
    if sample_weight is not None:
        per_example = per_example * ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
    return per_example


def data_loss(y_true: Any, y_prob: Any, sample_weight: Any | None = None) -> Any:
    """Mean binary cross-entropy of probabilities ``y_prob`` (N,) or (N, 1) against 0/1 labels.

    With ``sample_weight`` (N,), the weighted mean (sum of w * bce / N, as Keras weights losses).
    """
    return ops.mean(per_example_loss(y_true, y_prob, sample_weight))


def l1_penalty(kernels: list[Any], l1_lambda: float) -> Any:
    """``l1_lambda * sum(|w|)`` over ``kernels``: what Keras' L1 regularizers add to the loss."""
    total = ops.convert_to_tensor(0.0, dtype="float32")
    for kernel in kernels:
        total = total + ops.sum(ops.abs(kernel))
    return ops.multiply(total, l1_lambda)


def soft_threshold(kernels: list[Any], amount: float) -> None:
    """Proximal step for L1: ``w <- sign(w) * max(|w| - amount, 0)``, making small weights 0."""
    for kernel in kernels:
        # "+ 0.0" turns the -0.0 of negative weights into +0.0 (all zeros compress alike)
        kernel.assign(ops.sign(kernel) * ops.maximum(ops.abs(kernel) - amount, 0.0) + 0.0)
