"""Issue 15 figures: calibration before/after temperature scaling and conformal "refer" rates.

Reads calibrated run folders (``l1cnn calibrate RUN`` done) from their ``predictions.csv``
alone (no TensorFlow) and prints Markdown tables: per run, test ECE / Brier / log loss before
and after with 95% bootstrap intervals over test images (1000 resamples, seed 0); and for
coverage 0.90 / 0.95 / 0.99 the empirical test coverage, share referred and accuracy on the
rest (95% Wilson intervals), calibrated on the run's validation predictions.

    python benchmarks/calibration_figures.py RUN [RUN ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from l1cnn import runs
from l1cnn.calibration import abstain_report, calibration_scores, conformal_threshold


def _load(run: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    rows = runs.read_csv(run / runs.PREDICTIONS_FILE)
    out = {}
    for split in ("val", "test"):
        chosen = [r for r in rows if r["split"] == split]
        out[split] = (
            np.array([int(r["label"]) for r in chosen]),
            np.array([float(r[runs.UNCALIBRATED_FIELD]) for r in chosen]),
            np.array([float(r["probability"]) for r in chosen]),
        )
    return out


def _boot(labels: np.ndarray, probs: np.ndarray, n: int = 1000) -> dict[str, list[float]]:
    rng = np.random.default_rng(0)
    draws = {"ece": [], "brier": [], "log_loss": []}
    for _ in range(n):
        i = rng.integers(0, labels.size, labels.size)
        for k, v in calibration_scores(labels[i], probs[i]).items():
            draws[k].append(v)
    return {
        k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for k, v in draws.items()
    }


def main(paths: list[str]) -> None:
    print("| run | T | test | before [95% CI] | after [95% CI] |")
    print("|---|---|---|---|---|")
    conformal = []
    for path in map(Path, paths):
        pred = _load(path)
        t = json.loads((path / runs.CALIBRATION_FILE).read_text())["temperature"]
        y, raw, cal = pred["test"]
        before, after = calibration_scores(y, raw), calibration_scores(y, cal)
        bb, ba = _boot(y, raw), _boot(y, cal)
        for k in ("ece", "brier", "log_loss"):
            print(
                f"| {path.name} | {t:.3f} | {k} | {before[k]:.3f} [{bb[k][0]:.3f}, {bb[k][1]:.3f}]"
                f" | {after[k]:.3f} [{ba[k][0]:.3f}, {ba[k][1]:.3f}] |"
            )
        for which, col in (("uncalibrated", 1), ("calibrated", 2)):
            for c in (0.90, 0.95, 0.99):
                q = conformal_threshold(pred["val"][0], pred["val"][col], c)
                conformal.append((path.name, which, c, abstain_report(y, pred["test"][col], q, c)))
    print()
    print(
        "| run | probabilities | target | test coverage [95% CI] | referred [95% CI] "
        "| accuracy on the rest [95% CI] (n) |"
    )
    print("|---|---|---|---|---|---|")

    def f(r: dict, key: str) -> str:
        v, ci = r[key], r[f"{key}_ci"]
        return "n/a" if v is None else f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"

    for name, which, c, r in conformal:
        print(
            f"| {name} | {which} | {c:.2f} | {f(r, 'coverage')} | {f(r, 'referred')} | "
            f"{f(r, 'accuracy_decided')} ({r['n_decided']}) |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
