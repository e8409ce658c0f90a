"""The study report (l1cnn.reporting) on constructed results rows: statistics, verdict, files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from l1cnn import stats
from l1cnn.reporting import study_plots, study_stats, write_study_report
from l1cnn.runs import read_csv, write_csv

SEEDS = (42, 43, 44)
SPEC = {
    "l1_lambda": 0.01,
    "l1_mode": "penalty",
    "dropout_rate": 0.5,
    "early_stopping": True,
    "epochs": 100,
}


def _row(
    name: str, seed: int, auc: float, gap: float, collapsed: bool = False, **settings: Any
) -> dict[str, Any]:
    row = {
        "configuration": name,
        **SPEC,
        **settings,
        "seed": seed,
        "epochs_run": 10,
        "test_roc_auc": auc,
        "test_accuracy": auc - 0.1,
        "test_f1": auc - 0.15,
        "gap_accuracy": gap,
        "gap_loss": gap / 2,
        "exact_zero_all": 0.0,
        "near_zero_all": settings.get("l1_lambda", 0.01) * 10,
        "collapsed": collapsed,
    }
    return row


def constructed_rows() -> list[dict[str, Any]]:
    """spec; no L1 always +0.05 AUC (L1 hurt); no dropout +-0.01 around spec (no difference);
    l1=0.001 (a sweep value); no ES with a clearly larger gap."""
    rows = []
    for i, seed in enumerate(SEEDS):
        base = 0.80 + 0.05 * i  # a large seed-to-seed spread, shared by all configurations
        rows.append(_row("spec", seed, base, 0.02))
        rows.append(_row("no-l1", seed, base + 0.05 + 0.001 * i, 0.03, l1_lambda=0.0))
        rows.append(
            _row("no-dropout", seed, base + (0.01, -0.01, 0.002)[i], 0.02, dropout_rate=0.0)
        )
        rows.append(_row("l1=0.001", seed, base + 0.02, 0.02, l1_lambda=0.001))
        rows.append(
            _row(
                "no-es",
                seed,
                base,
                0.10 + 0.01 * i,
                early_stopping=False,
                epochs=20,
                collapsed=seed == 44,
            )
        )
    return rows


def test_configuration_stats_means_intervals_and_paired_differences() -> None:
    table = {c.name: c for c in study_stats.configuration_stats(constructed_rows(), "spec")}
    assert list(table) == ["spec", "no-l1", "no-dropout", "l1=0.001", "no-es"]
    spec = table["spec"]
    assert spec.seeds == list(SEEDS)
    assert spec.summaries["test_roc_auc"].mean == pytest.approx(0.85)
    assert spec.summaries["test_roc_auc"].sd == pytest.approx(0.05)
    assert spec.differences == {}  # the reference is not compared with itself
    no_l1 = table["no-l1"]
    assert no_l1.differences["test_roc_auc"].mean == pytest.approx(0.051)
    assert no_l1.differences["test_roc_auc"].ci_low > 0  # paired: the seed spread cancels
    assert no_l1.verdicts["test_roc_auc"] == stats.BETTER
    assert table["no-dropout"].verdicts["test_roc_auc"] == stats.NO_DIFFERENCE
    # a larger gap is worse (lower is better for gaps)
    assert table["no-es"].verdicts["gap_accuracy"] == stats.WORSE
    assert table["no-es"].collapsed == 1


def test_verdict_is_generated_from_the_rules() -> None:
    text = study_stats.verdict(constructed_rows(), "spec")
    assert "Turning L1 off ('no-l1') changed test ROC-AUC by +0.051" in text
    assert "so L1 hurt on this metric" in text
    assert "so dropout made no difference beyond the seed-to-seed spread" in text
    assert "so early stopping made no difference" in text
    assert "the train-test accuracy gap was larger" in text  # no-es
    assert "Clearly better test ROC-AUC than the specified model: 'no-l1' (without L1" in text
    assert "'l1=0.001' (l1_lambda=0.001" in text
    assert "'no-es' (1 of 3)" in text  # the collapsed trial is named


def test_verdict_with_one_seed_says_nothing_can_be_concluded() -> None:
    rows = [r for r in constructed_rows() if r["seed"] == 42]
    text = study_stats.verdict(rows, "spec")
    assert "nothing can be concluded" in text
    assert "could not be judged (too few seeds)" in text
    assert "Clearly" not in text


def test_verdict_without_reference_trials() -> None:
    rows = [r for r in constructed_rows() if r["configuration"] != "spec"]
    text = study_stats.verdict(rows, "spec")
    assert text.startswith("No verdict")


def test_describe_change_names_each_difference() -> None:
    describe = study_stats.describe_change
    assert describe({**SPEC, "l1_lambda": 0.0}, SPEC) == "without L1"
    assert describe({**SPEC, "l1_lambda": 1e-4}, SPEC) == "l1_lambda=0.0001"
    assert describe({**SPEC, "dropout_rate": 0.25, "l1_mode": "proximal"}, SPEC) == (
        "l1_mode=proximal, dropout_rate=0.25"
    )
    assert describe({**SPEC, "early_stopping": False, "epochs": 20}, SPEC) == (
        "without early stopping (20 fixed epochs)"
    )


def test_rows_read_back_from_csv_give_the_same_statistics(tmp_path: Path) -> None:
    rows = constructed_rows()
    write_csv(tmp_path / "results.csv", rows, list(rows[0]))
    again = read_csv(tmp_path / "results.csv")  # every value is a string now
    a = study_stats.configuration_stats(rows, "spec")
    b = study_stats.configuration_stats(again, "spec")
    for x, y in zip(a, b, strict=True):
        assert x.settings == y.settings
        assert x.collapsed == y.collapsed
        assert x.summaries["test_roc_auc"] == y.summaries["test_roc_auc"]


def test_write_report_writes_markdown_html_and_plots(tmp_path: Path) -> None:
    curves = {
        "spec": [
            {"epoch": "1", "data_loss": "0.7", "val_data_loss": "0.69"},
            {"epoch": "2", "data_loss": "0.6", "val_data_loss": "0.65"},
        ]
    }
    meta = {
        "source": "x.npz",
        "preset": "custom",
        "seed_list": list(SEEDS),
        "epochs_without_early_stopping": 20,
        "finished": 15,
        "planned": 15,
    }
    files = write_study_report(tmp_path, constructed_rows(), "spec", curves, meta)
    names = sorted(p.name for p in files)
    assert names == ["curves.png", "l1_sweep.png", "metrics.png", "study.html", "summary.md"]
    for png in ("curves.png", "l1_sweep.png", "metrics.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "summary.md").read_text()
    assert "| spec | specified model | 3 | 0.850 ± 0.050 [" in md
    assert "| no-l1 | +0.051 [" in md
    # sparsity table: exact zeros, |w| < 1e-3, epochs run
    assert "| spec | 0.000 ± 0.000 [0.000, 0.000] | 0.100 ± 0.000 [0.100, 0.100] | 10.0 ± 0.0" in md
    assert "seeds 42, 43, 44" in md and "Finished trials: 15 of 15." in md
    assert "![l1_sweep.png](l1_sweep.png)" in md
    page = (tmp_path / "study.html").read_text()
    assert "<table>" in page and '<img src="metrics.png"' in page and "so L1 hurt" in page
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_l1_plot_needs_two_lambda_values(tmp_path: Path) -> None:
    rows = [r for r in constructed_rows() if r["configuration"] in ("spec", "no-dropout")]
    table = study_stats.configuration_stats(rows, "spec")
    assert not study_plots.plot_l1(table, "spec", tmp_path / "l1.png")
    assert not (tmp_path / "l1.png").exists()
    series = study_stats.l1_series(
        study_stats.configuration_stats(constructed_rows(), "spec"), "spec"
    )
    assert [c.name for c in series] == ["no-l1", "l1=0.001", "spec"]  # sorted by l1_lambda


def test_verdict_names_the_best_l1_lambda() -> None:
    text = study_stats.verdict(constructed_rows(), "spec")
    assert (
        "l1_lambda=0 ('no-l1') gave the highest mean test ROC-AUC (0.901 ± 0.051 [0.774, 1.028])"
    ) in text


def test_verdict_rejudges_techniques_when_the_specified_model_collapsed() -> None:
    rows = []
    for i, seed in enumerate(SEEDS):
        base = 0.90 + 0.02 * i
        rows.append(_row("spec", seed, 0.5, 0.0, collapsed=True))
        rows.append(_row("spec-no-dropout", seed, 0.5, 0.0, collapsed=True, dropout_rate=0.0))
        rows.append(_row("no-l1", seed, base, 0.05, l1_lambda=0.0))
        # without L1, dropout off is always 0.03 worse: dropout helped (among working models)
        rows.append(
            _row(
                "no-l1-no-dropout",
                seed,
                base - 0.03 - 0.001 * i,
                0.08,
                l1_lambda=0.0,
                dropout_rate=0.0,
            )
        )
        rows.append(
            _row(
                "no-l1-no-es",
                seed,
                base + (0.01, -0.01, 0.0)[i],
                0.06,
                l1_lambda=0.0,
                early_stopping=False,
                epochs=20,
            )
        )
    text = study_stats.verdict(rows, "spec")
    assert "so dropout made no difference beyond the seed-to-seed spread" in text  # vs spec
    assert "The specified model collapsed on every seed" in text
    after = text.split("Judged instead against 'no-l1'")[1]
    assert "Turning dropout off ('no-l1-no-dropout') changed test ROC-AUC by -0.031" in after
    assert "so dropout helped on this metric" in after
    assert "so early stopping made no difference beyond the seed-to-seed spread" in after
