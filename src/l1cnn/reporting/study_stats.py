"""The study's statistics and verdict: per-configuration summaries over seeds, paired differences
against the specified model, and a verdict generated from them by explicit rules.

Reads plain rows (``results.csv`` as dicts); no plotting, no TensorFlow (see ``l1cnn.stats``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from l1cnn import stats
from l1cnn.reporting.page import interval

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
        # Absent from results of older studies: then the defaults, which they all used.
        "image_size": str(row.get("image_size") or ""),
        "lr_schedule": str(row.get("lr_schedule") or "constant"),
        "sampling": str(row.get("sampling") or "none"),
        "augment": str(row.get("augment") or "none"),
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
    for key in ("image_size", "lr_schedule", "sampling"):
        if settings.get(key) != reference.get(key):
            parts.append(f"{key}={settings[key]}")
    if settings.get("augment") != reference.get("augment"):
        parts.append(f"augment: {settings['augment']}")
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
    if any(
        settings.get(k) != reference.get(k)
        for k in ("image_size", "lr_schedule", "sampling", "augment")
    ):
        return None
    return off[0] if len(off) == 1 else None


def fmt_diff(diff: stats.Summary) -> str:
    """A paired difference as ``+mean [+low, +high]`` (no interval when it does not exist)."""
    if diff.n == 0:
        return "-"
    if not math.isfinite(diff.ci_low):
        return f"{diff.mean:+.3f}"
    return f"{diff.mean:+.3f} {interval(diff.ci_low, diff.ci_high, signed=True)}"


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
            f"{fmt_diff(c.differences[PRIMARY])}, so {technique} "
            f"{EFFECT[c.verdicts[PRIMARY]]} on this metric; the train-test accuracy gap was "
            f"{gap_words} ({fmt_diff(c.differences['gap_accuracy'])})."
        )
    return sentences


def _ranking_sentences(table: list[ConfigStats], ref: ConfigStats) -> list[str]:
    """Configurations clearly better or worse than the reference on the primary metric."""
    better, worse = [], []
    for c in table:
        v = c.verdicts.get(PRIMARY)
        if v == stats.BETTER:
            better.append(
                f"'{c.name}' ({describe_change(c.settings, ref.settings)}, "
                f"{fmt_diff(c.differences[PRIMARY])})"
            )
        elif v == stats.WORSE:
            worse.append(f"'{c.name}' ({fmt_diff(c.differences[PRIMARY])})")
    sentences = []
    if better:
        sentences.append(
            "Clearly better test ROC-AUC than the specified model: " + "; ".join(better) + "."
        )
    if worse:
        sentences.append("Clearly worse: " + "; ".join(worse) + ".")
    if ref.summaries[PRIMARY].n >= 2 and not better and not worse:
        sentences.append(
            "No configuration differed from the specified model beyond the "
            "seed-to-seed spread on test ROC-AUC."
        )
    return sentences


def _collapse_and_l1_sentences(table: list[ConfigStats], reference: str) -> list[str]:
    """The collapsed trials by name, and the best ``l1_lambda`` of the sweep (3+ values)."""
    sentences = []
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
            f"test ROC-AUC ({fmt_summary(best.summaries[PRIMARY])})."
        )
    return sentences


def _rejudge_sentences(
    rows: list[dict[str, Any]], table: list[ConfigStats], ref: ConfigStats
) -> list[str]:
    """When the reference collapsed on every seed: the techniques judged again against the
    reference without L1 (if that one learned)."""
    if not ref.seeds or ref.collapsed != len(ref.seeds):
        return []
    alt = next(
        (
            c
            for c in table
            if c.collapsed == 0 and _removed_technique(c.settings, ref.settings) == "L1"
        ),
        None,
    )
    if alt is None:
        return []
    alt_table = configuration_stats(rows, alt.name)
    alt_ref = next(c for c in alt_table if c.name == alt.name)
    return [
        "The specified model collapsed on every seed, so comparisons against it only "
        "show which configurations escape the collapse. Judged instead against "
        f"'{alt.name}' (the specified model without L1, test ROC-AUC "
        f"{alt.summaries[PRIMARY].mean:.3f}):",
        *(
            _technique_sentences(alt_table, alt_ref)
            or ["no configuration differs from it by one technique alone."]
        ),
    ]


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
    sentences += _ranking_sentences(table, ref)
    sentences += _collapse_and_l1_sentences(table, reference)
    sentences += _rejudge_sentences(rows, table, ref)
    return " ".join(sentences)


def fmt_summary(s: stats.Summary, digits: int = 3) -> str:
    """A summary over seeds as ``mean ± sd [low, high]`` (just the mean for one seed)."""
    if s.n == 0:
        return "-"
    if s.n < 2:
        return f"{s.mean:.{digits}f}"
    return f"{s.mean:.{digits}f} ± {s.sd:.{digits}f} {interval(s.ci_low, s.ci_high, digits)}"


def l1_series(table: list[ConfigStats], reference: str) -> list[ConfigStats]:
    """Configurations that differ from the reference in ``l1_lambda`` only (and the reference)."""
    ref = next((c for c in table if c.name == reference), None)
    if ref is None:
        return []
    keys = ("l1_mode", "dropout_rate", "early_stopping", "epochs")
    more = ("image_size", "lr_schedule", "sampling", "augment")  # absent in older results
    same = [
        c
        for c in table
        if all(c.settings[k] == ref.settings[k] for k in keys)
        and all(c.settings.get(k) == ref.settings.get(k) for k in more)
    ]
    return sorted(same, key=lambda c: c.settings["l1_lambda"])
