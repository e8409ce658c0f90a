"""``l1cnn cv``: K-fold cross-validation, stratified and optionally grouped, as run folders.

Every fold is an ordinary run folder (``OUT/folds/fold-<i>``) trained by
:func:`l1cnn.train.train` with ``data.folds = K`` and ``data.fold = i``, so the fold's splits
are made (and recorded in its ``split.json``) by :func:`l1cnn.data.fold_splits`: the fold's
test split is fold *i* of train+val, its validation split (early stopping, threshold) is held
out of the other folds, and the source's own test split stays out of cross-validation. The
folder is resumable like a study's: a fold that finished with the same config is kept.

Across folds: ``results.csv`` (one row per fold), ``oof_predictions.csv`` (every image of
train+val scored once, by the fold that did not train on it), the mean and a 95% t-interval
of every metric (``cv.json``) and a page (:mod:`l1cnn.reporting.cv_report`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from l1cnn import runs, stats, study
from l1cnn.config import Config, config_from_dict
from l1cnn.errors import ConfigError, L1CNNError

DEFAULT_FOLDS = 5
FOLDS_DIR = "folds"
RESULTS_FILE = "results.csv"
OOF_FILE = "oof_predictions.csv"
CV_FILE = "cv.json"
# Metrics of each fold's held-out fold (its run's "test" split), summarized across folds.
METRICS = (
    "roc_auc",
    "pr_auc",
    "accuracy",
    "balanced_accuracy",
    "precision",
    "recall",
    "f1",
    "loss",
)
# Threshold-free metrics of the pooled out-of-fold predictions (valid whatever each fold's
# threshold); the threshold-dependent ones are pooled only when every fold used one threshold.
POOLED_ALWAYS = ("roc_auc", "pr_auc", "loss", "brier")


@dataclass(frozen=True)
class Fold:
    """One fold: its number (1..K), its config (data.folds, data.fold set) and run folder."""

    index: int
    config: Config
    run_dir: Path

    @property
    def name(self) -> str:
        return f"fold-{self.index}"


@dataclass
class CVResult:
    """What :func:`run_cv` did; the rows are also in ``results.csv``."""

    out: Path
    folds: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    summaries: dict[str, stats.Summary] = field(default_factory=dict)
    pooled: dict[str, Any] = field(default_factory=dict)  # metrics of all OOF predictions
    trained: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def plan_folds(base: Config, out: Path) -> list[Fold]:
    """The K folds of ``base`` (``base.data.folds`` K, default :data:`DEFAULT_FOLDS`)."""
    if base.data.fold is not None:
        raise ConfigError("cv trains every fold itself: leave out --fold (data.fold)")
    k = base.data.folds or DEFAULT_FOLDS
    return [
        Fold(
            i,
            config_from_dict({"data": {"folds": k, "fold": i}}, base=base),
            out / FOLDS_DIR / f"fold-{i}",
        )
        for i in range(1, k + 1)
    ]


def is_finished(fold: Fold) -> bool:
    """True when the fold's folder holds a final status, metrics, a model and the fold's config."""
    trial = study.Trial(fold.name, fold.config.train.seed, fold.config, fold.run_dir)
    if not study.is_finished(trial):
        return False
    saved = runs.read_run_config(fold.run_dir).data
    want = fold.config.data
    keys = ("folds", "fold", "groups", "group_pattern", "val_fraction")
    return all(getattr(saved, k) == getattr(want, k) for k in keys)


def fold_row(fold: Fold, out: Path) -> dict[str, Any]:
    """One row of ``results.csv``: the fold's held-out metrics (its run's test split)."""
    info = runs.read_json(fold.run_dir / runs.RUN_FILE)
    metrics = runs.read_json(fold.run_dir / runs.METRICS_FILE)
    held = metrics["test"]
    row: dict[str, Any] = {
        "configuration": fold.name,  # the HParams dashboard's session name
        "fold": fold.index,
        "seed": fold.config.train.seed,
        "l1_lambda": fold.config.model.l1_lambda,
        "l1_mode": fold.config.model.l1_mode,
        "dropout_rate": fold.config.model.dropout_rate,
        "early_stopping": fold.config.train.early_stopping,
        "status": info.get("status"),
        "epochs_run": info.get("epochs_run"),
        "best_epoch": info.get("best_epoch"),
        "n_test": held.get("n"),
        "threshold": metrics.get("threshold", {}).get("value"),
    }
    for name in METRICS:
        row[f"test_{name}"] = held.get(name)
    row["val_loss"] = metrics["val"]["loss"]
    row["train_accuracy"] = metrics["train"]["accuracy"]
    row["collapsed"] = bool(metrics.get("diagnosis", {}).get("collapsed", False))
    row["wall_time_s"] = info.get("wall_time_s")
    row["run_dir"] = str(fold.run_dir.relative_to(out))
    return row


def summarize_rows(rows: list[dict[str, Any]]) -> dict[str, stats.Summary]:
    """Mean, sd and 95% t-interval across folds of every held-out metric (and epochs run)."""
    columns = [f"test_{m}" for m in METRICS] + ["epochs_run"]
    return {c: stats.summarize([r.get(c) for r in rows]) for c in columns}


def oof_rows(folds: list[Fold], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Out-of-fold predictions: each finished fold's test rows, with the fold and its decision."""
    thresholds = {r["fold"]: r["threshold"] for r in rows}
    out = []
    for fold in folds:
        if fold.index not in thresholds:
            continue
        threshold = float(thresholds[fold.index])
        for pred in runs.read_csv(fold.run_dir / runs.PREDICTIONS_FILE):
            if pred["split"] != "test":
                continue
            probability = float(pred["probability"])
            out.append(
                {
                    "fold": fold.index,
                    "id": pred["id"],
                    "label": int(pred["label"]),
                    "probability": pred["probability"],
                    "predicted": int(probability >= threshold),
                }
            )
    return out


