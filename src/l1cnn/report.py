"""Plots (PNG) and the run report (``report.html``, ``report.md``) from a run folder's files.

Imports no TensorFlow: it reads the plain files ``train`` wrote (``history.csv``,
``metrics.json``, ``predictions.csv``, ...) and ``explain.npz`` from ``l1cnn.explain``, draws
with matplotlib's object API (no display, no global pyplot state) and writes atomically.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from l1cnn import runs
from l1cnn.errors import RunError
from l1cnn.evaluate import calibration_bins, pr_points, roc_points

REPORT_HTML = "report.html"
REPORT_MD = "report.md"
PLOTS_DIR = "plots"
EXPLAIN_FILE = "explain.npz"  # written by l1cnn.explain (same name there)
DPI = 110
NEG_COLOR, POS_COLOR, VAL_COLOR, TRAIN_COLOR = "#4C78A8", "#E45756", "#F58518", "#4C78A8"

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
CI_KEYS = ("accuracy", "f1", "roc_auc")


@dataclass
class Plot:
    """One figure: file name, title, one-sentence caption, PNG bytes."""

    name: str
    title: str
    caption: str
    png: bytes = field(repr=False)


@dataclass
class RunFiles:
    """The plain records of a run folder (no model)."""

    path: Path
    config_text: str
    info: dict[str, Any]
    data: dict[str, Any]
    metrics: dict[str, Any]
    history: list[dict[str, float]]
    predictions: dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (labels, probabilities)
    explanation: dict[str, Any] | None

    @property
    def name(self) -> str:
        """The run folder's name, used as the run's label."""
        return self.path.name

    @property
    def threshold(self) -> float:
        """The run's decision threshold (as in ``metrics.json``)."""
        return float(self.metrics["threshold"]["value"])


