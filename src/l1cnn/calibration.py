"""Probabilities a person can act on: temperature scaling and split-conformal "refer" decisions.

Pure NumPy from labels and probabilities: no TensorFlow, no I/O. SciPy and scikit-learn are
imported only by the functions that fit or score, so the conformal part runs where an ONNX or
LiteRT export predicts without them. The model side (a Keras model that divides its logit by the
temperature) is ``l1cnn.model.with_temperature``.

Temperature scaling (Guo et al., 2017) divides the logit ``z = log(p / (1 - p))`` by one
scalar ``T`` fitted on the validation split; it is monotone, so rankings (ROC-AUC) do not move.

Split-conformal prediction (the "LAC" score ``1 - p(true class)``, Sadinle et al., 2019) is a
few lines for two classes, so it is written here rather than taken from a library: with ``n``
validation images and target coverage ``1 - a``, the threshold is the ``ceil((n + 1)(1 - a))``-th
smallest validation score, and the set of labels ``{y : 1 - p(y) <= q}`` then contains the true
label with probability at least ``1 - a`` when validation and new images are exchangeable. The
guarantee is marginal (over images), not per image.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# Probabilities are clipped this far from 0 and 1 before taking the logit: for fitting, at
# float32 resolution (as the log loss in metrics.json); for applying, far enough out that every
# distinct float32 probability keeps a distinct logit, so the order (and ROC-AUC) is kept.
LOGIT_EPS = 1e-7
APPLY_EPS = 1e-12
# The fitted temperature is searched in [1/20, 20] (on log T): beyond that the model is broken.
TEMPERATURE_BOUNDS = (0.05, 20.0)
REFER = -1  # decision code for "refer to a human"


def logit(probs: Any, eps: float = LOGIT_EPS) -> np.ndarray:
    """``log(p / (1 - p))`` in float64, with ``p`` clipped to [eps, 1 - eps]."""
    p = np.clip(np.asarray(probs, dtype=np.float64).reshape(-1), eps, 1 - eps)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow for large |z|


def apply_temperature(probs: Any, temperature: float) -> np.ndarray:
    """``sigmoid(logit(p) / T)``; ``T = 1`` returns the probabilities unchanged (as float64)."""
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    if temperature == 1.0:
        return probs
    return _sigmoid(logit(probs, APPLY_EPS) / temperature)


def _log_loss_at(z: np.ndarray, sign: np.ndarray, temperature: float) -> float:
    # -log sigmoid(sign * z / T), summed stably
    return float(np.mean(np.logaddexp(0.0, -sign * z / temperature)))


def fit_temperature(labels: Any, probs: Any) -> float:
    """The temperature that minimizes the log loss of ``probs`` against 0/1 ``labels``.

    Args:
        labels: 0/1 labels (the validation split).
        probs: the model's positive-class probabilities for them.

    Returns:
        ``T`` in TEMPERATURE_BOUNDS (> 1: the model was over-confident).

    Raises:
        ValueError: no images, or labels and probabilities of different lengths.
    """
    from scipy import optimize

    y = np.asarray(labels).reshape(-1).astype(np.int64)
    z = logit(probs)
    if y.size == 0 or y.size != z.size:
        raise ValueError(f"{y.size} labels and {z.size} probabilities: need the same, >= 1")
    sign = 2.0 * y - 1.0
    lo, hi = (math.log(b) for b in TEMPERATURE_BOUNDS)
    result = optimize.minimize_scalar(
        lambda log_t: _log_loss_at(z, sign, math.exp(log_t)),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-6},
    )
    best = math.exp(float(result.x))
    # Never worse than leaving the model alone (the bounded search can stop near a flat edge).
    return best if _log_loss_at(z, sign, best) <= _log_loss_at(z, sign, 1.0) else 1.0


def calibration_scores(labels: Any, probs: Any) -> dict[str, float]:
    """ECE, Brier score and log loss, computed exactly as in ``metrics.json``."""
    from l1cnn.evaluate import compute_metrics

    m = compute_metrics(labels, probs, 0.5, n_resamples=0)
    return {"ece": m["ece"], "brier": m["brier"], "log_loss": m["loss"]}


def temperature_record(
    temperature: float,
    raw: dict[str, tuple[np.ndarray, np.ndarray]],
    calibrated: dict[str, np.ndarray],
) -> dict[str, Any]:
    """What ``calibration.json`` holds: T, where it was fitted, and the scores before/after."""
    return {
        "method": "temperature",
        "temperature": float(temperature),
        "fitted_on": "val",
        "n_fitted": int(len(raw["val"][0])),
        "before": {s: calibration_scores(*raw[s]) for s in raw},
        "after": {s: calibration_scores(raw[s][0], calibrated[s]) for s in raw},
    }


# --------------------------------------------------------------------------- conformal


def conformal_scores(val_labels: Any, val_probs: Any) -> np.ndarray:
    """The sorted nonconformity scores ``1 - p(true class)`` of the validation images.

    All a conformal threshold needs, for any coverage: an export carries them in its
    ``export.json`` so it can refer images without the run folder.

    Raises:
        ValueError: labels and probabilities of different lengths.
    """
    y = np.asarray(val_labels).reshape(-1).astype(np.int64)
    p = np.asarray(val_probs, dtype=np.float64).reshape(-1)
    if y.size != p.size:
        raise ValueError(f"{y.size} labels but {p.size} probabilities")
    return np.sort(np.where(y == 1, 1.0 - p, p))


def threshold_from_scores(scores: Any, coverage: float) -> float:
    """The split-conformal score threshold ``q`` for ``coverage`` in [0, 1] from sorted scores.

    ``q`` is the ``ceil((n + 1) coverage)``-th smallest of the ``n`` scores (the finite-sample
    correction). ``coverage = 1`` (or too few images for the target) gives ``inf``: every set
    holds both classes. ``coverage = 0`` gives ``-inf``: every set is empty.

    Raises:
        ValueError: coverage outside [0, 1].
    """
    if not 0.0 <= coverage <= 1.0:
        raise ValueError(f"coverage must be in [0, 1], got {coverage!r}")
    scores = np.sort(np.asarray(scores, dtype=np.float64).reshape(-1))
    k = math.ceil((scores.size + 1) * coverage - 1e-12)  # the tolerance keeps 0.95 * 100 at 95
    if k <= 0:
        return -math.inf
    if k > scores.size:
        return math.inf
    return float(scores[k - 1])


def conformal_threshold(val_labels: Any, val_probs: Any, coverage: float) -> float:
    """The split-conformal score threshold ``q`` for a target ``coverage`` in [0, 1].

    The score of an image is ``1 - p(true class)``; see :func:`threshold_from_scores`.

    Raises:
        ValueError: coverage outside [0, 1], or mismatched inputs.
    """
    if not 0.0 <= coverage <= 1.0:
        raise ValueError(f"coverage must be in [0, 1], got {coverage!r}")
    return threshold_from_scores(conformal_scores(val_labels, val_probs), coverage)


def prediction_sets(probs: Any, q: float) -> tuple[np.ndarray, np.ndarray]:
    """Which labels are in each image's set: ``(has_negative, has_positive)`` boolean arrays."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    return p <= q, 1.0 - p <= q


