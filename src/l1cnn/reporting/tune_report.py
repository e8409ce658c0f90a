"""The page of an ``l1cnn tune`` search: specified vs chosen, trials, and the search's plots.

Reads plain rows (``trials.csv`` with each trial's test metrics) and the search's record; draws
with matplotlib's object API (our own plots, not Optuna's, so the page looks like the others).
Imports no TensorFlow and no Optuna.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from l1cnn.reporting.figures import COLORS, new_figure, png_bytes, style_axes
from l1cnn.reporting.page import (
    data_uri,
    figure_grid,
    figure_html,
    heading,
    html_table,
    num,
    scrolling,
    section,
    write_page,
)

LABELS = {
    "val_roc_auc": "validation ROC-AUC",
    "val_loss": "validation log loss",
    "sparsity": "exact zeros (fraction of kernel weights)",
}
STATE_COLORS = {"complete": COLORS[0], "pruned": "#BBBBBB", "fail": COLORS[1]}
MAXIMIZE = {"val_roc_auc", "sparsity"}


def _value(row: dict[str, Any], name: str) -> float | None:
    value = row.get(name)
    if value is None or value == "":
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _param_names(space: list[Any]) -> list[str]:
    return [p.name for p in space]


def _history_plot(rows: list[dict[str, Any]], objective: str, meta: dict[str, Any]) -> str:
    """Objective per trial (pruned trials grey at their last value), the running best, trial 0."""
    fig = new_figure(6.4, 3.8)
    ax = fig.subplots()
    style_axes(ax)
    for state, color in STATE_COLORS.items():
        pts = [(r["number"], _value(r, objective)) for r in rows if r["state"] == state]
        pts = [(n, v) for n, v in pts if v is not None]
        if pts:
            ax.scatter(*zip(*pts, strict=True), color=color, label=state, zorder=3, s=28)
    done = sorted(
        (r["number"], _value(r, objective))
        for r in rows
        if r["state"] == "complete" and _value(r, objective) is not None
    )
    if done:
        best, xs, ys = None, [], []
        for n, v in done:
            if best is None or (v > best if objective in MAXIMIZE else v < best):
                best = v
            xs.append(n)
            ys.append(best)
        ax.step(xs, ys, where="post", color=COLORS[2], label="best so far")
    spec = next((r for r in rows if r["number"] == meta.get("specified")), None)
    if spec is not None and _value(spec, objective) is not None:
        ax.scatter(
            [spec["number"]],
            [_value(spec, objective)],
            marker="*",
            s=180,
            color=COLORS[3],
            label="specified",
            zorder=4,
        )
    ax.set_xlabel("trial")
    ax.set_ylabel(LABELS[objective])
    ax.legend(fontsize=8)
    return figure_html(
        data_uri(png_bytes(fig)),
        "Optimization history",
        f"{LABELS[objective]} of each trial (pruned: of the weights it stopped with) and the "
        "best finished trial so far; the star is the specified configuration.",
    )


def _slice_plot(rows: list[dict[str, Any]], objective: str, space: list[Any]) -> str:
    """The objective against each parameter's value, one panel a parameter."""
    n = len(space)
    cols = min(n, 3)
    fig = new_figure(3.3 * cols, 2.8 * math.ceil(n / cols))
    axes = fig.subplots(math.ceil(n / cols), cols, squeeze=False).ravel()
    for ax, p in zip(axes, space, strict=False):
        style_axes(ax)
        for state, color in STATE_COLORS.items():
            pts = []
            for r in rows:
                x, y = r.get(p.name), _value(r, objective)
                if r["state"] == state and x is not None and y is not None:
                    pts.append((_position(p, x), y))
            if pts:
                ax.scatter(*zip(*pts, strict=True), color=color, s=20, label=state)
        if p.kind == "choice":  # in the space's order, not as text
            ax.set_xticks(range(len(p.choices)), [str(c) for c in p.choices])
        elif p.log:
            ax.set_xscale("symlog", linthresh=p.low) if p.zero else ax.set_xscale("log")
        ax.set_xlabel(p.name)
        ax.set_ylabel(LABELS[objective], fontsize=8)
    for ax in axes[n:]:
        ax.axis("off")
    return figure_html(
        data_uri(png_bytes(fig)),
        "Slices",
        f"{LABELS[objective]} against each searched parameter (grey: pruned trials).",
        wide=True,
    )