def _float(value: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def read_run_files(path: str | Path) -> RunFiles:
    """Read everything the report needs from a run folder.

    Args:
        path: the run folder.

    Returns:
        A RunFiles; ``explanation`` is None when ``explain.npz`` is absent.

    Raises:
        RunError: not a finished run, or a record that cannot be read.
    """
    path = runs.check_is_run(path)
    try:
        config_text = (path / runs.CONFIG_FILE).read_text(encoding="utf-8")
        info = runs.read_json(path / runs.RUN_FILE)
        data = runs.read_json(path / runs.DATA_FILE)
        metrics = runs.read_json(path / runs.METRICS_FILE)
        history = [
            {k: _float(v) for k, v in row.items()}
            for row in runs.read_csv(path / runs.HISTORY_FILE)
        ]
        rows = runs.read_csv(path / runs.PREDICTIONS_FILE)
    except FileNotFoundError as exc:
        raise RunError(f"run '{path}' is missing {Path(exc.filename).name}") from None
    except (OSError, ValueError) as exc:
        raise RunError(f"run '{path}' has an unreadable record: {exc}") from None
    predictions = {}
    for split in ("val", "test"):
        chosen = [r for r in rows if r["split"] == split]
        predictions[split] = (
            np.array([int(r["label"]) for r in chosen], dtype=np.int64),
            np.array([float(r["probability"]) for r in chosen]),
        )
    explanation = None
    if (path / EXPLAIN_FILE).exists():
        try:
            with np.load(path / EXPLAIN_FILE, allow_pickle=False) as npz:
                explanation = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            raise RunError(f"'{path / EXPLAIN_FILE}' cannot be read: {exc}") from None
    return RunFiles(path, config_text, info, data, metrics, history, predictions, explanation)


# ---------------------------------------------------------------------------------- plots


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return buf.getvalue()


def _figure(width: float = 5.2, height: float = 3.8) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig


def _style(ax: Any) -> None:
    ax.grid(True, color="#e6e6e6", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _column(history: list[dict[str, float]], key: str) -> np.ndarray:
    return np.array([row.get(key, math.nan) for row in history], dtype=np.float64)


def plot_learning_curves(run: RunFiles) -> Plot:
    """Loss and accuracy per epoch (train vs validation) and the L1 penalty's share of the loss."""
    h = run.history
    epochs = _column(h, "epoch")
    fig = _figure(11, 3.6)
    axes = fig.subplots(1, 3)
    best, stop = run.info.get("best_epoch"), run.info.get("epochs_run")
    panels = [
        (
            axes[0],
            "Loss",
            [
                ("loss", "train (data + L1)", TRAIN_COLOR, "-"),
                ("data_loss", "train data loss", TRAIN_COLOR, ":"),
                ("val_loss", "validation", VAL_COLOR, "-"),
            ],
        ),
        (
            axes[1],
            "Accuracy",
            [
                ("accuracy", "train", TRAIN_COLOR, "-"),
                ("val_accuracy", "validation", VAL_COLOR, "-"),
            ],
        ),
    ]
    for ax, title, lines in panels:
        for key, label, color, style in lines:
            ax.plot(epochs, _column(h, key), style, color=color, label=label, marker=".")
        ax.set_title(title)
        ax.set_xlabel("epoch")
    with np.errstate(invalid="ignore", divide="ignore"):
        share = _column(h, "l1_penalty") / _column(h, "loss")
    axes[2].fill_between(epochs, 0, share, color="#B279A2", alpha=0.35)
    axes[2].plot(epochs, share, color="#B279A2", marker=".", label="L1 penalty / training loss")
    axes[2].set_ylim(0, 1)
    axes[2].set_title("L1 penalty share of training loss")
    axes[2].set_xlabel("epoch")
    for ax in axes:
        _style(ax)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if best:
            ax.axvline(
                best, color="#54A24B", linestyle="--", linewidth=1.2, label=f"best epoch {best}"
            )
        if stop and run.info.get("status") == "early_stopped":
            ax.axvline(
                stop, color="#777777", linestyle=":", linewidth=1.2, label=f"early stop {stop}"
            )
        ax.legend(fontsize=8, frameon=False)
    return Plot(
        "learning_curves",
        "Learning curves",
        "Loss and accuracy per epoch on training and validation data; the dashed green "
        "line marks the best epoch (whose weights are kept), the dotted grey one the "
        "early stop; the right panel shows how much of the training loss is the L1 "
        "penalty rather than the data.",
        _png(fig),
    )


def _operating_point(m: dict[str, Any]) -> tuple[float, float, float, float]:
    cm = m["confusion_matrix"]
    fpr = cm["fp"] / (cm["fp"] + cm["tn"]) if cm["fp"] + cm["tn"] else math.nan
    tpr = cm["tp"] / (cm["tp"] + cm["fn"]) if cm["tp"] + cm["fn"] else math.nan
    return fpr, tpr, m["precision"], m["recall"]


def _both_classes(labels: np.ndarray) -> bool:
    return len(np.unique(labels)) == 2


def plot_roc(run: RunFiles) -> Plot:
    """ROC curves of validation and test with AUC, and the chosen operating point on test."""
    fig = _figure()
    ax = fig.subplots()
    for split, color in (("val", VAL_COLOR), ("test", POS_COLOR)):
        labels, probs = run.predictions[split]
        if _both_classes(labels):
            pts = roc_points(labels, probs)
            auc = run.metrics[split].get("roc_auc")
            ax.plot(pts["fpr"], pts["tpr"], color=color, label=f"{split} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="#bbbbbb", linestyle="--", linewidth=1, label="chance")
    fpr, tpr, _, _ = _operating_point(run.metrics["test"])
    ax.plot(
        [fpr],
        [tpr],
        "o",
        color="black",
        markersize=8,
        label=f"threshold {run.threshold:.3g} on test",
    )
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (recall)")
    ax.set_title("ROC curve")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    _style(ax)
    ax.legend(fontsize=8, loc="lower right", frameon=False)
    return Plot(
        "roc",
        "ROC curve",
        "True positive rate against false positive rate as the threshold sweeps from 1 "
        "to 0; the dot is the chosen threshold on the test split.",
        _png(fig),
    )


def plot_pr(run: RunFiles) -> Plot:
    """Precision-recall curves with average precision, and the operating point on test."""
    fig = _figure()
    ax = fig.subplots()
    for split, color in (("val", VAL_COLOR), ("test", POS_COLOR)):
        labels, probs = run.predictions[split]
        if _both_classes(labels):
            pts = pr_points(labels, probs)
            ap = run.metrics[split].get("pr_auc")
            ax.plot(
                pts["recall"],
                pts["precision"],
                color=color,
                drawstyle="steps-post",
                label=f"{split} (AP {ap:.3f})",
            )
    labels, _ = run.predictions["test"]
    if labels.size:
        ax.axhline(
            labels.mean(),
            color="#bbbbbb",
            linestyle="--",
            linewidth=1,
            label=f"chance (positive rate {labels.mean():.2f})",
        )
    _, _, precision, recall = _operating_point(run.metrics["test"])
    ax.plot(
        [recall],
        [precision],
        "o",
        color="black",
        markersize=8,
        label=f"threshold {run.threshold:.3g} on test",
    )
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("Precision-recall curve")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    _style(ax)
    ax.legend(fontsize=8, loc="lower left", frameon=False)
    return Plot(
        "pr",
        "Precision-recall curve",
        "Precision against recall as the threshold sweeps; AP (average precision) "
        "summarizes the curve, the dot is the chosen threshold on test.",
        _png(fig),
    )


def plot_confusion(run: RunFiles) -> Plot:
    """Test confusion matrix at the chosen threshold, counts and row shares."""
    cm = run.metrics["test"]["confusion_matrix"]
    grid = np.array([[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]], dtype=np.float64)
    rows = grid.sum(axis=1, keepdims=True)
    share = np.divide(grid, rows, out=np.zeros_like(grid), where=rows > 0)
    negative, positive = run.data["class_names"]
    fig = _figure(4.4, 3.8)
    ax = fig.subplots()
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(grid):
        ax.text(
            j,
            i,
            f"{int(count)}\n{share[i, j]:.0%}",
            ha="center",
            va="center",
            fontsize=12,
            color="white" if share[i, j] > 0.6 else "black",
        )
    ax.set_xticks([0, 1], [f"called {negative}", f"called {positive}"])
    ax.set_yticks([0, 1], [f"true {negative}", f"true {positive}"])
    ax.set_title(f"Confusion matrix (test, threshold {run.threshold:.3g})")
    return Plot(
        "confusion",
        "Confusion matrix",
        "Test images by true class (rows) and call (columns) at the chosen threshold, "
        "with each row's share.",
        _png(fig),
    )


def plot_reliability(run: RunFiles) -> Plot:
    """Reliability diagram of the test probabilities (10 bins) with the ECE."""
    labels, probs = run.predictions["test"]
    bins = calibration_bins(labels, probs)
    centers = (bins["edges"][:-1] + bins["edges"][1:]) / 2
    used = bins["count"] > 0
    fig = _figure()
    ax = fig.subplots()
    ax.bar(
        centers[used],
        bins["frac_positive"][used],
        width=0.09,
        color=NEG_COLOR,
        alpha=0.75,
        label="observed positive rate",
    )
    ax.plot(
        bins["mean_prob"][used],
        bins["frac_positive"][used],
        "o",
        color="black",
        markersize=4,
        label="bin mean probability",
    )
    ax.plot([0, 1], [0, 1], color="#bbbbbb", linestyle="--", label="perfect calibration")
    for x, y, n in zip(
        centers[used], bins["frac_positive"][used], bins["count"][used], strict=True
    ):
        ax.text(x, min(y + 0.03, 1.0), f"{int(n)}", ha="center", fontsize=7, color="#555555")
    ece = run.metrics["test"].get("ece")
    ax.set_title("Reliability (test)" + (f", ECE {ece:.3f}" if ece is not None else ""))
    ax.set_xlabel("predicted probability of the positive class")
    ax.set_ylabel("observed share of positives")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.08)
    _style(ax)
    ax.legend(fontsize=8, loc="upper left", frameon=False)
    return Plot(
        "reliability",
        "Reliability diagram",
        "Test images grouped into 10 probability bins (count above each bar): a "
        "calibrated model's bars reach the diagonal.",
        _png(fig),
    )


def plot_probability_histogram(run: RunFiles) -> Plot:
    """Histograms of the test probabilities for each true class, with the threshold."""
    labels, probs = run.predictions["test"]
    negative, positive = run.data["class_names"]
    fig = _figure()
    ax = fig.subplots()
    edges = np.linspace(0, 1, 26)
    for cls, name, color in ((0, negative, NEG_COLOR), (1, positive, POS_COLOR)):
        counts, _ = np.histogram(probs[labels == cls], bins=edges)
        ax.stairs(
            counts,
            edges,
            fill=True,
            alpha=0.6,
            color=color,
            label=f"true {name} ({int((labels == cls).sum())})",
        )
    ax.axvline(run.threshold, color="black", linestyle="--", label=f"threshold {run.threshold:.3g}")
    ax.set_xlabel("predicted probability of the positive class")
    ax.set_ylabel("test images")
    ax.set_title("Predicted probabilities by true class (test)")
    _style(ax)
    ax.legend(fontsize=8, frameon=False)
    return Plot(
        "probabilities",
        "Probabilities by class",
        "How the test probabilities of each true class spread: good separation puts "
        "the two humps on either side of the threshold.",
        _png(fig),
    )


def plot_threshold_sweep(run: RunFiles) -> Plot:
    """Recall, specificity, precision and F1 on validation against the threshold."""
    labels, probs = run.predictions["val"]
    cuts = np.linspace(0, 1, 201)
    called = probs[None, :] >= cuts[:, None]
    pos = labels[None, :] == 1
    tp, fp = (called & pos).sum(axis=1), (called & ~pos).sum(axis=1)
    n_pos, n_neg = pos.sum(), (~pos).sum()
    fn = n_pos - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        curves = {
            "recall": tp / n_pos,
            "specificity": (n_neg - fp) / n_neg,
            "precision": np.where(tp + fp > 0, tp / (tp + fp), np.nan),
            "F1": np.where(tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan),
        }
    fig = _figure()
    ax = fig.subplots()
    for (name, values), color in zip(
        curves.items(), (POS_COLOR, NEG_COLOR, "#54A24B", "#B279A2"), strict=True
    ):
        ax.plot(cuts, values, color=color, label=name)
    rule = run.metrics["threshold"].get("rule")
    ax.axvline(
        run.threshold,
        color="black",
        linestyle="--",
        label=f"threshold {run.threshold:.3g} ({rule})",
    )
    ax.set_xlabel("threshold")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Metrics against the threshold (validation)")
    _style(ax)
    ax.legend(fontsize=8, loc="lower center", frameon=False, ncol=2)
    return Plot(
        "threshold",
        "Threshold choice",
        "Recall, specificity, precision and F1 on the validation split for every "
        "threshold; the dashed line is the threshold the run's rule chose there.",
        _png(fig),
    )


def plot_weights(run: RunFiles) -> Plot | None:
    """Per-layer histograms of |w| (log scale) with the share of near-zero weights."""
    exp = run.explanation
    if exp is None:
        return None
    names = [str(n) for n in exp["layer_names"]]
    cut = float(exp["near_zero"])
    edges = np.log10(exp["weight_edges"])  # drawn on a linear log10 axis (log axes are slow)
    fig = _figure(2.9 * len(names), 3.2)
    axes = np.atleast_1d(fig.subplots(1, len(names)))
    ticks = np.arange(math.ceil(edges[0]), math.floor(edges[-1]) + 1, 2)
    for i, (ax, name) in enumerate(zip(axes, names, strict=True)):
        ax.stairs(exp["weight_counts"][i], edges, fill=True, color="#72B7B2")
        ax.axvline(math.log10(cut), color=POS_COLOR, linestyle="--", linewidth=1)
        ax.set_xticks(ticks, [f"1e{t:d}" for t in ticks], fontsize=7)
        ax.set_title(
            f"{name}: {int(exp['layer_sizes'][i]):,} weights\n"
            f"{float(exp['near_zero_fraction'][i]):.1%} below {cut:g}",
            fontsize=9,
        )
        ax.set_xlabel(
            f"|w| (log scale; under {10 ** edges[0]:g} drawn at {10 ** edges[0]:g})", fontsize=7
        )
        _style(ax)
    return Plot(
        "weights",
        "Weight magnitudes",
        f"Histogram of |w| per layer on a log scale; the red line is {cut:g}, and the "
        "share of weights below it is what L1 has (nearly) switched off.",
        _png(fig),
    )


TILE = 120  # pixels per image side in the mosaics (nearest-neighbour upscaling)
LABEL_ROWS = 34  # pixels of caption space above each mosaic row


def _rgb(image: np.ndarray) -> np.ndarray:
    """Raw pixels (H, W, 1 or 3) as float RGB in [0, 1]."""
    image = np.clip(np.asarray(image, dtype=np.float64), 0, 255) / 255.0
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def _heat(rgb: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """Blend a [0, 1] map over an RGB image with the inferno colormap."""
    from matplotlib import colormaps

    colored = colormaps["inferno"](np.clip(heat, 0, 1))[..., :3]
    return 0.5 * rgb + 0.5 * colored


def _mosaic(tiles: list[np.ndarray], cols: int) -> np.ndarray:
    """Tiles (RGB, same size) upscaled and laid out in rows, with caption space above each."""
    h, w = tiles[0].shape[:2]
    factor = max(1, TILE // max(h, w))
    side_h, side_w = h * factor, w * factor
    rows = math.ceil(len(tiles) / cols)
    gap = 6
    out = np.ones((rows * (side_h + LABEL_ROWS + gap), cols * (side_w + gap) - gap, 3))
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        big = np.repeat(np.repeat(tile, factor, axis=0), factor, axis=1)
        top, left = r * (side_h + LABEL_ROWS + gap) + LABEL_ROWS, c * (side_w + gap)
        out[top : top + side_h, left : left + side_w] = big
    return out


def _mosaic_figure(tiles: list[np.ndarray], cols: int, labels: list[tuple[str, str]]) -> Figure:
    """One imshow of the whole mosaic (far faster than one axes per image), labels on top."""
    grid = _mosaic(tiles, cols)
    h, w = tiles[0].shape[:2]
    factor = max(1, TILE // max(h, w))
    dpi = DPI
    fig = Figure(figsize=(grid.shape[1] / dpi, grid.shape[0] / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(grid, interpolation="nearest")
    ax.axis("off")
    for k, (text, color) in enumerate(labels):
        r, c = divmod(k, cols)
        x = c * (w * factor + 6) + w * factor / 2
        y = r * (h * factor + LABEL_ROWS + 6) + LABEL_ROWS - 3
        ax.text(x, y, text, ha="center", va="bottom", fontsize=8.5, color=color, linespacing=1.1)
    return fig


def plot_wrong(run: RunFiles) -> Plot | None:
    """The most confidently wrong test images with their probability and true class."""
    exp = run.explanation
    if exp is None:
        return None
    images = exp["wrong_images"]
    names = run.data["class_names"]
    caption = (
        "The test images the model got wrong with the most confidence (p = predicted "
        "probability of the positive class)."
    )
    if len(images) == 0:
        fig = _figure(4, 1)
        ax = fig.subplots()
        ax.axis("off")
        ax.text(0.5, 0.5, "No wrong calls on the test split.", ha="center", va="center")
        return Plot("wrong", "Most confidently wrong", caption, _png(fig))
    labels = [
        (f"true {names[int(y)]}\np={float(p):.2f}", "black")
        for y, p in zip(exp["wrong_labels"], exp["wrong_probs"], strict=True)
    ]
    fig = _mosaic_figure([_rgb(i) for i in images], min(8, len(images)), labels)
    return Plot("wrong", "Most confidently wrong", caption, _png(fig))


def plot_saliency(run: RunFiles) -> Plot | None:
    """Grad-CAM overlays of a few correct and wrong test images."""
    exp = run.explanation
    if exp is None or len(exp["saliency_images"]) == 0:
        return None
    images, maps = exp["saliency_images"], exp["saliency_maps"]
    names = run.data["class_names"]
    tiles = [_rgb(i) for i in images] + [
        _heat(_rgb(i), m) for i, m in zip(images, maps, strict=True)
    ]
    labels = []
    for ok, y, p in zip(
        exp["saliency_correct"], exp["saliency_labels"], exp["saliency_probs"], strict=True
    ):
        labels.append(
            (
                f"{'correct' if ok else 'WRONG'}\ntrue {names[int(y)]}, p={float(p):.2f}",
                "#2a7a2a" if ok else "#b22222",
            )
        )
    labels += [("Grad-CAM", "#555555")] * len(images)
    fig = _mosaic_figure(tiles, len(images), labels)
    return Plot(
        "saliency",
        "Saliency (Grad-CAM)",
        "Top: test images; bottom: Grad-CAM on the last convolution, bright where the "
        "image pushed the model toward the class it called.",
        _png(fig),
    )


# --- augmentation grid (issue 14): drawn by l1cnn.augment at training time, shown as is ---
def plot_augmented_samples(run: RunFiles) -> Plot | None:
    """The run's grid of augmented training images (``augment_samples.png``), if any."""
    path = run.path / "augment_samples.png"
    if not path.is_file():
        return None
    caption = "Training images (left) and four random augmentations of each (training only)."
    return Plot("augmented_samples", "Augmented training samples", caption, path.read_bytes())


# --- end augmentation grid ---
PLOTTERS: list[Callable[[RunFiles], Plot | None]] = [
    plot_learning_curves,
    plot_roc,
    plot_pr,
    plot_confusion,
    plot_reliability,
    plot_probability_histogram,
    plot_threshold_sweep,
    plot_weights,
    plot_wrong,
    plot_saliency,
    plot_augmented_samples,
]


def make_plots(run: RunFiles) -> list[Plot]:
    """Every plot the run's files allow, in report order."""
    return [plot for plotter in PLOTTERS if (plot := plotter(run)) is not None]


# --------------------------------------------------------------------------------- tables

CSS = """
body { font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: #222; background: #f4f5f7; margin: 0; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 32px 0 12px; border-bottom: 2px solid #dde1e6; padding-bottom: 4px; }
.sub { color: #666; margin: 0 0 18px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { background: #fff; border-radius: 8px; padding: 12px 16px; min-width: 130px;
        box-shadow: 0 1px 3px rgba(0,0,0,.08); }
.card .v { font-size: 24px; font-weight: 600; }
.card .k { color: #666; font-size: 13px; }
.warn { background: #fff4e5; border-left: 4px solid #f0a030; padding: 10px 14px; margin: 14px 0;
        border-radius: 4px; }
table { border-collapse: collapse; background: #fff; border-radius: 8px; overflow: hidden;
        box-shadow: 0 1px 3px rgba(0,0,0,.08); font-size: 14px; }
th, td { padding: 6px 12px; text-align: left; border-bottom: 1px solid #eceef1;
         vertical-align: top; }
th { background: #f0f2f5; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.what { color: #555; font-size: 13px; }
.ci { color: #777; font-size: 12px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(500px, 1fr)); gap: 16px; }
figure { background: #fff; margin: 0; padding: 12px; border-radius: 8px;
         box-shadow: 0 1px 3px rgba(0,0,0,.08); }
figure.wide { grid-column: 1 / -1; }
figure img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
figcaption { color: #555; font-size: 13px; margin-top: 6px; }
figcaption b { color: #222; }
pre { background: #fff; padding: 12px 16px; border-radius: 8px; overflow-x: auto;
      box-shadow: 0 1px 3px rgba(0,0,0,.08); font-size: 13px; }
.two { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; align-items: start; }
@media (max-width: 900px) { .two { grid-template-columns: 1fr; } }
footer { color: #888; font-size: 12px; margin-top: 36px; }
"""
WIDE_PLOTS = {"learning_curves", "weights", "wrong", "saliency", "compare_learning"}


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ci(m: dict[str, Any], key: str) -> str | None:
    interval = (m.get("ci") or {}).get(key)
    if not interval:
        return None
    return f"[{interval[0]:.3f}, {interval[1]:.3f}]"


def metric_rows(metrics: dict[str, Any], splits: Sequence[str]) -> list[list[str]]:
    """Rows ``[label, value per split (with 95% CI where known)..., description]``."""
    rows = []
    for key, label, what in METRICS:
        if not any(key in metrics.get(s, {}) for s in splits):
            continue
        cells = []
        for s in splits:
            m = metrics.get(s, {})
            value, ci = _num(m.get(key)), _ci(m, key)
            cells.append(value + (f" {ci}" if ci else ""))
        rows.append([label, *cells, what])
    return rows


def _html_table(
    head: list[str], rows: list[list[str]], num_cols: set[int], what_col: int | None = None
) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            text = html.escape(str(cell))
            if i in num_cols and " [" in text:
                value, ci = text.split(" [", 1)
                text = f'{value} <span class="ci">[{ci}</span>'
            cls = ' class="num"' if i in num_cols else ' class="what"' if i == what_col else ""
            cells.append(f"<td{cls}>{text}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out) + "</table>"


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    def esc(text: Any) -> str:
        return str(text).replace("|", "\\|")

    lines = ["| " + " | ".join(map(esc, head)) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in rows]
    return "\n".join(lines)


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
    versions = i.get("versions", {})
    if versions:
        rows.append(
            ["versions", ", ".join(f"{k} {v}" for k, v in versions.items() if k != "platform")]
        )
    return rows


def _headline(m: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (label, _num(m.get(key)))
        for key, label in (
            ("accuracy", "test accuracy"),
            ("roc_auc", "test ROC-AUC"),
            ("recall", "test recall"),
            ("specificity", "test specificity"),
            ("f1", "test F1"),
        )
    ]


# -------------------------------------------------------------------------------- writers


def _b64(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figure_html(plot: Plot) -> str:
    wide = ' class="wide"' if plot.name in WIDE_PLOTS else ""
    return (
        f'<figure{wide}><img src="{_b64(plot.png)}" alt="{html.escape(plot.title)}">'
        f"<figcaption><b>{html.escape(plot.title)}.</b> {html.escape(plot.caption)}"
        "</figcaption></figure>"
    )


def _page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>"
        f"<body><main>\n{body}\n<footer>Written by l1cnn on "
        f"{dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}; self-contained (images "
        "embedded, no scripts, no network).</footer></main></body></html>\n"
    )


def render_html(run: RunFiles, plots: list[Plot]) -> str:
    """The self-contained report page of one run."""
    m = run.metrics
    splits = [s for s in ("train", "val", "test") if s in m]
    cards = "".join(
        f'<div class="card"><div class="v">{html.escape(v)}</div>'
        f'<div class="k">{html.escape(k)}</div></div>'
        for k, v in _headline(m["test"])
    )
    diagnosis = m.get("diagnosis") or {}
    warn = ""
    if diagnosis.get("collapsed"):
        warn = (
            f'<div class="warn"><b>Warning:</b> {html.escape("; ".join(diagnosis["reasons"]))}.'
            f" {html.escape(diagnosis.get('advice') or '')}</div>"
        )
    note = ""
    if run.explanation is None:
        note = (
            '<div class="warn">No <code>explain.npz</code> in this run: weight, wrong-image '
            "and saliency plots are missing (run <code>l1cnn report RUN</code>).</div>"
        )
    metrics_table = _html_table(
        ["metric", *splits, "what it means"],
        metric_rows(m, splits),
        set(range(1, len(splits) + 1)),
        len(splits) + 1,
    )
    body = f"""
<h1>l1cnn run: {html.escape(run.name)}</h1>
<p class="sub">{html.escape(str(run.data.get("name")))}: {html.escape(run.data["class_names"][1])}
(positive) vs {html.escape(run.data["class_names"][0])}; threshold
{run.threshold:.4g} ({html.escape(str(m["threshold"].get("rule")))}) chosen on validation;
folder <code>{html.escape(str(run.path))}</code></p>
<div class="cards">{cards}</div>
{warn}{note}
<h2>Metrics</h2>
<p class="sub">At the chosen threshold; brackets are 95% bootstrap intervals
(1000 resamples of the images, seeded).</p>
{metrics_table}
<h2>Plots</h2>
<div class="grid">
{"".join(_figure_html(p) for p in plots)}
</div>
<h2>Data and training</h2>
<div class="two"><div>{_html_table(["data", ""], data_rows(run), set())}</div>
<div>{_html_table(["training", ""], run_rows(run), set())}</div></div>
<h2>Config</h2>
<pre>{html.escape(run.config_text)}</pre>
"""
    return _page(f"l1cnn report: {run.name}", body)


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
        _md_table(["metric", *splits, "what it means"], metric_rows(m, splits)),
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
        _md_table(["data", ""], data_rows(run)),
        "",
        "## Training",
        "",
        _md_table(["training", ""], run_rows(run)),
        "",
        "## Config",
        "",
        "```toml",
        run.config_text.rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def _write(path: Path, data: bytes) -> None:
    try:
        runs.atomic_write_bytes(path, data)
    except OSError as exc:
        raise RunError(f"cannot write '{path}': {exc.strerror}") from None


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
        _write(plot_dir / f"{p.name}.png", p.png)
    _write(run.path / REPORT_MD, render_markdown(run, plots).encode("utf-8"))
    _write(run.path / REPORT_HTML, render_html(run, plots).encode("utf-8"))
    return run.path / REPORT_HTML


# -------------------------------------------------------------------------------- compare

COLORS = ["#4C78A8", "#E45756", "#54A24B", "#F58518", "#B279A2", "#72B7B2", "#9D755D", "#FF9DA6"]


def _flat_config(text: str) -> dict[str, Any]:
    import tomllib

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
    fig = _figure(11, 3.8)
    axes = fig.subplots(1, 2)
    for r, label, color in zip(runs_, labels, COLORS * 8, strict=False):
        epochs = _column(r.history, "epoch")
        axes[0].plot(epochs, _column(r.history, "val_loss"), color=color, marker=".", label=label)
        axes[0].plot(epochs, _column(r.history, "loss"), color=color, linestyle=":", alpha=0.7)
        axes[1].plot(
            epochs, _column(r.history, "val_accuracy"), color=color, marker=".", label=label
        )
        axes[1].plot(epochs, _column(r.history, "accuracy"), color=color, linestyle=":", alpha=0.7)
    for ax, title in zip(axes, ("Loss", "Accuracy"), strict=True):
        ax.set_title(f"{title} (solid: validation, dotted: train)")
        ax.set_xlabel("epoch")
        _style(ax)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8, frameon=False)
    return Plot(
        "compare_learning",
        "Learning curves",
        "Validation (solid) and training (dotted) loss and accuracy per epoch for each run.",
        _png(fig),
    )


def plot_compare_roc(runs_: Sequence[RunFiles], labels: Sequence[str]) -> Plot:
    """Test ROC curves of every run (from predictions.csv), with operating points."""
    fig = _figure(5.6, 4.4)
    ax = fig.subplots()
    for r, label, color in zip(runs_, labels, COLORS * 8, strict=False):
        y, p = r.predictions["test"]
        if _both_classes(y):
            pts = roc_points(y, p)
            auc = r.metrics["test"].get("roc_auc")
            ax.plot(pts["fpr"], pts["tpr"], color=color, label=f"{label} (AUC {_num(auc)})")
            fpr, tpr, _, _ = _operating_point(r.metrics["test"])
            ax.plot([fpr], [tpr], "o", color=color)
    ax.plot([0, 1], [0, 1], color="#bbbbbb", linestyle="--", linewidth=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC curves (test; dots: each run's threshold)")
    _style(ax)
    ax.legend(fontsize=8, loc="lower right", frameon=False)
    return Plot(
        "compare_roc",
        "ROC curves",
        "Test ROC curves of each run from its predictions.csv; the dot is the run's own threshold.",
        _png(fig),
    )


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
    diff_html = (
        _html_table(["config key", *labels], diff, set())
        if diff
        else "<p>The runs have the same config.</p>"
    )
    metric_table = []
    for key, label, _what in METRICS:
        metric_table.append(
            [
                f"{label}",
                *[
                    _num(r.metrics["test"].get(key))
                    + (f" {_ci(r.metrics['test'], key)}" if _ci(r.metrics["test"], key) else "")
                    for r in runs_
                ],
            ]
        )
    extra = [
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
    plots = [plot_compare_learning(runs_, labels), plot_compare_roc(runs_, labels)]
    body = f"""
<h1>l1cnn: {len(runs_)} runs compared</h1>
<p class="sub">{html.escape(", ".join(str(r.path) for r in runs_))}</p>
<h2>Config differences</h2>
{diff_html}
<h2>Test metrics</h2>
<p class="sub">Each at its run's own threshold; brackets are 95% bootstrap intervals.</p>
{_html_table(["metric", *labels], metric_table + extra, set(range(1, len(runs_) + 1)))}
<h2>Curves</h2>
<div class="grid">{"".join(_figure_html(p) for p in plots)}</div>
"""
    _write(out, _page("l1cnn compare", body).encode("utf-8"))
    return out
