"""The study's report: per-configuration statistics, verdict, ``summary.md``, ``study.html``, plots.

Reads plain rows (``results.csv`` as dicts) and learning curves; imports no TensorFlow. The
verdict is generated from the numbers by the rules in :func:`verdict` (see ``l1cnn.stats``).
"""

from __future__ import annotations

import html
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from l1cnn import stats
from l1cnn.runs import atomic_write_bytes, atomic_write_text

# (column, label, higher is better) of the metrics summarized per configuration.
METRICS = (
    ("test_roc_auc", "test ROC-AUC", True),
    ("test_accuracy", "test accuracy", True),
    ("test_f1", "test F1", True),
    ("gap_accuracy", "gap (train - test accuracy)", False),
    ("gap_loss", "gap (test - train loss)", False),
    ("exact_zero_all", "exact zeros", None),
    ("near_zero_all", "|w| < 1e-3", None),
    ("epochs_run", "epochs run", None),
)
PAIRED = ("test_roc_auc", "test_accuracy", "gap_accuracy", "gap_loss")
PRIMARY = "test_roc_auc"
METRICS_PLOT, L1_PLOT, CURVES_PLOT = "metrics.png", "l1_sweep.png", "curves.png"
SUMMARY_FILE, HTML_FILE = "summary.md", "study.html"


@dataclass
class ConfigStats:
    """Statistics of one configuration over its seeds."""

    name: str
    settings: dict[str, Any]
    seeds: list[int]
    collapsed: int  # seeds whose model predicted a constant / chance level
    summaries: dict[str, stats.Summary]
    differences: dict[str, stats.Summary]  # paired by seed, this minus the reference
    verdicts: dict[str, str]


