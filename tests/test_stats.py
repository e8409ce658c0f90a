"""l1cnn.stats on constructed results: known means, sds, t-intervals and paired differences."""

from __future__ import annotations

import math

import pytest

from l1cnn import stats


def test_summarize_matches_hand_computed_t_interval() -> None:
    s = stats.summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s.n == 5
    assert s.mean == pytest.approx(3.0)
    assert s.sd == pytest.approx(math.sqrt(2.5))
    # t(0.975, df=4) = 2.776445; half width = t * sd / sqrt(n)
    half = 2.776445 * math.sqrt(2.5) / math.sqrt(5)
    assert s.ci_low == pytest.approx(3.0 - half, abs=1e-5)
    assert s.ci_high == pytest.approx(3.0 + half, abs=1e-5)
    assert s.half_width == pytest.approx(half, abs=1e-5)


def test_summarize_two_values_uses_the_wide_t_quantile() -> None:
    s = stats.summarize([0.8, 0.9])
    # t(0.975, df=1) = 12.7062: two seeds give a very wide interval, honestly.
    half = 12.7062 * s.sd / math.sqrt(2)
    assert s.sd == pytest.approx(0.0707107, abs=1e-6)
    assert (s.ci_low, s.ci_high) == pytest.approx((0.85 - half, 0.85 + half), abs=1e-4)


def test_summarize_other_confidence_level() -> None:
    s = stats.summarize([1.0, 2.0, 3.0, 4.0, 5.0], confidence=0.90)
    half = 2.131847 * math.sqrt(2.5) / math.sqrt(5)  # t(0.95, df=4)
    assert s.half_width == pytest.approx(half, abs=1e-5)


def test_summarize_ignores_missing_values_and_handles_tiny_samples() -> None:
    s = stats.summarize([2.0, None, float("nan"), 4.0])  # type: ignore[list-item]
    assert (s.n, s.mean) == (2, 3.0)
    one = stats.summarize([0.7])
    assert one.n == 1 and one.mean == 0.7
    assert math.isnan(one.sd) and math.isnan(one.ci_low) and math.isnan(one.ci_high)
    none = stats.summarize([])
    assert none.n == 0 and math.isnan(none.mean)


def test_paired_difference_pairs_by_seed_and_drops_unpaired_seeds() -> None:
    values = {1: 0.80, 2: 0.95, 3: 0.70}
    reference = {1: 0.75, 2: 0.90, 3: 0.65, 4: 0.10}  # seed 4 has no partner: left out
    diff = stats.paired_difference(values, reference)
    assert diff.n == 3
    assert diff.mean == pytest.approx(0.05)
    assert diff.sd == pytest.approx(0.0, abs=1e-12)
    assert (diff.ci_low, diff.ci_high) == pytest.approx((0.05, 0.05))


def test_pairing_removes_the_shared_seed_spread() -> None:
    # Seeds differ a lot, but the configuration is always 0.02 above the reference (+-0.005):
    # unpaired intervals overlap, the paired one excludes zero.
    reference = {1: 0.60, 2: 0.80, 3: 0.70, 4: 0.90}
    values = {1: 0.625, 2: 0.815, 3: 0.725, 4: 0.915}
    a, b = stats.summarize(list(values.values())), stats.summarize(list(reference.values()))
    assert a.ci_low < b.ci_high  # the separate intervals overlap
    diff = stats.paired_difference(values, reference)
    assert diff.mean == pytest.approx(0.02)
    assert diff.sd == pytest.approx(0.005 * math.sqrt(4 / 3))  # diffs 0.025, 0.015, 0.025, 0.015
    assert diff.ci_low > 0
    assert stats.classify(diff) == stats.BETTER


def test_paired_difference_known_interval() -> None:
    values = {10: 1.0, 11: 2.0, 12: 3.0}
    reference = {10: 0.0, 11: 0.0, 12: 0.0}
    diff = stats.paired_difference(values, reference)
    half = 4.302653 * 1.0 / math.sqrt(3)  # t(0.975, df=2), sd of [1, 2, 3] is 1
    assert diff.mean == pytest.approx(2.0)
    assert (diff.ci_low, diff.ci_high) == pytest.approx((2.0 - half, 2.0 + half), abs=1e-5)


def test_paired_difference_skips_missing_values() -> None:
    diff = stats.paired_difference({1: 0.5, 2: None, 3: 0.7}, {1: 0.4, 2: 0.4, 3: 0.6})
    assert diff.n == 2 and diff.mean == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("diffs", "higher_is_better", "expected"),
    [
        ([0.05, 0.06, 0.04], True, stats.BETTER),
        ([0.05, 0.06, 0.04], False, stats.WORSE),  # e.g. a larger generalization gap
        ([-0.05, -0.06, -0.04], True, stats.WORSE),
        ([-0.05, -0.06, -0.04], False, stats.BETTER),
        ([0.05, -0.04, 0.01], True, stats.NO_DIFFERENCE),
        ([0.05], True, stats.TOO_FEW),
        ([0.0, 0.0, 0.0], True, stats.NO_DIFFERENCE),  # identical: interval [0, 0] touches zero
    ],
)
def test_classify_rules(diffs: list[float], higher_is_better: bool, expected: str) -> None:
    diff = stats.paired_difference(dict(enumerate(diffs)), dict.fromkeys(range(len(diffs)), 0.0))
    assert stats.classify(diff, higher_is_better) == expected
