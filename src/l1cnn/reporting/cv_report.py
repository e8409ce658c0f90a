"""The cross-validation page: ``cv.html`` and ``summary.md`` with the mean and 95% interval of
every metric across folds, the pooled out-of-fold metrics, one row per fold and a figure of the
folds' values (no TensorFlow; matplotlib only to draw the figure).
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from l1cnn.reporting.figures import COLORS, new_figure, png_bytes, style_axes
from l1cnn.reporting.page import (
    figure_grid,
    figure_html,
    heading,
    html_table,
    interval,
    md_table,
    num,
    scrolling,
    section,
    write_file,
    write_page,
)

HTML_FILE, SUMMARY_FILE, FOLDS_PLOT = "cv.html", "summary.md", "cv_folds.png"
LABELS = {
    "test_roc_auc": "ROC-AUC",
    "test_pr_auc": "PR-AUC",
    "test_accuracy": "accuracy",
    "test_balanced_accuracy": "balanced accuracy",
    "test_precision": "precision",
    "test_recall": "recall",
    "test_f1": "F1",
    "test_loss": "log loss",
    "epochs_run": "epochs run",
}
PLOTTED = ("test_roc_auc", "test_accuracy", "test_f1")
FOOTER = "the figure is the PNG file beside this page; no scripts, no network"


def summary_table(summaries: dict[str, Any], rows: list[dict[str, Any]]) -> list[list[str]]:
    """Header + rows: metric, mean, 95% t-interval, sd and the value of every fold."""
    table = [["metric (held-out fold)", "mean", "95% interval", "sd", "per fold"]]
    for column, s in summaries.items():
        digits = 1 if column == "epochs_run" else 3
        ci = interval(s.ci_low, s.ci_high, digits) if s.n > 1 else "-"
        per_fold = ", ".join(num(_float(r.get(column)), digits) for r in rows)
        table.append(
            [LABELS.get(column, column), num(s.mean, digits), ci, num(s.sd, digits), per_fold]
        )
    return table


def pooled_table(pooled: dict[str, Any]) -> list[list[str]]:
    """Header + rows of the pooled out-of-fold metrics, with their bootstrap intervals."""
    table = [["metric (all out-of-fold predictions)", "value", "95% bootstrap interval"]]
    for key in ("roc_auc", "pr_auc", "accuracy", "balanced_accuracy", "f1", "loss", "brier"):
        if key not in pooled:
            continue
        ci = pooled.get("ci", {}).get(key)
        table.append([key, num(pooled[key]), interval(*ci) if ci else "-"])
    return table


def folds_table(rows: list[dict[str, Any]]) -> list[list[str]]:
    """Header + one row per finished fold."""
    head = ["fold", "status", "epochs", "test images", "ROC-AUC", "accuracy", "F1", "val loss"]
    table = [head + ["collapsed", "run folder"]]
    for r in rows:
        table.append(
            [
                str(r["fold"]),
                str(r["status"]),
                str(r["epochs_run"]),
                str(r["n_test"]),
                num(_float(r["test_roc_auc"])),
                num(_float(r["test_accuracy"])),
                num(_float(r["test_f1"])),
                num(_float(r["val_loss"])),
                "yes" if r["collapsed"] else "no",
                str(r["run_dir"]),
            ]
        )
    return table


def _float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def plot_folds(rows: list[dict[str, Any]], summaries: dict[str, Any], path: Path) -> None:
    """Each fold's held-out ROC-AUC, accuracy and F1 as dots, with the mean and 95% interval."""
    fig = new_figure(7.5, 3.2, layout=None)
    ax = fig.subplots()
    for x, column in enumerate(PLOTTED):
        values = [v for v in (_float(r.get(column)) for r in rows) if v is not None]
        ax.scatter([x - 0.12] * len(values), values, color=COLORS[0], s=18, zorder=3)
        s = summaries[column]
        if s.n > 1:
            ax.errorbar(x + 0.12, s.mean, yerr=s.half_width, fmt="o", color=COLORS[1], capsize=4)
        elif s.n == 1:
            ax.scatter([x + 0.12], [s.mean], color=COLORS[1])
    ax.set_xticks(range(len(PLOTTED)), [LABELS[c] for c in PLOTTED])
    ax.set_xlim(-0.5, len(PLOTTED) - 0.5)
    ax.set_title("blue: each fold; red: mean with 95% t-interval", fontsize=9)
    style_axes(ax)
    fig.tight_layout()
    write_file(path, png_bytes(fig, 90))


