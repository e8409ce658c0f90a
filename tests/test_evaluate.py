"""Metrics against hand-worked cases, bootstrap intervals, threshold rules on constructed scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from l1cnn.config import load_config, parse_threshold_rule
from l1cnn.errors import ConfigError, DataError
from l1cnn.evaluate import (
    _weighted_auc,
    bootstrap_ci,
    calibration_bins,
    choose_threshold,
    compute_metrics,
    expected_calibration_error,
    threshold_choice,
)

# Hand-worked: at 0.5 the calls are [0, 1, 0, 1] -> tn 1, fp 1, fn 1, tp 1.
Y4 = [0, 0, 1, 1]
P4 = [0.1, 0.6, 0.4, 0.9]


def test_hand_worked_metrics() -> None:
    m = compute_metrics(Y4, P4, 0.5)
    assert m["confusion_matrix"] == {"tn": 1, "fp": 1, "fn": 1, "tp": 1}
    for key in ("accuracy", "balanced_accuracy", "precision", "recall", "specificity", "f1"):
        assert m[key] == pytest.approx(0.5), key
    assert m["mcc"] == pytest.approx(0.0)
    # Positive/negative pairs: (0.4 > 0.1), (0.4 < 0.6), (0.9 > 0.1), (0.9 > 0.6) -> 3/4.
    assert m["roc_auc"] == pytest.approx(0.75)
    # Ranked: 0.9 (pos: P=1, R=.5), 0.6 (neg), 0.4 (pos: P=2/3, R=1) -> .5*1 + .5*2/3.
    assert m["pr_auc"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    # (0.1^2 + 0.6^2 + 0.6^2 + 0.1^2) / 4
    assert m["brier"] == pytest.approx(0.185)
    # One image per bin, gaps 0.1, 0.6, 0.6, 0.1.
    assert m["ece"] == pytest.approx(0.35)
    assert m["loss"] == pytest.approx(-(2 * math.log(0.9) + 2 * math.log(0.4)) / 4)
    assert m["n"] == 4 and m["n_positive"] == 2 and m["threshold"] == 0.5


def test_hand_worked_mcc_and_balanced_accuracy() -> None:
    # calls [1, 1, 0, 0, 1] vs labels [1, 1, 1, 0, 0]: tp 2, fn 1, tn 1, fp 1.
    m = compute_metrics([1, 1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1, 0.7], 0.5)
    assert m["mcc"] == pytest.approx((2 * 1 - 1 * 1) / math.sqrt(3 * 3 * 2 * 2))
    assert m["specificity"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 0.5) / 2)


def test_threshold_moves_the_calls() -> None:
    m = compute_metrics(Y4, P4, 0.35)  # calls [0, 1, 1, 1]
    assert m["confusion_matrix"] == {"tn": 1, "fp": 1, "fn": 0, "tp": 2}
    assert m["recall"] == 1.0 and m["specificity"] == 0.5


def test_one_class_leaves_pair_metrics_undefined() -> None:
    m = compute_metrics([1, 1, 1], [0.2, 0.7, 0.9])
    assert m["roc_auc"] is None and m["pr_auc"] is None and m["balanced_accuracy"] is None
    assert m["ci"]["roc_auc"] is None and m["ci"]["accuracy"] is not None
    assert m["specificity"] == 0.0


def test_metrics_agree_with_sklearn_on_random_scores() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    p = np.round(np.clip(0.35 * y + 0.65 * rng.random(300), 0, 1), 2)  # rounded: many ties
    m = compute_metrics(y, p, 0.4)
    pred = (p >= 0.4).astype(int)
    assert m["mcc"] == pytest.approx(skm.matthews_corrcoef(y, pred))
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y, p))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    group = np.unique(p, return_inverse=True)[1]
    auc = _weighted_auc(y, group, int(group.max()) + 1, np.ones(300))
    assert auc == pytest.approx(skm.roc_auc_score(y, p))


def test_calibration_bins_and_perfect_calibration() -> None:
    bins = calibration_bins([0, 1, 1, 0], [0.05, 0.95, 1.0, 0.15], n_bins=10)
    assert bins["count"].tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0, 2]  # 1.0 goes in the last bin
    assert bins["frac_positive"][9] == 1.0 and math.isnan(bins["mean_prob"][5])
    # 10 images at 0.3 with 3 positives: calibrated exactly.
    assert expected_calibration_error([1, 1, 1] + [0] * 7, [0.3] * 10) == pytest.approx(0.0)


def test_bootstrap_ci_is_seeded_contains_the_estimate_and_shrinks_with_data() -> None:
    rng = np.random.default_rng(2)

    def data(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 2, n)
        return y, np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1)

    y, p = data(200)
    m = compute_metrics(y, p)
    ci = m["ci"]
    assert ci["n_resamples"] == 1000 and ci["level"] == 0.95
    for key in ("accuracy", "f1", "roc_auc"):
        lo, hi = ci[key]
        assert lo < m[key] < hi, key
    assert bootstrap_ci(y, p) == bootstrap_ci(y, p)  # same seed, same interval
    assert bootstrap_ci(y, p, seed=5) != bootstrap_ci(y, p)
    y_big, p_big = data(5000)
    big = bootstrap_ci(y_big, p_big, n_resamples=300)
    assert big["accuracy"][1] - big["accuracy"][0] < ci["accuracy"][1] - ci["accuracy"][0]
    assert "ci" not in compute_metrics(y, p, n_resamples=0)


# Constructed validation scores; candidate thresholds are the distinct scores.
#   t:      .1    .2    .4    .7    .8    .9
#   F1:    .667  .75   .857  .667  .8    .5
#   Youden: 0    .333  .667  .333  .667  .333   (tie .4/.8 -> the higher, .8)
#   recall: 1     1     1    .667  .667  .333
#   prec.:  .5   .6    .75   .667  1     1
VAL_Y = [0, 0, 0, 1, 1, 1]
VAL_P = [0.1, 0.2, 0.7, 0.4, 0.8, 0.9]


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("0.5", 0.5),
        ("0.3", 0.3),
        ("f1", 0.4),
        ("youden", 0.8),
        ("recall=0.95", 0.4),
        ("recall=0.6", 0.8),
        ("precision=0.9", 0.8),
        ("precision=0.7", 0.4),
        (" F1 ", 0.4),
    ],
)
def test_each_rule_picks_the_right_threshold(rule: str, expected: float) -> None:
    choice = threshold_choice(rule, VAL_Y, VAL_P)
    assert choice["value"] == pytest.approx(expected)
    assert choice["note"] is None and choice["rule"] == rule


def test_youden_without_ties() -> None:
    y = [0, 0, 0, 0, 1, 1, 1, 1]
    p = [0.1, 0.2, 0.55, 0.6, 0.5, 0.7, 0.8, 0.9]  # .7: TPR .75, FPR 0
    assert choose_threshold("youden", y, p) == pytest.approx(0.7)


def test_rule_uses_only_the_scores_it_is_given() -> None:
    """Chosen on validation: the test split's own optimum is a different threshold."""
    test_y = [0, 0, 0, 1, 1, 1]
    test_p = [0.1, 0.2, 0.3, 0.6, 0.65, 0.95]  # test's own F1 optimum: 0.6 (F1 = 1)
    assert choose_threshold("f1", test_y, test_p) == pytest.approx(0.6)
    assert choose_threshold("f1", VAL_Y, VAL_P) == pytest.approx(0.4)
    val_cut = choose_threshold("f1", VAL_Y, VAL_P)
    # 0.4 happens to separate the test scores too
    assert compute_metrics(test_y, test_p, val_cut)["f1"] == pytest.approx(1.0)
    assert compute_metrics(test_y, test_p, val_cut)["threshold"] == pytest.approx(0.4)


