"""The study's plots: per-configuration intervals, the ``l1_lambda`` sweep, learning curves.

Drawn with matplotlib's object API (no pyplot) and written atomically as PNG files beside
``study.html``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from l1cnn.reporting.figures import colormap, new_figure, png_bytes
from l1cnn.reporting.page import write_file
from l1cnn.reporting.study_stats import ConfigStats, l1_series

STUDY_DPI = 90


def _save(fig: Any, path: Path) -> None:
    """Lay the figure out tightly and write it as PNG, atomically."""
    fig.tight_layout()
    write_file(path, png_bytes(fig, STUDY_DPI))


def _errorbars(ax: Any, table: list[ConfigStats], column: str, title: str, reference: str) -> None:
    names = [c.name for c in table]
    means = [c.summaries[column].mean for c in table]
    half = [c.summaries[column].half_width if c.summaries[column].n > 1 else 0.0 for c in table]
    ys = list(range(len(table)))
    colors = ["tab:red" if n == reference else "tab:blue" for n in names]
    ax.errorbar(means, ys, xerr=half, fmt="none", ecolor="gray", capsize=3)
    ax.scatter(means, ys, c=colors, zorder=3)
    ax.set_yticks(ys, names)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)


def plot_metrics(table: list[ConfigStats], reference: str, path: Path) -> None:
    """Test ROC-AUC and the train-test accuracy gap per configuration, with 95% intervals."""
    fig = new_figure(10, 0.35 * len(table) + 1.5, layout=None)
    axes = fig.subplots(1, 2, sharey=True)
    _errorbars(axes[0], table, "test_roc_auc", "test ROC-AUC (mean, 95% CI)", reference)
    _errorbars(axes[1], table, "gap_accuracy", "train - test accuracy (mean, 95% CI)", reference)
    axes[1].axvline(0, color="black", lw=0.8)
    axes[0].invert_yaxis()  # the axes share y: invert once, so the first configuration is on top
    fig.suptitle(f"red: the specified model ('{reference}')", fontsize=9)
    _save(fig, path)


def _sweep_line(ax: Any, xs: list[float], summaries: list[Any], **kwargs: Any) -> None:
    """Means with 95% interval bars (none for a single seed) against ``xs``."""
    ax.errorbar(
        xs,
        [s.mean for s in summaries],
        yerr=[s.half_width if s.n > 1 else 0.0 for s in summaries],
        marker="o",
        capsize=3,
        **kwargs,
    )


def plot_l1(table: list[ConfigStats], reference: str, path: Path) -> bool:
    """Test ROC-AUC and sparsity against ``l1_lambda`` (log axis; 0 drawn left of the rest).

    Returns:
        False (and no file) when fewer than two ``l1_lambda`` values were run.
    """
    series = l1_series(table, reference)
    if len(series) < 2:
        return False
    lambdas = [c.settings["l1_lambda"] for c in series]
    positive = [v for v in lambdas if v > 0]
    zero_at = min(positive) / 10 if positive else 1e-6
    xs = [v if v > 0 else zero_at for v in lambdas]
    fig = new_figure(10, 3.8, layout=None)
    axes = fig.subplots(1, 2)
    _sweep_line(axes[0], xs, [c.summaries["test_roc_auc"] for c in series])
    axes[0].set_ylabel("test ROC-AUC (mean, 95% CI)")
    for col, label in (("exact_zero_all", "exact zeros"), ("near_zero_all", "|w| < 1e-3")):
        _sweep_line(axes[1], xs, [c.summaries[col] for c in series], label=label)
    axes[1].set_ylabel("fraction of kernel weights")
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xticks(xs, [f"{v:g}" for v in lambdas], fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel(f"l1_lambda ({series[0].settings['l1_mode']} mode)")
        ax.grid(alpha=0.3)
    _save(fig, path)
    return True


def plot_curves(curves: dict[str, list[dict[str, Any]]], path: Path) -> bool:
    """Training and validation data loss per epoch, one seed per configuration, overlaid.

    Returns:
        False (and no file) when there are no curves.
    """
    if not curves:
        return False
    fig = new_figure(11, 4, layout=None)
    axes = fig.subplots(1, 2, sharey=True)
    cmap = colormap("tab20")
    for i, (name, history) in enumerate(curves.items()):
        epochs = [int(float(h["epoch"])) for h in history]
        for ax, col in zip(axes, ("data_loss", "val_data_loss"), strict=True):
            ax.plot(
                epochs, [float(h[col]) for h in history], color=cmap(i % 20), label=name, lw=1.2
            )
    axes[0].set_title("training data loss (first seed)", fontsize=10)
    axes[1].set_title("validation data loss (first seed)", fontsize=10)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    _save(fig, path)
    return True
