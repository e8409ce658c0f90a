"""The study's report: ``summary.md``, ``study.html`` (the same page template as a run's report)
and its plots, from the results rows and learning curves (no TensorFlow).

The statistics and the verdict's rules live in :mod:`l1cnn.reporting.study_stats`.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from l1cnn.reporting.page import (
    figure_grid,
    figure_html,
    heading,
    html_table,
    md_table,
    scrolling,
    section,
    write_file,
    write_page,
)
from l1cnn.reporting.study_plots import plot_curves, plot_l1, plot_metrics
from l1cnn.reporting.study_stats import (
    METRICS,
    PAIRED,
    ConfigStats,
    configuration_stats,
    describe_change,
    fmt_diff,
    fmt_summary,
    verdict,
)

METRICS_PLOT, L1_PLOT, CURVES_PLOT = "metrics.png", "l1_sweep.png", "curves.png"
SUMMARY_FILE, HTML_FILE = "summary.md", "study.html"
SPARSITY_COLUMNS = ("exact_zero_all", "near_zero_all", "epochs_run")
FOOTER = "the plots are the PNG files beside this page; no scripts, no network"


def summary_tables(table: list[ConfigStats], reference: str) -> tuple[list[list[str]], ...]:
    """Three tables as header + rows of text: generalization metrics, sparsity and epochs,
    and the paired differences against the reference."""
    ref = next((c for c in table if c.name == reference), None)
    labels = {c: label for c, label, _h in METRICS}
    main_cols = [c for c, _l, _h in METRICS if c not in SPARSITY_COLUMNS]
    rows = [["configuration", "change", "seeds", *[labels[c] for c in main_cols]]]
    srows = [["configuration", *[labels[c] for c in SPARSITY_COLUMNS]]]
    for c in table:
        if c.name == reference:
            change = "specified model"
        else:
            change = describe_change(c.settings, ref.settings) if ref else ""
        rows.append(
            [
                c.name,
                change,
                str(len(c.seeds)),
                *[fmt_summary(c.summaries[col]) for col in main_cols],
            ]
        )
        srows.append(
            [
                c.name,
                *[
                    fmt_summary(c.summaries[col], 1 if col == "epochs_run" else 3)
                    for col in SPARSITY_COLUMNS
                ],
            ]
        )
    drows = [["configuration", *[x for col in PAIRED for x in (f"Δ {labels[col]}", "verdict")]]]
    for c in table:
        if c.name == reference or not c.differences:
            continue
        drows.append(
            [
                c.name,
                *[x for col in PAIRED for x in (fmt_diff(c.differences[col]), c.verdicts[col])],
            ]
        )
    return rows, srows, drows


def summary_markdown(
    table: list[ConfigStats],
    reference: str,
    meta: dict[str, Any],
    plots: list[str],
    verdict_text: str,
) -> str:
    """``summary.md``: what was run, the tables, the verdict and the plots."""
    rows, srows, drows = summary_tables(table, reference)
    parts = [
        "# Study summary",
        "",
        f"Data: `{meta.get('source')}`; preset `{meta.get('preset')}`; seeds "
        f"{', '.join(map(str, meta.get('seed_list', [])))}; trials without early stopping run "
        f"{meta.get('epochs_without_early_stopping')} epochs and keep the last weights.",
        f"Finished trials: {meta.get('finished')} of {meta.get('planned')}.",
        "",
        "Per configuration: mean ± sd [95% t-interval] over seeds. Gaps use the data loss "
        "(log loss, without the L1 penalty). Sparsity is over every Conv2D/Dense kernel weight.",
        "",
        md_table(rows[0], rows[1:]),
        "",
        "Sparsity of the saved model (fraction of kernel weights) and epochs trained:",
        "",
        md_table(srows[0], srows[1:]),
        "",
        "## Differences against the specified model, paired by seed",
        "",
        f"Reference: `{reference}`. Δ = configuration minus reference: mean [95% t-interval].",
        "",
        md_table(drows[0], drows[1:]) if len(drows) > 1 else "(none yet)",
        "",
        "## Verdict",
        "",
        verdict_text,
        "",
    ]
    parts += [f"![{p}]({p})" for p in plots]
    return "\n".join(parts) + "\n"


def study_parts(
    table: list[ConfigStats],
    reference: str,
    meta: dict[str, Any],
    plots: list[str],
    verdict_text: str,
) -> list[str]:
    """The parts of ``study.html``: the same content as ``summary.md``, in the shared page."""
    rows, srows, drows = summary_tables(table, reference)
    sub = (
        f"Data: <code>{html.escape(str(meta.get('source')))}</code>; preset "
        f"<code>{html.escape(str(meta.get('preset')))}</code>; seeds "
        f"{html.escape(', '.join(map(str, meta.get('seed_list', []))))}; finished trials "
        f"{meta.get('finished')} of {meta.get('planned')}."
    )
    diff_cols = range(1, len(drows[0]), 2)  # the Δ columns; the verdicts sit between them
    return [
        heading("l1cnn study", sub),
        section(
            "Per configuration (mean ± sd [95% CI])",
            scrolling(html_table(rows[0], rows[1:], range(2, len(rows[0])))),
            section(
                "Sparsity and epochs",
                html_table(srows[0], srows[1:], range(1, len(srows[0]))),
                level=3,
            ),
        ),
        f"<h2>Paired differences against <code>{html.escape(reference)}</code></h2>\n"
        + (
            scrolling(html_table(drows[0], drows[1:], diff_cols))
            if len(drows) > 1
            else "<p>(none yet)</p>"
        ),
        section("Verdict", f"<p>{html.escape(verdict_text)}</p>"),
        figure_grid(figure_html(p, p, wide=True) for p in plots),
    ]


def write_study_report(
    out: str | Path,
    rows: list[dict[str, Any]],
    reference: str,
    curves: dict[str, list[dict[str, Any]]],
    meta: dict[str, Any],
) -> list[Path]:
    """Write ``summary.md``, ``study.html`` and the plots into ``out``.

    Args:
        out: the study folder.
        rows: results rows of the finished trials.
        reference: the specified model's configuration name.
        curves: configuration -> history rows (``epoch``, ``data_loss``, ``val_data_loss``).
        meta: ``source``, ``preset``, ``seed_list``, ``epochs_without_early_stopping``,
            ``finished``, ``planned``.

    Returns:
        The files written.

    Raises:
        RunError: a file cannot be written.
    """
    out = Path(out)
    table = configuration_stats(rows, reference)
    plots: list[str] = []
    if table:
        plot_metrics(table, reference, out / METRICS_PLOT)
        plots.append(METRICS_PLOT)
        if plot_l1(table, reference, out / L1_PLOT):
            plots.append(L1_PLOT)
    if plot_curves(curves, out / CURVES_PLOT):
        plots.append(CURVES_PLOT)
    text = verdict(rows, reference)
    write_file(out / SUMMARY_FILE, summary_markdown(table, reference, meta, plots, text))
    parts = study_parts(table, reference, meta, plots, text)
    write_page(out / HTML_FILE, "l1cnn study", parts, footer=FOOTER)
    return [out / SUMMARY_FILE, out / HTML_FILE, *(out / p for p in plots)]
