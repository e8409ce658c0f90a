"""Metrics, threshold choice and the "learned nothing" diagnosis, from labels and probabilities.

Pure NumPy/scikit-learn: no TensorFlow, no plotting, no I/O. ``report.py`` draws its curves from
the helpers here, so the numbers in a plot and in ``metrics.json`` are the same numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn import metrics as skm

from l1cnn.config import parse_threshold_rule
from l1cnn.errors import DataError

# A model whose probabilities vary less than this across a split predicts a constant.
CONSTANT_PREDICTION_STD = 1e-3
# A validation ROC-AUC at or below this is indistinguishable from chance.
CHANCE_ROC_AUC = 0.55
# Bootstrap confidence intervals: resamples, level, and a fixed seed so reruns agree.
N_BOOTSTRAP = 1000
CI_LEVEL = 0.95
BOOTSTRAP_SEED = 0
# Equal-width probability bins for the expected calibration error and the reliability diagram.
CALIBRATION_BINS = 10


def _as_arrays(y_true: Any, y_prob: Any) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true).reshape(-1).astype(np.int64)
    y_prob = np.asarray(y_prob, dtype=np.float64).reshape(-1)
    if y_true.shape != y_prob.shape:
        raise ValueError(f"{y_true.shape[0]} labels but {y_prob.shape[0]} probabilities")
    return y_true, y_prob


def calibration_bins(y_true: Any, y_prob: Any, n_bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """Reliability-diagram bins of the positive-class probability: [0, 0.1), ..., [0.9, 1].

    Args:
        y_true: 0/1 labels.
        y_prob: positive-class probabilities.
        n_bins: number of equal-width bins.

    Returns:
        ``{"edges", "count", "mean_prob", "frac_positive"}`` (arrays; means are NaN in empty bins).
    """
    y_true, y_prob = _as_arrays(y_true, y_prob)
    which = np.minimum((y_prob * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(which, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.bincount(which, weights=y_prob, minlength=n_bins) / count
        frac_pos = np.bincount(which, weights=y_true, minlength=n_bins) / count
    return {
        "edges": np.linspace(0.0, 1.0, n_bins + 1),
        "count": count,
        "mean_prob": mean_prob,
        "frac_positive": frac_pos,
    }


def expected_calibration_error(y_true: Any, y_prob: Any, n_bins: int = CALIBRATION_BINS) -> float:
    """ECE: the count-weighted mean gap between observed positive rate and mean probability."""
    bins = calibration_bins(y_true, y_prob, n_bins)
    used = bins["count"] > 0
    if not used.any():
        return 0.0
    gaps = np.abs(bins["frac_positive"][used] - bins["mean_prob"][used])
    return float(np.sum(bins["count"][used] * gaps) / np.sum(bins["count"][used]))


def _weighted_auc(y_true: np.ndarray, group: np.ndarray, n_groups: int, w: np.ndarray) -> float:
    """ROC-AUC with per-sample weights (bootstrap counts); ``group`` ranks the distinct scores.

    AUC = P(score of a positive > score of a negative) + half the ties, counted with weights.
    """
    pos_w = np.bincount(group, weights=w * y_true, minlength=n_groups)
    neg_w = np.bincount(group, weights=w * (1 - y_true), minlength=n_groups)
    total_pos, total_neg = pos_w.sum(), neg_w.sum()
    if total_pos == 0 or total_neg == 0:
        return float("nan")
    neg_below = np.cumsum(neg_w) - neg_w
    return float(np.sum(pos_w * (neg_below + 0.5 * neg_w)) / (total_pos * total_neg))


def bootstrap_ci(
    y_true: Any,
    y_prob: Any,
    threshold: float = 0.5,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = BOOTSTRAP_SEED,
    level: float = CI_LEVEL,
) -> dict[str, Any]:
    """Percentile bootstrap intervals for accuracy, F1 and ROC-AUC (images resampled with
    replacement; resamples that lack a class are left out of the ROC-AUC interval).

    Args:
        y_true: 0/1 labels.
        y_prob: positive-class probabilities.
        threshold: predictions are ``y_prob >= threshold``.
        n_resamples: bootstrap resamples.
        seed: NumPy seed, so the same inputs give the same interval.
        level: coverage, e.g. 0.95.

    Returns:
        ``{"level", "n_resamples", "seed", "accuracy": [lo, hi], "f1": [lo, hi],
        "roc_auc": [lo, hi] or None}`` (``None`` for an empty split).
    """
    y_true, y_prob = _as_arrays(y_true, y_prob)
    out: dict[str, Any] = {"level": level, "n_resamples": n_resamples, "seed": seed}
    n = y_true.size
    if n == 0:
        return {**out, "accuracy": None, "f1": None, "roc_auc": None}
    y_pred = (y_prob >= threshold).astype(np.int64)
    correct = (y_pred == y_true).astype(np.float64)
    tp_i = (y_pred & y_true).astype(np.float64)
    fp_i = (y_pred & (1 - y_true)).astype(np.float64)
    fn_i = ((1 - y_pred) & y_true).astype(np.float64)
    _uniq, group = np.unique(y_prob, return_inverse=True)
    n_groups = int(group.max()) + 1
    rng = np.random.default_rng(seed)
    acc, f1, auc = np.empty(n_resamples), np.empty(n_resamples), np.empty(n_resamples)
    for b in range(n_resamples):
        w = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        acc[b] = w @ correct / n
        tp, fp, fn = w @ tp_i, w @ fp_i, w @ fn_i
        f1[b] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn > 0 else 0.0
        auc[b] = _weighted_auc(y_true, group, n_groups, w)
    tail = (1 - level) / 2 * 100

    def interval(values: np.ndarray) -> list[float] | None:
        values = values[~np.isnan(values)]
        if values.size == 0:
            return None
        lo, hi = np.percentile(values, [tail, 100 - tail])
        return [float(lo), float(hi)]

    return {**out, "accuracy": interval(acc), "f1": interval(f1), "roc_auc": interval(auc)}


def compute_metrics(
    y_true: Any,
    y_prob: Any,
    threshold: float = 0.5,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """Metrics of positive-class probabilities ``y_prob`` against 0/1 labels ``y_true``.

    Predictions are ``y_prob >= threshold``. Metrics that need both classes (ROC-AUC, PR-AUC,
    balanced accuracy) are ``None`` when one is missing; precision, recall, specificity and F1
    are 0 when undefined (scikit-learn's ``zero_division=0``).

    Args:
        y_true: 0/1 labels.
        y_prob: positive-class probabilities.
        threshold: the decision threshold.
        n_resamples: bootstrap resamples for the ``ci`` intervals (0 leaves ``ci`` out).
        seed: the bootstrap's seed.

    Returns:
        A JSON-ready dict: n, n_positive, threshold, loss (log loss), accuracy,
        balanced_accuracy, precision, recall, specificity, f1, mcc, roc_auc, pr_auc (average
        precision), brier, ece, confusion_matrix ``{tn, fp, fn, tp}`` and ``ci``.
    """
    y_true, y_prob = _as_arrays(y_true, y_prob)
    y_pred = (y_prob >= threshold).astype(np.int64)
    both = len(np.unique(y_true)) == 2
    tn, fp, fn, tp = (int(v) for v in skm.confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel())
    clipped = np.clip(y_prob, 1e-7, 1 - 1e-7)
    metrics: dict[str, Any] = {
        "n": int(y_true.size),
        "n_positive": int(y_true.sum()),
        "threshold": float(threshold),
        "loss": float(skm.log_loss(y_true, clipped, labels=[0, 1])),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y_true, y_pred)) if both else None,
        "precision": float(skm.precision_score(y_true, y_pred, zero_division=0)),
        "recall": float(skm.recall_score(y_true, y_pred, zero_division=0)),
        "specificity": tn / (tn + fp) if tn + fp else 0.0,
        "f1": float(skm.f1_score(y_true, y_pred, zero_division=0)),
        "mcc": float(skm.matthews_corrcoef(y_true, y_pred)),
        "roc_auc": float(skm.roc_auc_score(y_true, y_prob)) if both else None,
        "pr_auc": float(skm.average_precision_score(y_true, y_prob)) if both else None,
        "brier": float(np.mean((y_prob - y_true) ** 2)),
        "ece": expected_calibration_error(y_true, y_prob),
        "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
    }
    if n_resamples > 0:
        metrics["ci"] = bootstrap_ci(y_true, y_prob, threshold, n_resamples, seed)
    return metrics


def _rates(y_true: np.ndarray, y_prob: np.ndarray) -> dict[str, np.ndarray]:
    """Confusion counts at every candidate threshold (each distinct score, ascending)."""
    order = np.argsort(y_prob, kind="stable")
    scores, labels = y_prob[order], y_true[order]
    cand = np.unique(scores)
    # Images at or above cand[k] are called positive: count them with a right-to-left cumsum.
    start = np.searchsorted(scores, cand, side="left")
    pos_above = np.concatenate([np.cumsum(labels[::-1])[::-1], [0]])
    neg_above = np.concatenate([np.cumsum((1 - labels)[::-1])[::-1], [0]])
    tp, fp = pos_above[start].astype(np.float64), neg_above[start].astype(np.float64)
    n_pos, n_neg = float(labels.sum()), float(labels.size - labels.sum())
    return {
        "threshold": cand,
        "tp": tp,
        "fp": fp,
        "fn": n_pos - tp,
        "tn": n_neg - fp,
        "n_pos": np.float64(n_pos),
        "n_neg": np.float64(n_neg),
    }


def _best(values: np.ndarray, thresholds: np.ndarray) -> float:
    """The threshold with the largest value; ties go to the highest threshold (fewest alarms).

    Values within 1e-12 count as tied, so 1 - 1/3 and 2/3 - 0 are the same Youden index.
    """
    best = np.flatnonzero(values >= values.max() - 1e-12)
    return float(thresholds[best[-1]])


def threshold_choice(rule: str, y_true: Any, y_prob: Any) -> dict[str, Any]:
    """Choose the decision threshold by ``rule`` on validation labels and probabilities.

    Candidate thresholds are the distinct validation probabilities (an image is positive when
    its probability is >= the threshold), so every candidate is a different set of calls.

    Args:
        rule: ``"0.5"`` (used as is), ``"f1"`` (maximize F1), ``"youden"`` (maximize
            TPR - FPR), ``"recall=0.95"`` (the highest threshold whose recall reaches 0.95) or
            ``"precision=0.9"`` (the lowest threshold whose precision reaches 0.9, i.e. the most
            recall at that precision). Ties go to the highest threshold.
        y_true: validation 0/1 labels.
        y_prob: validation positive-class probabilities.

    Returns:
        ``{"rule", "value", "note"}``; ``note`` says why the rule could not be met as asked
        (e.g. an unreachable precision: then the threshold of the best precision is used), else
        ``None``.

    Raises:
        ConfigError: a malformed rule.
        DataError: a data-driven rule with no validation images.
    """
    kind, target = parse_threshold_rule(rule)
    out: dict[str, Any] = {"rule": str(rule), "value": target, "note": None}
    if kind == "fixed":
        return out
    y_true, y_prob = _as_arrays(y_true, y_prob)
    if y_true.size == 0:
        raise DataError(f"threshold rule {rule!r} needs validation images, and there are none")
    if len(np.unique(y_true)) < 2:
        out.update(
            value=0.5,
            note=f"the validation split has one class only, so rule {rule!r} "
            "cannot be applied; 0.5 is used",
        )
        return out
    r = _rates(y_true, y_prob)
    thresholds = r["threshold"]
    recall = r["tp"] / r["n_pos"]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(r["tp"] + r["fp"] > 0, r["tp"] / (r["tp"] + r["fp"]), 0.0)
    if kind == "f1":
        out["value"] = _best(2 * r["tp"] / (2 * r["tp"] + r["fp"] + r["fn"]), thresholds)
    elif kind == "youden":
        out["value"] = _best(recall - r["fp"] / r["n_neg"], thresholds)
    elif kind == "recall":
        # Recall falls as the threshold rises; the lowest candidate always reaches recall 1.
        out["value"] = float(thresholds[np.flatnonzero(recall >= target - 1e-12)[-1]])
    else:  # precision
        ok = np.flatnonzero(precision >= target - 1e-12)
        if ok.size:
            out["value"] = float(thresholds[ok[0]])
        else:
            out["value"] = _best(precision, thresholds)
            out["note"] = (
                f"no threshold reaches precision {target:g} on validation (best "
                f"{precision.max():.3f}); the threshold of the best precision is used"
            )
    return out


def choose_threshold(rule: str, y_true: Any, y_prob: Any) -> float:
    """The decision threshold given by ``rule`` on (validation) labels and probabilities.

    See :func:`threshold_choice` for the rules; this returns only the value.
    """
    return float(threshold_choice(rule, y_true, y_prob)["value"])


def roc_points(y_true: Any, y_prob: Any) -> dict[str, np.ndarray]:
    """ROC curve (false positive rate, true positive rate, thresholds) for plotting."""
    y_true, y_prob = _as_arrays(y_true, y_prob)
    fpr, tpr, thr = skm.roc_curve(y_true, y_prob)
    return {"fpr": fpr, "tpr": tpr, "threshold": thr}


def pr_points(y_true: Any, y_prob: Any) -> dict[str, np.ndarray]:
    """Precision-recall curve (precision, recall, thresholds) for plotting."""
    y_true, y_prob = _as_arrays(y_true, y_prob)
    precision, recall, thr = skm.precision_recall_curve(y_true, y_prob)
    return {"precision": precision, "recall": recall, "threshold": thr}


def diagnose(
    val_prob: Any, val_roc_auc: float | None, l1_share: float | None, l1_lambda: float
) -> dict[str, Any]:
    """Detect a model that learned nothing: near-constant predictions or chance-level ROC-AUC.

    Args:
        val_prob: validation probabilities.
        val_roc_auc: validation ROC-AUC (None when undefined).
        l1_share: the L1 penalty's share of the training loss at the best epoch (0..1), if known.
        l1_lambda: the L1 strength used, for the advice.

    Returns:
        ``{"collapsed": bool, "reasons": [...], "prediction_std": ..., "advice": str | None}``.
    """
    val_prob = np.asarray(val_prob, dtype=np.float64).reshape(-1)
    spread = float(val_prob.std()) if val_prob.size else 0.0
    reasons = []
    if spread < CONSTANT_PREDICTION_STD:
        reasons.append(
            f"predictions are constant (std {spread:.2g} around {float(val_prob.mean()):.3f})"
        )
    if val_roc_auc is not None and val_roc_auc <= CHANCE_ROC_AUC:
        reasons.append(f"validation ROC-AUC {val_roc_auc:.3f} is at chance level")
    advice = None
    if reasons:
        parts = ["The model learned nothing useful."]
        if l1_share is not None and l1_lambda > 0:
            parts.append(f"The L1 penalty is {l1_share:.0%} of the training loss (best epoch).")
        if l1_lambda > 0:
            parts.append(
                f"Try a smaller l1_lambda (e.g. --set l1_lambda={l1_lambda / 10:g}), or compare "
                "values with `l1cnn study DATA --preset l1-sweep`."
            )
        else:
            parts.append("Try a higher learning_rate, more epochs or more data.")
        advice = " ".join(parts)
    return {
        "collapsed": bool(reasons),
        "reasons": reasons,
        "prediction_std": spread,
        "l1_share_of_loss": l1_share,
        "advice": advice,
    }