def decisions(probs: Any, q: float) -> np.ndarray:
    """Per image: 1 or 0 when the set is that one class, else REFER (both classes, or none)."""
    has_neg, has_pos = prediction_sets(probs, q)
    out = np.full(has_neg.shape, REFER, dtype=np.int64)
    out[has_pos & ~has_neg] = 1
    out[has_neg & ~has_pos] = 0
    return out


def wilson_interval(successes: int, n: int, level: float = 0.95) -> list[float] | None:
    """Wilson score interval of a proportion (None when ``n`` is 0)."""
    if n == 0:
        return None
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + level / 2))
    phat = successes / n
    denom = 1 + z * z / n
    center = (phat + z * z / (2 * n)) / denom
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    return [max(0.0, center - half), min(1.0, center + half)]


def abstain_report(labels: Any, probs: Any, q: float, coverage: float) -> dict[str, Any]:
    """Empirical coverage, share referred and accuracy on the rest, with 95% Wilson intervals."""
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    has_neg, has_pos = prediction_sets(probs, q)
    covered = np.where(y == 1, has_pos, has_neg)
    decided = decisions(probs, q)
    kept = decided != REFER
    n, n_kept = int(y.size), int(kept.sum())
    n_correct = int(np.sum(decided[kept] == y[kept]))
    return {
        "target_coverage": float(coverage),
        "score_threshold": q if math.isfinite(q) else str(q),
        "n": n,
        "coverage": float(covered.mean()) if n else None,
        "coverage_ci": wilson_interval(int(covered.sum()), n),
        "referred": float(1 - kept.mean()) if n else None,
        "referred_ci": wilson_interval(n - n_kept, n),
        "n_decided": n_kept,
        "accuracy_decided": n_correct / n_kept if n_kept else None,
        "accuracy_decided_ci": wilson_interval(n_correct, n_kept),
    }