def _number(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


def settings_of(row: dict[str, Any]) -> dict[str, Any]:
    """The technique settings of a results row."""
    return {
        "l1_lambda": float(row["l1_lambda"]),
        "l1_mode": str(row["l1_mode"]),
        "dropout_rate": float(row["dropout_rate"]),
        "early_stopping": _truthy(row["early_stopping"]),
        "epochs": int(float(row["epochs"])),
    }


def configuration_stats(rows: list[dict[str, Any]], reference: str) -> list[ConfigStats]:
    """Mean, sd, interval and paired differences against ``reference``, per configuration.

    Args:
        rows: results rows (one per finished trial).
        reference: the name of the specified model's configuration.

    Returns:
        One ConfigStats per configuration, in the order first met in ``rows``.
    """
    by_name: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_name.setdefault(str(row["configuration"]), []).append(row)

    def per_seed(group: list[dict[str, Any]], column: str) -> dict[int, float | None]:
        return {int(r["seed"]): _number(r.get(column)) for r in group}

    ref_rows = by_name.get(reference, [])
    out = []
    for name, group in by_name.items():
        summaries = {
            col: stats.summarize([per_seed(group, col)[s] for s in per_seed(group, col)])
            for col, _label, _ in METRICS
        }
        differences, verdicts = {}, {}
        if name != reference and ref_rows:
            for col in PAIRED:
                higher = next(h for c, _l, h in METRICS if c == col)
                diff = stats.paired_difference(per_seed(group, col), per_seed(ref_rows, col))
                differences[col] = diff
                verdicts[col] = stats.classify(diff, higher_is_better=bool(higher))
        out.append(
            ConfigStats(
                name=name,
                settings=settings_of(group[0]),
                seeds=sorted(int(r["seed"]) for r in group),
                collapsed=sum(_truthy(r.get("collapsed")) for r in group),
                summaries=summaries,
                differences=differences,
                verdicts=verdicts,
            )
        )
    return out


def describe_change(settings: dict[str, Any], reference: dict[str, Any]) -> str:
    """How a configuration differs from the reference, in words (``"without L1"``, ...)."""
    parts = []
    if settings["l1_lambda"] != reference["l1_lambda"]:
        parts.append(
            "without L1"
            if settings["l1_lambda"] == 0 and reference["l1_lambda"] > 0
            else f"l1_lambda={settings['l1_lambda']:g}"
        )
    if settings["l1_mode"] != reference["l1_mode"]:
        parts.append(f"l1_mode={settings['l1_mode']}")
    if settings["dropout_rate"] != reference["dropout_rate"]:
        parts.append(
            "without dropout"
            if settings["dropout_rate"] == 0 and reference["dropout_rate"] > 0
            else f"dropout_rate={settings['dropout_rate']:g}"
        )
    if settings["early_stopping"] != reference["early_stopping"]:
        parts.append(
            f"without early stopping ({settings['epochs']} fixed epochs)"
            if not settings["early_stopping"]
            else "with early stopping"
        )
    elif settings["epochs"] != reference["epochs"]:
        parts.append(f"epochs={settings['epochs']}")
    return ", ".join(parts) or "same settings"


def _removed_technique(settings: dict[str, Any], reference: dict[str, Any]) -> str | None:
    """The one technique this configuration turns off relative to the reference, if exactly one."""
    off = []
    if reference["l1_lambda"] > 0 and settings["l1_lambda"] == 0:
        off.append("L1")
    elif settings["l1_lambda"] != reference["l1_lambda"]:
        return None
    if reference["dropout_rate"] > 0 and settings["dropout_rate"] == 0:
        off.append("dropout")
    elif settings["dropout_rate"] != reference["dropout_rate"]:
        return None
    if reference["early_stopping"] and not settings["early_stopping"]:
        off.append("early stopping")
    elif settings["early_stopping"] != reference["early_stopping"]:
        return None
    if settings["l1_mode"] != reference["l1_mode"]:
        return None
    return off[0] if len(off) == 1 else None


def _fmt_diff(diff: stats.Summary) -> str:
    if diff.n == 0:
        return "-"
    if not math.isfinite(diff.ci_low):
        return f"{diff.mean:+.3f}"
    return f"{diff.mean:+.3f} [{diff.ci_low:+.3f}, {diff.ci_high:+.3f}]"


EFFECT = {
    stats.BETTER: "hurt",
    stats.WORSE: "helped",
    stats.NO_DIFFERENCE: "made no difference beyond the seed-to-seed spread",
    stats.TOO_FEW: "could not be judged (too few seeds)",
}


def _technique_sentences(table: list[ConfigStats], ref: ConfigStats) -> list[str]:
    """ "Turning X off changed ... so X helped/hurt" for each single-technique removal."""
    sentences = []
    for c in table:
        if c.name == ref.name or PRIMARY not in c.verdicts:
            continue
        technique = _removed_technique(c.settings, ref.settings)
        if technique is None:
            continue
        gap = c.verdicts.get("gap_accuracy", stats.TOO_FEW)
        gap_words = {stats.BETTER: "smaller", stats.WORSE: "larger"}.get(
            gap, "not clearly different"
        )
        sentences.append(
            f"Turning {technique} off ('{c.name}') changed test ROC-AUC by "
            f"{_fmt_diff(c.differences[PRIMARY])}, so {technique} "
            f"{EFFECT[c.verdicts[PRIMARY]]} on this metric; the train-test accuracy gap was "
            f"{gap_words} ({_fmt_diff(c.differences['gap_accuracy'])})."
        )
    return sentences


def verdict(rows: list[dict[str, Any]], reference: str) -> str:
    """A one-paragraph verdict generated from the results rows by explicit rules.

    Rules: a difference against the specified model counts only when its paired 95% interval
    (over seeds) excludes zero; the primary metric is test ROC-AUC, the generalization gap is
    reported beside it. A technique "helped" when turning it off alone made the metric worse,
    "hurt" when that made it better. Collapsed trials (constant predictions) are named. When
    the specified model collapsed on every seed, the techniques are judged again against the
    specified model without L1 (if that one learned). The best ``l1_lambda`` is named.
    """
    table = configuration_stats(rows, reference)
    ref = next((c for c in table if c.name == reference), None)
    if ref is None:
        return f"No verdict: the specified model ('{reference}') has no finished trials yet."
    n = ref.summaries[PRIMARY].n
    sentences = [
        f"Against the specified model ('{reference}': test ROC-AUC "
        f"{ref.summaries[PRIMARY].mean:.3f} over {n} seed{'s' if n != 1 else ''}), "
        "a difference counts only when its paired 95% interval excludes zero."
    ]
    if n < 2:
        sentences.append(
            "With fewer than 2 seeds no interval exists, so nothing can be "
            "concluded yet; rerun with --seeds 2 or more."
        )
    sentences += _technique_sentences(table, ref)
    better, worse = [], []
    for c in table:
        v = c.verdicts.get(PRIMARY)
        if v == stats.BETTER:
            better.append(
                f"'{c.name}' ({describe_change(c.settings, ref.settings)}, "
                f"{_fmt_diff(c.differences[PRIMARY])})"
            )
        elif v == stats.WORSE:
            worse.append(f"'{c.name}' ({_fmt_diff(c.differences[PRIMARY])})")
    if better:
        sentences.append(
            "Clearly better test ROC-AUC than the specified model: " + "; ".join(better) + "."
        )
    if worse:
        sentences.append("Clearly worse: " + "; ".join(worse) + ".")
    if n >= 2 and not better and not worse:
        sentences.append(
            "No configuration differed from the specified model beyond the "
            "seed-to-seed spread on test ROC-AUC."
        )
    collapsed = [f"'{c.name}' ({c.collapsed} of {len(c.seeds)})" for c in table if c.collapsed]
    if collapsed:
        sentences.append(
            "Trials that learned nothing (constant or chance-level predictions): "
            + ", ".join(collapsed)
            + "."
        )
    series = [c for c in l1_series(table, reference) if c.summaries[PRIMARY].n > 0]
    if len(series) >= 3:
        best = max(series, key=lambda c: c.summaries[PRIMARY].mean)
        sentences.append(
            f"Of the l1_lambda values run with everything else as specified, "
            f"l1_lambda={best.settings['l1_lambda']:g} ('{best.name}') gave the highest mean "
            f"test ROC-AUC ({_fmt_summary(best.summaries[PRIMARY])})."
        )
    if ref.seeds and ref.collapsed == len(ref.seeds):
        alt = next(
            (
                c
                for c in table
                if c.collapsed == 0 and _removed_technique(c.settings, ref.settings) == "L1"
            ),
            None,
        )
        if alt is not None:
            alt_table = configuration_stats(rows, alt.name)
            alt_ref = next(c for c in alt_table if c.name == alt.name)
            sentences.append(
                "The specified model collapsed on every seed, so comparisons against it only "
                "show which configurations escape the collapse. Judged instead against "
                f"'{alt.name}' (the specified model without L1, test ROC-AUC "
                f"{alt.summaries[PRIMARY].mean:.3f}):"
            )
            sentences += _technique_sentences(alt_table, alt_ref) or [
                "no configuration differs from it by one technique alone."
            ]
    return " ".join(sentences)


def _fmt_summary(s: stats.Summary, digits: int = 3) -> str:
    if s.n == 0:
        return "-"
    if s.n < 2:
        return f"{s.mean:.{digits}f}"
    return (
        f"{s.mean:.{digits}f} ± {s.sd:.{digits}f} [{s.ci_low:.{digits}f}, {s.ci_high:.{digits}f}]"
    )


SPARSITY_COLUMNS = ("exact_zero_all", "near_zero_all", "epochs_run")


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
                *[_fmt_summary(c.summaries[col]) for col in main_cols],
            ]
        )
        srows.append(
            [
                c.name,
                *[
                    _fmt_summary(c.summaries[col], 1 if col == "epochs_run" else 3)
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
                *[x for col in PAIRED for x in (_fmt_diff(c.differences[col]), c.verdicts[col])],
            ]
        )
    return rows, srows, drows


def _markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + " --- |" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines)


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
        _markdown_table(rows),
        "",
        "Sparsity of the saved model (fraction of kernel weights) and epochs trained:",
        "",
        _markdown_table(srows),
        "",
        "## Differences against the specified model, paired by seed",
        "",
        f"Reference: `{reference}`. Δ = configuration minus reference: mean [95% t-interval].",
        "",
        _markdown_table(drows) if len(drows) > 1 else "(none yet)",
        "",
        "## Verdict",
        "",
        verdict_text,
        "",
    ]
    parts += [f"![{p}]({p})" for p in plots]
    return "\n".join(parts) + "\n"


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>" for r in rows[1:]
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def study_html(
    table: list[ConfigStats],
    reference: str,
    meta: dict[str, Any],
    plots: list[str],
    verdict_text: str,
) -> str:
    """``study.html``: the same content as ``summary.md``, as one self-contained page."""
    rows, srows, drows = summary_tables(table, reference)
    imgs = "".join(f'<p><img src="{html.escape(p)}" alt="{html.escape(p)}"></p>' for p in plots)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>l1cnn study</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}img{max-width:100%}"
        "</style></head><body><h1>l1cnn study</h1>"
        f"<p>Data: <code>{html.escape(str(meta.get('source')))}</code>; preset "
        f"<code>{html.escape(str(meta.get('preset')))}</code>; seeds "
        f"{html.escape(', '.join(map(str, meta.get('seed_list', []))))}; finished trials "
        f"{meta.get('finished')} of {meta.get('planned')}.</p>"
        "<h2>Per configuration (mean ± sd [95% CI])</h2>"
        + _html_table(rows)
        + "<h3>Sparsity and epochs</h3>"
        + _html_table(srows)
        + f"<h2>Paired differences against <code>{html.escape(reference)}</code></h2>"
        + (_html_table(drows) if len(drows) > 1 else "<p>(none yet)</p>")
        + f"<h2>Verdict</h2><p>{html.escape(verdict_text)}</p>"
        + imgs
        + "</body></html>\n"
    )


