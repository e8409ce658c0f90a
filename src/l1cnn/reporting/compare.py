"""``l1cnn compare``: one page with several runs side by side (config differences, test metrics,
learning and ROC curves), drawn from their plain files."""

from __future__ import annotations

import html
import json
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from l1cnn.errors import RunError
from l1cnn.evaluate import roc_points
from l1cnn.reporting.figures import COLORS, Plot, integer_ticks, new_figure, png_bytes, style_axes
from l1cnn.reporting.page import figure_grid, heading, html_table, num, section, write_page
from l1cnn.reporting.run_files import (
    RunFiles,
    both_classes,
    column,
    operating_point,
    read_run_files,
)
from l1cnn.reporting.run_report import METRICS, plot_html, value_with_ci


def _flat_config(text: str) -> dict[str, Any]:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return {}
    return {
        f"{s}.{k}": v
        for s, values in raw.items()
        if isinstance(values, dict)
        for k, v in values.items()
    }


def config_differences(runs_: Sequence[RunFiles]) -> list[list[str]]:
    """Config keys whose values differ between runs: ``[key, value per run...]``."""
    flats = [_flat_config(r.config_text) for r in runs_]
    keys = sorted({k for f in flats for k in f})
    rows = []
    for key in keys:
        values = [json.dumps(f.get(key)) if key in f else "-" for f in flats]
        if len(set(values)) > 1:
            rows.append([key, *values])
    return rows


def plot_compare_learning(runs_: Sequence[RunFiles], labels: Sequence[str]) -> Plot:
    """Validation loss and accuracy per epoch, one line per run."""
    fig = new_figure(11, 3.8)
    axes = fig.subplots(1, 2)
    for r, label, color in zip(runs_, labels, COLORS * 8, strict=False):
        epochs = column(r.history, "epoch")
        axes[0].plot(epochs, column(r.history, "val_loss"), color=color, marker=".", label=label)
        axes[0].plot(epochs, column(r.history, "loss"), color=color, linestyle=":", alpha=0.7)
        axes[1].plot(
            epochs, column(r.history, "val_accuracy"), color=color, marker=".", label=label
        )
        axes[1].plot(epochs, column(r.history, "accuracy"), color=color, linestyle=":", alpha=0.7)
    for ax, title in zip(axes, ("Loss", "Accuracy"), strict=True):
        ax.set_title(f"{title} (solid: validation, dotted: train)")
        ax.set_xlabel("epoch")
        style_axes(ax)
        integer_ticks(ax)
        ax.legend(fontsize=8, frameon=False)
    return Plot(
        "compare_learning",
        "Learning curves",
        "Validation (solid) and training (dotted) loss and accuracy per epoch for each run.",
        png_bytes(fig),
    )


def plot_compare_roc(runs_: Sequence[RunFiles], labels: Sequence[str]) -> Plot:
    """Test ROC curves of every run (from predictions.csv), with operating points."""
    fig = new_figure(5.6, 4.4)
    ax = fig.subplots()
    for r, label, color in zip(runs_, labels, COLORS * 8, strict=False):
        y, p = r.predictions["test"]
        if both_classes(y):
            pts = roc_points(y, p)
            auc = r.metrics["test"].get("roc_auc")
            ax.plot(pts["fpr"], pts["tpr"], color=color, label=f"{label} (AUC {num(auc)})")
            fpr, tpr, _, _ = operating_point(r.metrics["test"])
            ax.plot([fpr], [tpr], "o", color=color)
    ax.plot([0, 1], [0, 1], color="#bbbbbb", linestyle="--", linewidth=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC curves (test; dots: each run's threshold)")
    style_axes(ax)
    ax.legend(fontsize=8, loc="lower right", frameon=False)
    return Plot(
        "compare_roc",
        "ROC curves",
        "Test ROC curves of each run from its predictions.csv; the dot is the run's own threshold.",
        png_bytes(fig),
    )


def comparison_rows(runs_: Sequence[RunFiles]) -> list[list[str]]:
    """Test metrics (with intervals), threshold, status, epochs, data and seed, one column a run."""
    rows = [
        [label, *[value_with_ci(r.metrics["test"], key) for r in runs_]]
        for key, label, _ in METRICS
    ]
    return rows + [
        [
            "threshold (rule)",
            *[f"{r.threshold:.4g} ({r.metrics['threshold'].get('rule')})" for r in runs_],
        ],
        ["status", *[str(r.info.get("status")) for r in runs_]],
        [
            "epochs run / best",
            *[f"{r.info.get('epochs_run')} / {r.info.get('best_epoch')}" for r in runs_],
        ],
        ["data", *[str(r.data.get("name")) for r in runs_]],
        ["seed", *[str(r.info.get("seed")) for r in runs_]],
    ]


def write_comparison(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Write one self-contained HTML page comparing runs side by side.

    Args:
        run_dirs: two or more run folders.
        out: the HTML file to write.

    Returns:
        ``out`` as a Path.

    Raises:
        RunError: fewer than two runs, a folder that is not a run, or ``out`` cannot be written.
    """
    if len(run_dirs) < 2:
        raise RunError("compare needs at least two run folders")
    runs_ = [read_run_files(d) for d in run_dirs]
    labels = [r.name for r in runs_]
    if len(set(labels)) < len(labels):
        labels = [str(r.path) for r in runs_]
    out = Path(out)
    if not out.parent.exists():
        raise RunError(f"cannot write '{out}': folder '{out.parent}' does not exist")
    diff = config_differences(runs_)
    plots = [plot_compare_learning(runs_, labels), plot_compare_roc(runs_, labels)]
    parts = [
        heading(
            f"l1cnn: {len(runs_)} runs compared", html.escape(", ".join(str(r.path) for r in runs_))
        ),
        section(
            "Config differences",
            html_table(["config key", *labels], diff)
            if diff
            else "<p>The runs have the same config.</p>",
        ),
        section(
            "Test metrics",
            html_table(["metric", *labels], comparison_rows(runs_), range(1, len(runs_) + 1)),
            sub="Each at its run's own threshold; brackets are 95% bootstrap intervals.",
        ),
        section("Curves", figure_grid(plot_html(p) for p in plots)),
    ]
    return write_page(out, "l1cnn compare", parts)