def _position(p: Any, value: Any) -> float:
    """Where a value sits on its panel's x axis: a choice's index, or the number itself."""
    if p.kind != "choice":
        return float(value)
    text = [str(c) for c in p.choices]
    return float(text.index(str(value))) if str(value) in text else math.nan


def _importance_plot(importances: dict[str, dict[str, float]]) -> str:
    names = list(importances)
    fig = new_figure(4.2 * len(names), 3.2)
    axes = fig.subplots(1, len(names), squeeze=False).ravel()
    for ax, name in zip(axes, names, strict=True):
        items = sorted(importances[name].items(), key=lambda kv: kv[1])
        ax.barh([k for k, _ in items], [v for _, v in items], color=COLORS[0])
        ax.set_xlabel(f"importance for {name}")
        style_axes(ax)
    return figure_html(
        data_uri(png_bytes(fig)),
        "Parameter importances",
        "Optuna's fANOVA: the share of the objective's variance over finished trials that each "
        "parameter explains (few trials: a rough guide).",
    )


def _pareto_plot(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    first = meta["objectives"][0]
    front = set(meta.get("pareto") or [])
    fig = new_figure(6.0, 4.2)
    ax = fig.subplots()
    style_axes(ax)
    done = [r for r in rows if r["state"] == "complete" and _value(r, first) is not None]
    others = [(_value(r, "sparsity"), _value(r, first)) for r in done if r["number"] not in front]
    if others:
        ax.scatter(*zip(*others, strict=True), color="#BBBBBB", s=24, label="dominated")
    pts = sorted((_value(r, "sparsity"), _value(r, first)) for r in done if r["number"] in front)
    if pts:
        ax.plot(*zip(*pts, strict=True), "o-", color=COLORS[0], label="Pareto front")
    for key, marker, color, label in (
        ("specified", "*", COLORS[3], "specified"),
        ("chosen", "D", COLORS[1], f"chosen (sparsest within {meta['within']:g})"),
    ):
        row = next((r for r in done if r["number"] == meta.get(key)), None)
        if row is not None:
            ax.scatter(
                [_value(row, "sparsity")],
                [_value(row, first)],
                marker=marker,
                s=120,
                color=color,
                label=label,
                zorder=4,
            )
    ax.set_xlabel(LABELS["sparsity"])
    ax.set_ylabel(LABELS[first])
    ax.legend(fontsize=8)
    return figure_html(
        data_uri(png_bytes(fig)),
        "Pareto front",
        f"Finished trials: {LABELS[first]} against exact zeros; the front holds the trials no "
        "other trial beats on both.",
    )


def _compare_table(rows: list[dict[str, Any]], meta: dict[str, Any], space: list[Any]) -> str:
    picked = [
        (label, next((r for r in rows if r["number"] == meta.get(key)), None))
        for key, label in (("specified", "specified (trial 0)"), ("chosen", "chosen"))
    ]
    picked = [(label, r) for label, r in picked if r is not None]
    if not picked:
        return '<p class="sub">No trial has finished yet.</p>'
    lines = [["trial", *[str(r["number"]) for _, r in picked]]]
    lines.append(["state", *[f"{r['state']} ({r.get('status') or '-'})" for _, r in picked]])
    for name in _param_names(space):
        lines.append([name, *[num(r.get(name), 5) for _, r in picked]])
    for name in ("val_roc_auc", "val_loss", "val_accuracy", "sparsity", "epochs_run"):
        lines.append([name, *[num(_value(r, name)) for _, r in picked]])
    return html_table(["", *[label for label, _ in picked]], lines, num_cols=range(1, 3))


def _test_table(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    chosen = next((r for r in rows if r["number"] == meta.get("chosen")), None)
    test = (chosen or {}).get("test") or {}
    if not test:
        return '<p class="sub">No configuration chosen yet.</p>'
    return html_table(
        ["metric", f"test (trial {chosen['number']})"],
        [[k, num(v)] for k, v in test.items()],
        num_cols=[1],
    )


def _trials_table(rows: list[dict[str, Any]], meta: dict[str, Any], space: list[Any]) -> str:
    names = _param_names(space)
    head = ["trial", "state", *names, *meta["objectives"], "epochs", "note"]
    extra = [o for o in meta["objectives"]]
    body = []
    for r in rows:
        mark = " (specified)" if r["number"] == meta.get("specified") else ""
        mark += " (chosen)" if r["number"] == meta.get("chosen") else ""
        mark += " (Pareto)" if r["number"] in (meta.get("pareto") or []) else ""
        body.append(
            [
                f"{r['number']}{mark}",
                r["state"],
                *[num(r.get(n), 5) for n in names],
                *[num(_value(r, o)) for o in extra],
                num(r.get("epochs_run")),
                r.get("message") or "",
            ]
        )
    numeric = range(2, 2 + len(names) + len(extra) + 1)
    return scrolling(html_table(head, body, num_cols=numeric, what_col=len(head) - 1))


def write_tune_page(
    path: str | Path, rows: list[dict[str, Any]], meta: dict[str, Any], space: list[Any]
) -> Path:
    """Write ``tune.html``: the search's summary, its comparison, plots and trials table.

    Args:
        path: the HTML file.
        rows: one dict per trial (``l1cnn.tune.trial_rows``), with its ``test`` metrics.
        meta: ``tune.json``'s record (objectives, specified, chosen, pareto, importances, ...).
        space: the searched parameters (``l1cnn.tune.Param``).

    Returns:
        ``path`` as a Path.
    """
    objectives = meta["objectives"]
    counts = ", ".join(f"{v} {k}" for k, v in sorted(meta["counts"].items())) or "no trials"
    sub = (
        f"{meta['source']} &middot; study <b>{meta['name']}</b> in {meta['storage']} &middot; "
        f"objective{'s' if len(objectives) > 1 else ''} {', '.join(objectives)} (validation) "
        f"&middot; {counts} of {meta['planned']} planned &middot; "
        f"{meta['epochs_total']} training epochs in all"
    )
    how = (
        "the trial with the best validation objective"
        if len(objectives) == 1
        else f"the sparsest finished trial whose {objectives[0]} is within {meta['within']:g} "
        "of the best"
    )
    figures = []
    if any(r["state"] in ("complete", "pruned") for r in rows):
        figures.append(_history_plot(rows, objectives[0], meta))
        if len(objectives) == 2:
            figures.append(_pareto_plot(rows, meta))
        if meta.get("importances"):
            figures.append(_importance_plot(meta["importances"]))
        figures.append(_slice_plot(rows, objectives[0], space))
    parts = [
        heading("Hyperparameter search", sub),
        section(
            "Specified vs chosen",
            _compare_table(rows, meta, space),
            sub=f"Chosen: {how}. Validation metrics; the search never looked at the test split.",
        ),
        section(
            "Test metrics of the chosen configuration",
            _test_table(rows, meta),
            sub="Measured once on the test split for the chosen configuration, after the "
            "search; not used to choose it.",
        ),
        section("Search", figure_grid(figures)) if figures else "",
        section(
            "Trials",
            _trials_table(rows, meta, space),
            sub="Every trial is a run folder (trials/trial-NNNN) with its own report; pruned "
            "trials keep their history. Space: " + "; ".join(meta["space"]),
        ),
    ]
    return write_page(path, "l1cnn tune", [p for p in parts if p])