def pooled_metrics(oof: list[dict[str, Any]], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Metrics of all out-of-fold predictions together (bootstrap intervals as a run's)."""
    from l1cnn.evaluate import compute_metrics

    if not oof:
        return {}
    labels = [r["label"] for r in oof]
    probs = [float(r["probability"]) for r in oof]
    thresholds = {float(r["threshold"]) for r in rows}
    one = len(thresholds) == 1
    metrics = compute_metrics(labels, probs, thresholds.pop() if one else 0.5)
    if not one:  # each fold chose its own threshold on its validation split
        metrics = {k: v for k, v in metrics.items() if k in (*POOLED_ALWAYS, "n", "n_positive")}
        metrics["ci"] = {}
    metrics["same_threshold"] = one
    return metrics


def _finite(value: float) -> float | None:
    """``value``, or None for NaN (JSON has no NaN)."""
    return None if value != value else value


def run_cv(
    source: str | Path,
    base: Config,
    out: str | Path,
    jobs: int = 1,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    train_missing: bool = True,
    command: list[str] | None = None,
) -> CVResult:
    """Run (or resume) K-fold cross-validation and write its results, OOF predictions and page.

    Args:
        source: the data, as for :func:`l1cnn.train.train`.
        base: the config of every fold; ``data.folds`` is K (default 5), ``data.groups`` or
            ``data.group_pattern`` make the folds by group.
        out: the cv folder; folds go to ``out/folds/fold-<i>``.
        jobs: folds trained at once, each in its own process.
        on_progress: as :func:`l1cnn.study.run_study`'s (``trial`` is the fold's name).
        train_missing: False writes the results from finished folds only.
        command: the command line, recorded in each run and in ``cv.json``.

    Returns:
        A CVResult.

    Raises:
        ConfigError, DataError, RunError: bad input (folds, groups), found before anything
            is written.
    """
    from l1cnn.data import load_data

    out = Path(out)
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    folds = plan_folds(base, out)
    # Make fold 1 before any folder exists: too many folds, a bad groups file or a pattern
    # that matches nothing fails here. The fingerprint of the fold covers all of train+val.
    data = load_data(source, folds[0].config.data, base.train.seed)
    fingerprint = data.fingerprint()
    study.open_results_folder(
        out, source, fingerprint, CV_FILE, FOLDS_DIR, "cv", "cross-validation"
    )
    k = len(folds)
    d = base.data
    runs.write_json(
        out / CV_FILE,
        {
            "source": str(source),
            "fingerprint": fingerprint,
            "folds": k,
            "seed": base.train.seed,
            "groups": d.groups,
            "group_pattern": d.group_pattern,
            # What became of the source's own test split (held out of every fold), if any.
            "source_test_split": data.split_origin["test"].partition("; ")[2] or None,
            "command": command,
            "versions": runs.library_versions(),
        },
    )
    result = CVResult(out, k)
    todo = [f for f in folds if not is_finished(f)]
    result.skipped = [f.name for f in folds if f not in todo]
    trials = [study.Trial(f.name, f.config.train.seed, f.config, f.run_dir) for f in todo]
    if train_missing and trials:
        if on_progress is not None:
            on_progress({"done": k - len(todo), "total": k, "trial": None})
        holder = study.StudyResult(out, [], "")
        try:
            study.train_trials(str(source), trials, jobs, holder, on_progress, k, command or [])
        except KeyboardInterrupt:
            result.trained = holder.trained
            finish(folds, result)
            raise
        result.trained = holder.trained
    return finish(folds, result)


def finish(folds: list[Fold], result: CVResult) -> CVResult:
    """Collect the finished folds and write ``results.csv``, OOF predictions and the page."""
    from l1cnn.reporting.cv_report import write_cv_report

    out = result.out
    rows = []
    for fold in folds:
        try:
            finished = is_finished(fold)
        except L1CNNError:
            finished = False
        if finished:
            rows.append(fold_row(fold, out))
        elif fold.name in result.trained:
            result.failed.append(fold.name)
    result.rows = rows
    result.summaries = summarize_rows(rows)
    oof = oof_rows(folds, rows)
    result.pooled = pooled_metrics(oof, rows)
    if rows:
        runs.write_csv(out / RESULTS_FILE, rows, study.results_fields(rows))
        runs.write_csv(out / OOF_FILE, oof, ["fold", "id", "label", "probability", "predicted"])
    info = runs.read_json(out / CV_FILE)
    info["finished_folds"] = [r["fold"] for r in rows]
    info["summary"] = {
        name: {k: _finite(getattr(s, k)) for k in ("n", "mean", "sd", "ci_low", "ci_high")}
        for name, s in result.summaries.items()
    }
    info["pooled_oof"] = result.pooled
    runs.write_json(out / CV_FILE, info)
    write_cv_report(out, rows, result.summaries, result.pooled, info)
    if rows and folds[0].config.train.tensorboard:  # HParams dashboard: folds side by side
        from l1cnn.tensorboard_log import TENSORBOARD_DIR, write_hparams

        write_hparams(out / TENSORBOARD_DIR, rows)
    return result
