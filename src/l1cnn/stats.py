"""Statistics over seeds for ``l1cnn study``: mean, sd, t-intervals, paired differences, verdicts.

Pure NumPy/SciPy on plain numbers, so every figure the study reports can be checked on
constructed results without training anything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

CONFIDENCE = 0.95

# Verdict words for a paired difference (configuration minus reference).
BETTER, WORSE, NO_DIFFERENCE, TOO_FEW = "better", "worse", "no clear difference", "too few seeds"


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation and a t-interval for the mean of ``n`` values."""

    n: int
    mean: float
    sd: float  # ddof=1; NaN when n < 2
    ci_low: float  # NaN when n < 2
    ci_high: float

    @property
    def half_width(self) -> float:
        """Half the interval's width (NaN when undefined)."""
        return (self.ci_high - self.ci_low) / 2


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> Summary:
    """Mean, sd and a two-sided t-interval for the mean, ignoring NaN/None values.

    Args:
        values: one number per seed.
        confidence: the interval's coverage (0.95: a 95% interval).

    Returns:
        A Summary; with fewer than 2 values sd and the interval are NaN, with none all are NaN.
    """
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    n = int(arr.size)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(arr.mean())
    if n < 2:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    sd = float(arr.std(ddof=1))
    half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return Summary(n, mean, sd, mean - half, mean + half)


def paired_difference(
    values: Mapping[int, float | None],
    reference: Mapping[int, float | None],
    confidence: float = CONFIDENCE,
) -> Summary:
    """Summary of ``values[seed] - reference[seed]`` over the seeds both have (a paired t-interval).

    Pairing by seed removes the seed-to-seed spread the two share (same split, same start).

    Args:
        values: seed -> metric of one configuration.
        reference: seed -> metric of the reference configuration (the specified model).
        confidence: the interval's coverage.

    Returns:
        The Summary of the differences.
    """
    diffs = []
    for seed in sorted(set(values) & set(reference)):
        a, b = values[seed], reference[seed]
        if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
            continue
        diffs.append(a - b)
    return summarize(diffs, confidence)


def classify(diff: Summary, higher_is_better: bool = True) -> str:
    """Verdict of a paired difference: better, worse, or no clear difference.

    The rule: "better" or "worse" only when the whole confidence interval of the difference
    lies on one side of zero; otherwise the effect is within the seed-to-seed spread.

    Args:
        diff: a paired-difference Summary (configuration minus reference).
        higher_is_better: True for accuracy or ROC-AUC, False for a loss or a gap.

    Returns:
        One of ``better``, ``worse``, ``no clear difference`` or ``too few seeds``.
    """
    if diff.n < 2 or not math.isfinite(diff.ci_low):
        return TOO_FEW
    if diff.ci_low > 0:
        return BETTER if higher_is_better else WORSE
    if diff.ci_high < 0:
        return WORSE if higher_is_better else BETTER
    return NO_DIFFERENCE