def test_unreachable_precision_falls_back_with_a_note() -> None:
    y = [1, 0, 1, 0]
    p = [0.2, 0.9, 0.4, 0.8]  # the top scores are negatives: best precision .5 at the lowest
    choice = threshold_choice("precision=0.9", y, p)
    assert choice["value"] == pytest.approx(0.2)
    assert "no threshold reaches precision 0.9" in choice["note"]


def test_one_class_validation_falls_back_to_half() -> None:
    choice = threshold_choice("f1", [1, 1], [0.3, 0.8])
    assert choice["value"] == 0.5 and "one class" in choice["note"]


def test_no_validation_images_is_a_data_error() -> None:
    with pytest.raises(DataError, match="needs validation images"):
        threshold_choice("youden", [], [])


@pytest.mark.parametrize(
    ("rule", "parsed"),
    [
        ("0.5", ("fixed", 0.5)),
        ("1", ("fixed", 1.0)),
        ("f1", ("f1", None)),
        ("Youden", ("youden", None)),
        ("recall=0.95", ("recall", 0.95)),
        ("precision = 0.9", ("precision", 0.9)),
    ],
)
def test_parse_rule(rule: str, parsed: tuple) -> None:
    assert parse_threshold_rule(rule) == parsed


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("f2", "must be a number in [0, 1] or one of f1, youden, recall=X, precision=X"),
        ("1.5", "got '1.5'"),
        ("nan", "got 'nan'"),
        ("recall=1.2", "needs a target in (0, 1]"),
        ("recall=", "needs a target in (0, 1]"),
        ("precision=0", "needs a target in (0, 1]"),
        ("specificity=0.9", "must be a number"),
    ],
)
def test_bad_rule_is_refused_by_the_config_before_training(rule: str, message: str) -> None:
    with pytest.raises(ConfigError, match="train.threshold") as err:
        load_config(None, [f"threshold={rule}"])
    assert message in str(err.value)


def test_good_rules_pass_the_config() -> None:
    assert load_config(None, ["threshold=recall=0.95"]).train.threshold == "recall=0.95"
    assert load_config(None, ["threshold=f1"]).train.threshold == "f1"
