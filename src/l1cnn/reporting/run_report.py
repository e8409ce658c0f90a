"""The run report: ``plots/*.png``, ``report.html`` and ``report.md`` from a run folder's files.

Imports no TensorFlow: it reads the plain files ``train`` wrote (``history.csv``,
``metrics.json``, ``predictions.csv``, ...) and ``explain.npz`` from ``l1cnn.explain``.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from l1cnn.errors import RunError
from l1cnn.reporting.figures import Plot
from l1cnn.reporting.page import (
    data_uri,
    figure_grid,
    figure_html,
    heading,
    html_table,
    interval,
    md_table,
    num,
    render_page,
    section,
    write_file,
)
from l1cnn.reporting.run_files import RunFiles, read_run_files
from l1cnn.reporting.run_plots import make_plots

REPORT_HTML = "report.html"
REPORT_MD = "report.md"
PLOTS_DIR = "plots"
WIDE_PLOTS = {"learning_curves", "weights", "wrong", "saliency", "compare_learning"}

# (key, label, one sentence): the metrics table of the report, in order.
METRICS: list[tuple[str, str, str]] = [
    ("accuracy", "Accuracy", "Share of images called correctly at the chosen threshold."),
    (
        "balanced_accuracy",
        "Balanced accuracy",
        "Mean of recall and specificity; not fooled by an imbalanced split.",
    ),
    ("precision", "Precision", "Of the images called positive, the share that are positive."),
    ("recall", "Recall (sensitivity)", "Of the positive images, the share called positive."),
    ("specificity", "Specificity", "Of the negative images, the share called negative."),
    ("f1", "F1", "Harmonic mean of precision and recall."),
    ("mcc", "MCC", "Matthews correlation of calls and labels: 0 is chance, 1 is perfect."),
    (
        "roc_auc",
        "ROC-AUC",
        "Chance that a random positive scores above a random negative (threshold-free).",
    ),
    (
        "pr_auc",
        "PR-AUC (average precision)",
        "Area under the precision-recall curve (threshold-free).",
    ),
    ("loss", "Log loss", "Mean negative log-likelihood of the true labels; lower is better."),
    ("brier", "Brier score", "Mean squared gap between probability and label; lower is better."),
    (
        "ece",
        "ECE",
        "Expected calibration error: mean gap between predicted and observed positive rate over "
        "10 probability bins.",
    ),
]

# ------------------------------------------------------------------------------- tables


def value_with_ci(m: dict[str, Any], key: str) -> str:
    """One metric of one split as text, with its 95% bootstrap interval where known."""
    bounds = (m.get("ci") or {}).get(key)
    return num(m.get(key)) + (f" {interval(*bounds)}" if bounds else "")


def metric_rows(metrics: dict[str, Any], splits: Sequence[str]) -> list[list[str]]:
    """Rows ``[label, value per split (with 95% CI where known)..., description]``."""
    return [
        [label, *[value_with_ci(metrics.get(s, {}), key) for s in splits], what]
        for key, label, what in METRICS
        if any(key in metrics.get(s, {}) for s in splits)
    ]


def data_rows(run: RunFiles) -> list[list[str]]:
    """Data summary rows: source, classes, image shape, counts per split, fingerprint."""
    d = run.data
    negative, positive = d["class_names"]
    rows = [
        ["source", f"{d.get('source')} ({d.get('kind')})"],
        ["classes", f"{negative} (0, negative) / {positive} (1, positive)"],
        [
            "image shape",
            " x ".join(map(str, d.get("image_shape", []))) + f" ({d.get('pixel_dtype', '?')})",
        ],
    ]
    for split, counts in d.get("counts", {}).items():
        origin = d.get("split_origin", {}).get(split, "")
        parts = ", ".join(f"{k} {v}" for k, v in counts.items())
        rows.append([f"{split} split", f"{sum(counts.values())} images ({parts}; {origin})"])
    rows.append(["fingerprint", str(d.get("fingerprint", ""))[:16] + "..."])
    if d.get("skipped_images"):
        rows.append(["skipped images", str(len(d["skipped_images"]))])
    for note in d.get("notes", []):
        rows.append(["note", str(note)])
    return rows


def run_rows(run: RunFiles) -> list[list[str]]:
    """Training summary rows: status, epochs, best epoch, seed, time, threshold, versions."""
    i = run.info
    t = run.metrics.get("threshold", {})
    rows = [
        ["status", f"{i.get('status')}" + (f" ({i['message']})" if i.get("message") else "")],
        ["epochs run / best epoch", f"{i.get('epochs_run')} / {i.get('best_epoch')}"],
        ["seed", str(i.get("seed"))],
        ["wall time", f"{i.get('wall_time_s', 0):.1f} s"],
        ["threshold", f"{t.get('value', 0.5):.4g} (rule {t.get('rule')!s}, chosen on validation)"],
        ["started (UTC)", str(i.get("started"))],
    ]
    if t.get("note"):
        rows.append(["threshold note", t["note"]])
    if t.get("changed_by"):
        rows.append(["threshold changed by", str(t["changed_by"])])
    calibration = run.metrics.get("calibration")
    if calibration:  # issue 15: temperature scaling, with test scores before -> after
        b, a = calibration["before"]["test"], calibration["after"]["test"]
        rows.append(
            [
                "temperature scaling",
                f"T = {calibration['temperature']:.4g} (fitted on validation); test ECE "
                f"{b['ece']:.3f} -> {a['ece']:.3f}, Brier {b['brier']:.3f} -> {a['brier']:.3f}, "
                f"log loss {b['log_loss']:.3f} -> {a['log_loss']:.3f}",
            ]
        )
    versions = i.get("versions", {})
    if versions:
        rows.append(
            ["versions", ", ".join(f"{k} {v}" for k, v in versions.items() if k != "platform")]
        )
    return rows


def _headline(m: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (label, num(m.get(key)))
        for key, label in (
            ("accuracy", "test accuracy"),
            ("roc_auc", "test ROC-AUC"),
            ("recall", "test recall"),
            ("specificity", "test specificity"),
            ("f1", "test F1"),
        )
    ]


# -------------------------------------------------------------------------------- pages


def plot_html(plot: Plot) -> str:
    """A plot embedded in a page (as a data URI), with its title and caption."""
    return figure_html(data_uri(plot.png), plot.title, plot.caption, plot.name in WIDE_PLOTS)


def _notices(run: RunFiles) -> str:
    """The warning boxes: a collapsed model, a missing ``explain.npz``."""
    diagnosis = run.metrics.get("diagnosis") or {}
    warn = ""
    if diagnosis.get("collapsed"):
        warn = (
            f'<div class="warn"><b>Warning:</b> {html.escape("; ".join(diagnosis["reasons"]))}.'
            f" {html.escape(diagnosis.get('advice') or '')}</div>"
        )
    if run.explanation is None:
        warn += (
            '<div class="warn">No <code>explain.npz</code> in this run: weight, wrong-image '
            "and saliency plots are missing (run <code>l1cnn report RUN</code>).</div>"
        )
    return warn


def render_html(run: RunFiles, plots: list[Plot]) -> str:
    """The self-contained report page of one run."""
    m = run.metrics
    splits = [s for s in ("train", "val", "test") if s in m]
    cards = "".join(
        f'<div class="card"><div class="v">{html.escape(v)}</div>'
        f'<div class="k">{html.escape(k)}</div></div>'
        for k, v in _headline(m["test"])
    )
    negative, positive = (html.escape(c) for c in run.data["class_names"])
    sub = (
        f"{html.escape(str(run.data.get('name')))}: {positive}\n(positive) vs {negative}; "
        f"threshold\n{run.threshold:.4g} ({html.escape(str(m['threshold'].get('rule')))}) "
        f"chosen on validation;\nfolder <code>{html.escape(str(run.path))}</code>"
    )
    metrics_table = html_table(
        ["metric", *splits, "what it means"],
        metric_rows(m, splits),
        range(1, len(splits) + 1),
        len(splits) + 1,
    )
    tables = (
        f'<div class="two"><div>{html_table(["data", ""], data_rows(run))}</div>\n'
        f"<div>{html_table(['training', ''], run_rows(run))}</div></div>"
    )
    parts = [
        heading(f"l1cnn run: {run.name}", sub),
        f'<div class="cards">{cards}</div>',
        _notices(run),
        section(
            "Metrics",
            metrics_table,
            sub="At the chosen threshold; brackets are 95% bootstrap intervals\n"
            "(1000 resamples of the images, seeded).",
        ),
        section("Plots", figure_grid(plot_html(p) for p in plots)),
        section("Data and training", tables),
        section("Config", f"<pre>{html.escape(run.config_text)}</pre>"),
    ]
    return render_page(f"l1cnn report: {run.name}", parts)


def render_markdown(run: RunFiles, plots: list[Plot]) -> str:
    """The same report as Markdown, with the plots as ``plots/*.png`` files."""
    m = run.metrics
    splits = [s for s in ("train", "val", "test") if s in m]
    lines = [
        f"# l1cnn run: {run.name}",
        "",
        f"Threshold {run.threshold:.4g} (rule `{m['threshold'].get('rule')}`, chosen on "
        "validation). Brackets are 95% bootstrap intervals (1000 resamples, seeded).",
        "",
    ]
    diagnosis = m.get("diagnosis") or {}
    if diagnosis.get("collapsed"):
        lines += [f"**Warning:** {'; '.join(diagnosis['reasons'])}. {diagnosis.get('advice')}", ""]
    lines += [
        "## Metrics",
        "",
        md_table(["metric", *splits, "what it means"], metric_rows(m, splits)),
        "",
        "## Plots",
        "",
    ]
    for p in plots:
        lines += [
            f"### {p.title}",
            "",
            f"![{p.title}]({PLOTS_DIR}/{p.name}.png)",
            "",
            p.caption,
            "",
        ]
    lines += [
        "## Data",
        "",
        md_table(["data", ""], data_rows(run)),
        "",
        "## Training",
        "",
        md_table(["training", ""], run_rows(run)),
        "",
        "## Config",
        "",
        "```toml",
        run.config_text.rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def write_report(run_dir: str | Path) -> Path:
    """Draw every plot of a run into ``plots/`` and write ``report.html`` and ``report.md``.

    Args:
        run_dir: a finished run folder (``explain.npz`` adds the model-dependent plots).

    Returns:
        The path of ``report.html``.

    Raises:
        RunError: not a finished run, or the folder cannot be written.
    """
    run = read_run_files(run_dir)
    plots = make_plots(run)
    plot_dir = run.path / PLOTS_DIR
    try:
        plot_dir.mkdir(exist_ok=True)
    except OSError as exc:
        raise RunError(f"cannot create '{plot_dir}': {exc.strerror}") from None
    for p in plots:
        write_file(plot_dir / f"{p.name}.png", p.png)
    write_file(run.path / REPORT_MD, render_markdown(run, plots))
    return write_file(run.path / REPORT_HTML, render_html(run, plots))