def _save(fig: Any, path: Path) -> None:
    """Save a figure as PNG atomically and free it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 0.35 * len(table) + 1.5), sharey=True)
    _errorbars(axes[0], table, "test_roc_auc", "test ROC-AUC (mean, 95% CI)", reference)
    _errorbars(axes[1], table, "gap_accuracy", "train - test accuracy (mean, 95% CI)", reference)
    axes[1].axvline(0, color="black", lw=0.8)
    axes[0].invert_yaxis()  # the axes share y: invert once, so the first configuration is on top
    fig.suptitle(f"red: the specified model ('{reference}')", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def l1_series(table: list[ConfigStats], reference: str) -> list[ConfigStats]:
    """Configurations that differ from the reference in ``l1_lambda`` only (and the reference)."""
    ref = next((c for c in table if c.name == reference), None)
    if ref is None:
        return []
    keys = ("l1_mode", "dropout_rate", "early_stopping", "epochs")
    same = [c for c in table if all(c.settings[k] == ref.settings[k] for k in keys)]
    return sorted(same, key=lambda c: c.settings["l1_lambda"])


def plot_l1(table: list[ConfigStats], reference: str, path: Path) -> bool:
    """Test ROC-AUC and sparsity against ``l1_lambda`` (log axis; 0 drawn left of the rest).

    Returns:
        False (and no file) when fewer than two ``l1_lambda`` values were run.
    """
    series = l1_series(table, reference)
    if len(series) < 2:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lambdas = [c.settings["l1_lambda"] for c in series]
    positive = [v for v in lambdas if v > 0]
    zero_at = min(positive) / 10 if positive else 1e-6
    xs = [v if v > 0 else zero_at for v in lambdas]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    auc = [c.summaries["test_roc_auc"] for c in series]
    axes[0].errorbar(
        xs,
        [s.mean for s in auc],
        yerr=[s.half_width if s.n > 1 else 0.0 for s in auc],
        marker="o",
        capsize=3,
    )
    axes[0].set_ylabel("test ROC-AUC (mean, 95% CI)")
    for col, label in (("exact_zero_all", "exact zeros"), ("near_zero_all", "|w| < 1e-3")):
        s = [c.summaries[col] for c in series]
        axes[1].errorbar(
            xs,
            [x.mean for x in s],
            yerr=[x.half_width if x.n > 1 else 0.0 for x in s],
            marker="o",
            capsize=3,
            label=label,
        )
    axes[1].set_ylabel("fraction of kernel weights")
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xticks(xs, [f"{v:g}" for v in lambdas], fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel(f"l1_lambda ({series[0].settings['l1_mode']} mode)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    return True


def plot_curves(curves: dict[str, list[dict[str, Any]]], path: Path) -> bool:
    """Training and validation data loss per epoch, one seed per configuration, overlaid.

    Returns:
        False (and no file) when there are no curves.
    """
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    cmap = plt.get_cmap("tab20")
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
    fig.tight_layout()
    _save(fig, path)
    return True


def write_report(
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
    atomic_write_text(out / SUMMARY_FILE, summary_markdown(table, reference, meta, plots, text))
    atomic_write_text(out / HTML_FILE, study_html(table, reference, meta, plots, text))
    return [out / SUMMARY_FILE, out / HTML_FILE, *(out / p for p in plots)]
