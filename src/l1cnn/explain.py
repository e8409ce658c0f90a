"""What the model does, as plain arrays: weight magnitudes, confidently wrong images, Grad-CAM.

Everything model-dependent that the report shows is computed here (with Keras/TensorFlow) and
saved as ``explain.npz`` in the run folder, so ``report.py`` can draw it without TensorFlow.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from l1cnn import runs
from l1cnn.data import Split
from l1cnn.errors import RunError
from l1cnn.model import NEAR_ZERO

# Log-spaced |w| histogram bins, 1e-8 .. 10; smaller values (exact zeros too) go in the first bin.
WEIGHT_EDGES = np.logspace(-8, 1, 46)
N_WRONG = 16  # most confidently wrong test images shown
N_SALIENCY = 4  # correct and wrong examples each, with Grad-CAM overlays


@dataclass
class Explanation:
    """Plain arrays for the report (see :func:`explain`)."""

    layer_names: list[str]
    layer_sizes: np.ndarray  # number of kernel weights per layer
    near_zero_fraction: np.ndarray  # per layer: share of |w| < near_zero
    weight_edges: np.ndarray  # histogram bin edges of |w| (WEIGHT_EDGES)
    weight_counts: np.ndarray  # (layers, bins) counts of |w|, values below the edges in bin 0
    near_zero: float  # the |w| cut-off used for the near-zero fraction
    wrong_images: np.ndarray  # (k, H, W, C) raw pixels, most confidently wrong first
    wrong_labels: np.ndarray
    wrong_probs: np.ndarray
    wrong_ids: list[str]
    saliency_images: np.ndarray  # (m, H, W, C)
    saliency_maps: np.ndarray  # (m, H, W) in [0, 1]
    saliency_labels: np.ndarray
    saliency_probs: np.ndarray
    saliency_correct: np.ndarray  # bool
    threshold: float


def weight_magnitudes(model: keras.Model) -> tuple[list[str], list[np.ndarray]]:
    """|kernel| of every Conv2D and Dense layer (the weights L1 acts on), flattened."""
    names, values = [], []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D | keras.layers.Dense):
            names.append(layer.name)
            values.append(np.abs(np.asarray(layer.kernel)).reshape(-1).astype(np.float64))
    return names, values


def weight_histograms(
    magnitudes: list[np.ndarray], near_zero: float = NEAR_ZERO
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per layer: size, share of |w| < ``near_zero``, and counts on :data:`WEIGHT_EDGES`.

    Histograms rather than raw weights keep ``explain.npz`` small (a dense layer can hold
    hundreds of thousands of weights).
    """
    sizes = np.array([w.size for w in magnitudes], dtype=np.int64)
    fractions = np.array([float(np.mean(w < near_zero)) if w.size else 0.0 for w in magnitudes])
    lo, hi = WEIGHT_EDGES[0], WEIGHT_EDGES[-1]
    counts = (
        np.stack([np.histogram(np.clip(w, lo, hi), bins=WEIGHT_EDGES)[0] for w in magnitudes])
        if magnitudes
        else np.zeros((0, WEIGHT_EDGES.size - 1))
    )
    return sizes, fractions, counts.astype(np.int64)


def confidently_wrong(
    labels: np.ndarray, probs: np.ndarray, threshold: float, k: int
) -> np.ndarray:
    """Indices of the ``k`` wrong calls with the most confidence in the wrong class.

    Confidence is the distance of the probability from the threshold, on the wrong side.
    """
    labels = np.asarray(labels).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    pred = (probs >= threshold).astype(labels.dtype)
    wrong = np.flatnonzero(pred != labels)
    margin = np.abs(probs[wrong] - threshold)
    return wrong[np.argsort(-margin, kind="stable")][:k]


def _last_conv(model: keras.Model) -> keras.layers.Layer:
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    if not convs:
        raise RunError(f"model '{model.name}' has no convolution layer for Grad-CAM")
    return convs[-1]


def grad_cam(model: keras.Model, images: np.ndarray, toward_positive: np.ndarray) -> np.ndarray:
    """Grad-CAM on the last convolution, resized to the image and scaled to [0, 1] per image.

    Args:
        model: the classifier (raw pixels in, positive-class probability out).
        images: (N, H, W, C) raw pixels.
        toward_positive: per image, True to explain the positive-class score and False to
            explain the negative one (use the model's own call, so the map shows what pushed
            it toward its answer).

    Returns:
        (N, H, W) float32 maps.
    """
    import tensorflow as tf

    if len(images) == 0:
        return np.zeros((0, *images.shape[1:3]), np.float32)
    probe = keras.Model(model.inputs, [_last_conv(model).output, model.outputs[0]])
    x = tf.convert_to_tensor(np.asarray(images, np.float32))
    sign = tf.constant(np.where(toward_positive, 1.0, -1.0).astype(np.float32))
    with tf.GradientTape() as tape:
        features, prob = probe(x, training=False)
        score = tf.reshape(prob, [-1]) * sign
    grads = tape.gradient(score, features)
    channel_weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(channel_weights * features, axis=-1, keepdims=True))
    cam = tf.image.resize(cam, images.shape[1:3], method="bilinear")[..., 0].numpy()
    peak = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
    return np.where(peak > 0, cam / np.where(peak > 0, peak, 1.0), 0.0).astype(np.float32)