def _notes(rows: list[dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    """Plain sentences: unfinished and collapsed folds, what the test split was."""
    notes = []
    k = meta.get("folds", len(rows))
    if len(rows) < k:
        notes.append(
            f"Only {len(rows)} of {k} folds finished: rerun the same command to train the rest."
        )
    collapsed = [str(r["fold"]) for r in rows if r["collapsed"]]
    if collapsed:
        notes.append(
            f"Fold(s) {', '.join(collapsed)} collapsed (constant predictions): their metrics "
            "are those of a constant guess."
        )
    return notes


def write_cv_report(
    out: Path,
    rows: list[dict[str, Any]],
    summaries: dict[str, Any],
    pooled: dict[str, Any],
    meta: dict[str, Any],
) -> list[Path]:
    """Write ``cv.html``, ``summary.md`` and ``cv_folds.png`` (the figure once a fold finished).

    Args:
        out: the cv folder.
        rows: ``results.csv`` rows of the finished folds (:func:`l1cnn.cv.fold_row`).
        summaries: column -> :class:`l1cnn.stats.Summary` across folds.
        pooled: metrics of all out-of-fold predictions (:func:`l1cnn.cv.pooled_metrics`).
        meta: ``cv.json``: source, folds, seed, groups, group_pattern, source_test_split.

    Returns:
        The files written.
    """
    k = meta.get("folds")
    grouping = (
        f"grouped by the file '{meta['groups']}'"
        if meta.get("groups")
        else f"grouped by the pattern '{meta['group_pattern']}'"
        if meta.get("group_pattern")
        else "stratified (no groups)"
    )
    left = f" ({meta['source_test_split']})" if meta.get("source_test_split") else ""
    sub = (
        f"{k} folds of <code>{html.escape(str(meta.get('source')))}</code>, {grouping}, "
        f"seed {meta.get('seed')}. Each fold's metrics are those of its held-out fold"
        f"{html.escape(left)}; intervals are 95% t-intervals across folds."
    )
    written = []
    parts = [heading(f"Cross-validation ({k} folds)", sub)]
    notes = _notes(rows, meta)
    parts += [f'<div class="warn">{html.escape(n)}</div>' for n in notes]
    summary = summary_table(summaries, rows)
    pooled_rows = pooled_table(pooled)
    fold_rows = folds_table(rows)
    parts.append(
        section(
            "Across folds",
            scrolling(html_table(summary[0], summary[1:], num_cols=(1, 2, 3))),
        )
    )
    if pooled:
        when = (
            "every fold used the same threshold"
            if pooled.get("same_threshold")
            else "folds chose their own thresholds, so only threshold-free metrics are pooled"
        )
        parts.append(
            section(
                "Out-of-fold predictions, pooled",
                html_table(pooled_rows[0], pooled_rows[1:], num_cols=(1, 2)),
                sub=f"Every image of train+val scored once, by the fold that did not train on it "
                f"(<code>oof_predictions.csv</code>); {when}.",
            )
        )
    parts.append(section("Folds", scrolling(html_table(fold_rows[0], fold_rows[1:]))))
    if rows:
        written.append(out / FOLDS_PLOT)
        plot_folds(rows, summaries, out / FOLDS_PLOT)
        parts.append(
            figure_grid(
                [figure_html(FOLDS_PLOT, "Folds", "Held-out metrics of each fold.", wide=True)]
            )
        )
    written.append(write_page(out / HTML_FILE, f"l1cnn cv: {meta.get('source')}", parts, FOOTER))
    md = [
        f"# Cross-validation ({k} folds)",
        "",
        f"Data `{meta.get('source')}`, {grouping}, seed {meta.get('seed')}; each fold's metrics "
        f"are those of its held-out fold{left}; 95% t-intervals across folds.",
        "",
        *[f"> {n}\n" for n in notes],
        md_table(summary[0], summary[1:]),
        "",
        "## Out-of-fold predictions, pooled",
        "",
        md_table(pooled_rows[0], pooled_rows[1:]) if pooled else "(no fold finished yet)",
        "",
        "## Folds",
        "",
        md_table(fold_rows[0], fold_rows[1:]),
        "",
        *([f"![{FOLDS_PLOT}]({FOLDS_PLOT})", ""] if rows else []),
    ]
    written.append(write_file(out / SUMMARY_FILE, "\n".join(md)))
    return written
