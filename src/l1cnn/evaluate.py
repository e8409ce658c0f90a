"""Metrics, threshold choice and the "learned nothing" diagnosis, from labels and probabilities.

Pure NumPy/scikit-learn: no TensorFlow, no plotting, no I/O.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn import metrics as skm

from l1cnn.errors import ConfigError

# A model whose probabilities vary less than this across a split predicts a constant.
CONSTANT_PREDICTION_STD = 1e-3
# A validation ROC-AUC at or below this is indistinguishable from chance.
CHANCE_ROC_AUC = 0.55


def _as_arrays(y_true: Any, y_prob: Any) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true).reshape(-1).astype(np.int64)
    y_prob = np.asarray(y_prob, dtype=np.float64).reshape(-1)
    if y_true.shape != y_prob.shape:
        raise ValueError(f"{y_true.shape[0]} labels but {y_prob.shape[0]} probabilities")
    return y_true, y_prob


def compute_metrics(y_true: Any, y_prob: Any, threshold: float = 0.5) -> dict[str, Any]:
    """Metrics of positive-class probabilities ``y_prob`` against 0/1 labels ``y_true``.

    Predictions are ``y_prob >= threshold``. Metrics that need both classes (ROC-AUC, PR-AUC)
    are ``None`` when one is missing.
    """
    y_true, y_prob = _as_arrays(y_true, y_prob)
    y_pred = (y_prob >= threshold).astype(np.int64)
    both = len(np.unique(y_true)) == 2
    tn, fp, fn, tp = skm.confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel()
    clipped = np.clip(y_prob, 1e-7, 1 - 1e-7)
    return {
        "n": int(y_true.size),
        "n_positive": int(y_true.sum()),
        "threshold": float(threshold),
        "loss": float(skm.log_loss(y_true, clipped, labels=[0, 1])),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "precision": float(skm.precision_score(y_true, y_pred, zero_division=0)),
        "recall": float(skm.recall_score(y_true, y_pred, zero_division=0)),
        "f1": float(skm.f1_score(y_true, y_pred, zero_division=0)),
        "roc_auc": float(skm.roc_auc_score(y_true, y_prob)) if both else None,
        "pr_auc": float(skm.average_precision_score(y_true, y_prob)) if both else None,
        "confusion_matrix": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
    }


def choose_threshold(rule: str, y_true: Any, y_prob: Any) -> float:
    """The decision threshold given by ``rule``, chosen on (validation) labels and probabilities.

    ``rule`` is a number in [0, 1] (used as is).
    """
    try:
        value = float(rule)
    except ValueError:
        raise ConfigError(
            f"config key 'train.threshold' must be a number in [0, 1], got {rule!r}"
        ) from None
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"config key 'train.threshold' must be in [0, 1], got {rule!r}")
    return value


def diagnose(
    val_prob: Any, val_roc_auc: float | None, l1_share: float | None, l1_lambda: float
) -> dict[str, Any]:
    """Detect a model that learned nothing: near-constant predictions or chance-level ROC-AUC.

    Args:
        val_prob: validation probabilities.
        val_roc_auc: validation ROC-AUC (None when undefined).
        l1_share: the L1 penalty's share of the final training loss (0..1), if known.
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
            parts.append(f"The L1 penalty is {l1_share:.0%} of the final training loss.")
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