def explain(
    model: keras.Model,
    test: Split,
    test_probs: np.ndarray,
    threshold: float,
    n_wrong: int = N_WRONG,
    n_saliency: int = N_SALIENCY,
) -> Explanation:
    """Weight magnitudes, the most confidently wrong test images, and Grad-CAM examples.

    Args:
        model: the trained classifier.
        test: the test split (raw pixels, labels, ids).
        test_probs: the model's test probabilities, in split order.
        threshold: the run's decision threshold.
        n_wrong: how many confidently wrong images to keep.
        n_saliency: how many correct and how many wrong examples get a Grad-CAM map.

    Returns:
        An :class:`Explanation` of plain arrays.
    """
    names, magnitudes = weight_magnitudes(model)
    sizes, fractions, counts = weight_histograms(magnitudes)
    labels = np.asarray(test.labels).reshape(-1)
    probs = np.asarray(test_probs, dtype=np.float64).reshape(-1)
    wrong = confidently_wrong(labels, probs, threshold, n_wrong)
    pred = probs >= threshold
    # Saliency: the most confident correct calls of each class, then the worst mistakes.
    correct = np.flatnonzero(pred == (labels == 1))
    conf = np.abs(probs[correct] - threshold)
    by_class = [
        correct[labels[correct] == c][np.argsort(-conf[labels[correct] == c])] for c in (1, 0)
    ]
    picks_correct = [i for pair in zip(*by_class, strict=False) for i in pair][:n_saliency]
    if len(picks_correct) < n_saliency:
        extra = [i for group in by_class for i in group if i not in picks_correct]
        picks_correct += extra[: n_saliency - len(picks_correct)]
    picks = np.array(list(picks_correct) + list(wrong[:n_saliency]), dtype=np.int64)
    images = test.images[picks] if picks.size else test.images[:0]
    maps = grad_cam(model, images, pred[picks])
    return Explanation(
        layer_names=names,
        layer_sizes=sizes,
        near_zero_fraction=fractions,
        weight_edges=WEIGHT_EDGES,
        weight_counts=counts,
        near_zero=NEAR_ZERO,
        wrong_images=test.images[wrong],
        wrong_labels=labels[wrong],
        wrong_probs=probs[wrong],
        wrong_ids=[test.ids[i] for i in wrong],
        saliency_images=images,
        saliency_maps=maps,
        saliency_labels=labels[picks],
        saliency_probs=probs[picks],
        saliency_correct=pred[picks] == (labels[picks] == 1),
        threshold=float(threshold),
    )


def save_explanation(path: str | Path, exp: Explanation) -> None:
    """Write an Explanation as ``.npz`` (no pickles), atomically."""
    arrays: dict[str, Any] = {
        "layer_names": np.array(exp.layer_names, dtype=str),
        "layer_sizes": exp.layer_sizes,
        "near_zero_fraction": exp.near_zero_fraction,
        "weight_edges": exp.weight_edges,
        "weight_counts": exp.weight_counts,
        "near_zero": np.float64(exp.near_zero),
        "threshold": np.float64(exp.threshold),
        "wrong_images": exp.wrong_images,
        "wrong_labels": exp.wrong_labels,
        "wrong_probs": exp.wrong_probs,
        "wrong_ids": np.array(exp.wrong_ids, dtype=str),
        "saliency_images": exp.saliency_images,
        "saliency_maps": exp.saliency_maps,
        "saliency_labels": exp.saliency_labels,
        "saliency_probs": exp.saliency_probs,
        "saliency_correct": exp.saliency_correct,
    }
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    try:
        runs.atomic_write_bytes(path, buf.getvalue())
    except OSError as exc:
        raise RunError(f"cannot write '{path}': {exc.strerror}") from None


def write_explanation(
    run_dir: str | Path, model: keras.Model, test: Split, test_probs: np.ndarray, threshold: float
) -> Path:
    """Compute the explanation of a run's test split and save it as ``explain.npz`` there."""
    path = Path(run_dir) / runs.EXPLAIN_FILE
    save_explanation(path, explain(model, test, test_probs, threshold))
    return path


def explain_run(run_dir: str | Path) -> Path:
    """Recompute ``explain.npz`` of a finished run from its model and (re-checked) data.

    Args:
        run_dir: the run folder.

    Returns:
        The path of the written ``explain.npz``.

    Raises:
        RunError, ModelError: not a run, or an unusable model.
        DataError: the run's data is gone or has changed.
    """
    from l1cnn.predict import predict_split, reload_run_data

    run = runs.load_run(run_dir)
    test = reload_run_data(run).splits["test"]
    probs = predict_split(run.model, test)
    return write_explanation(run.path, run.model, test, probs, run.threshold)
