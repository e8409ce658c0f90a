"""The ten plots of a run's report, drawn from its plain files (``RunFiles``).

Each plotter takes a RunFiles and returns a :class:`~l1cnn.reporting.figures.Plot` (or None when
the run's files do not allow it); :func:`make_plots` draws every one the run allows.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from l1cnn.evaluate import calibration_bins, pr_points, roc_points
from l1cnn.reporting.figures import (
    NEG_COLOR,
    POS_COLOR,
    TRAIN_COLOR,
    VAL_COLOR,
    Plot,
    heat_overlay,
    integer_ticks,
    message_figure,
    mosaic_figure,
    new_figure,
    png_bytes,
    rgb,
    style_axes,
)
from l1cnn.reporting.run_files import RunFiles, both_classes, column, operating_point


def plot_learning_curves(run: RunFiles) -> Plot:
    """Loss and accuracy per epoch (train vs validation) and the L1 penalty's share of the loss."""
    h = run.history
    epochs = column(h, "epoch")
    fig = new_figure(11, 3.6)
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
            ax.plot(epochs, column(h, key), style, color=color, label=label, marker=".")
        ax.set_title(title)
        ax.set_xlabel("epoch")
    with np.errstate(invalid="ignore", divide="ignore"):
        share = column(h, "l1_penalty") / column(h, "loss")
    axes[2].fill_between(epochs, 0, share, color="#B279A2", alpha=0.35)
    axes[2].plot(epochs, share, color="#B279A2", marker=".", label="L1 penalty / training loss")
    axes[2].set_ylim(0, 1)
    axes[2].set_title("L1 penalty share of training loss")
    axes[2].set_xlabel("epoch")
    for ax in axes:
        style_axes(ax)
        integer_ticks(ax)
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
        png_bytes(fig),
    )


def plot_roc(run: RunFiles) -> Plot:
    """ROC curves of validation and test with AUC, and the chosen operating point on test."""
    fig = new_figure()
    ax = fig.subplots()
    for split, color in (("val", VAL_COLOR), ("test", POS_COLOR)):
        labels, probs = run.predictions[split]
        if both_classes(labels):
            pts = roc_points(labels, probs)
            auc = run.metrics[split].get("roc_auc")
            ax.plot(pts["fpr"], pts["tpr"], color=color, label=f"{split} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="#bbbbbb", linestyle="--", linewidth=1, label="chance")
    fpr, tpr, _, _ = operating_point(run.metrics["test"])
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
    style_axes(ax)
    ax.legend(fontsize=8, loc="lower right", frameon=False)
    return Plot(
        "roc",
        "ROC curve",
        "True positive rate against false positive rate as the threshold sweeps from 1 "
        "to 0; the dot is the chosen threshold on the test split.",
        png_bytes(fig),
    )


def plot_pr(run: RunFiles) -> Plot:
    """Precision-recall curves with average precision, and the operating point on test."""
    fig = new_figure()
    ax = fig.subplots()
    for split, color in (("val", VAL_COLOR), ("test", POS_COLOR)):
        labels, probs = run.predictions[split]
        if both_classes(labels):
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
    _, _, precision, recall = operating_point(run.metrics["test"])
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
    style_axes(ax)
    ax.legend(fontsize=8, loc="lower left", frameon=False)
    return Plot(
        "pr",
        "Precision-recall curve",
        "Precision against recall as the threshold sweeps; AP (average precision) "
        "summarizes the curve, the dot is the chosen threshold on test.",
        png_bytes(fig),
    )


def plot_confusion(run: RunFiles) -> Plot:
    """Test confusion matrix at the chosen threshold, counts and row shares."""
    cm = run.metrics["test"]["confusion_matrix"]
    grid = np.array([[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]], dtype=np.float64)
    rows = grid.sum(axis=1, keepdims=True)
    share = np.divide(grid, rows, out=np.zeros_like(grid), where=rows > 0)
    negative, positive = run.data["class_names"]
    fig = new_figure(4.4, 3.8)
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
        png_bytes(fig),
    )


def plot_reliability(run: RunFiles) -> Plot:
    """Reliability diagram of the test probabilities (10 bins) with the ECE."""
    labels, probs = run.predictions["test"]
    bins = calibration_bins(labels, probs)
    centers = (bins["edges"][:-1] + bins["edges"][1:]) / 2
    used = bins["count"] > 0
    fig = new_figure()
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
    if run.uncalibrated is not None:  # temperature-scaled: the model's own probabilities too
        raw = calibration_bins(labels, run.uncalibrated["test"])
        kept = raw["count"] > 0
        ax.plot(
            raw["mean_prob"][kept],
            raw["frac_positive"][kept],
            "x--",
            color="#999999",
            markersize=5,
            label="before temperature scaling",
        )
    ax.plot([0, 1], [0, 1], color="#bbbbbb", linestyle="--", label="perfect calibration")
    for x, y, n in zip(
        centers[used], bins["frac_positive"][used], bins["count"][used], strict=True
    ):
        ax.text(x, min(y + 0.03, 1.0), f"{int(n)}", ha="center", fontsize=7, color="#555555")
    ece = run.metrics["test"].get("ece")
    title = "Reliability (test)" + (f", ECE {ece:.3f}" if ece is not None else "")
    calibration = run.metrics.get("calibration")
    if calibration and ece is not None:  # issue 15: before -> after temperature scaling
        before = calibration["before"]["test"]["ece"]
        title = (
            f"Reliability (test), T={calibration['temperature']:.2f}: ECE {before:.3f} -> {ece:.3f}"
        )
    ax.set_title(title)
    ax.set_xlabel("predicted probability of the positive class")
    ax.set_ylabel("observed share of positives")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.08)
    style_axes(ax)
    ax.legend(fontsize=8, loc="upper left", frameon=False)
    return Plot(
        "reliability",
        "Reliability diagram",
        "Test images grouped into 10 probability bins (count above each bar): a "
        "calibrated model's bars reach the diagonal.",
        png_bytes(fig),
    )


def plot_probability_histogram(run: RunFiles) -> Plot:
    """Histograms of the test probabilities for each true class, with the threshold."""
    labels, probs = run.predictions["test"]
    negative, positive = run.data["class_names"]
    fig = new_figure()
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
    style_axes(ax)
    ax.legend(fontsize=8, frameon=False)
    return Plot(
        "probabilities",
        "Probabilities by class",
        "How the test probabilities of each true class spread: good separation puts "
        "the two humps on either side of the threshold.",
        png_bytes(fig),
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
    fig = new_figure()
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
    style_axes(ax)
    ax.legend(fontsize=8, loc="lower center", frameon=False, ncol=2)
    return Plot(
        "threshold",
        "Threshold choice",
        "Recall, specificity, precision and F1 on the validation split for every "
        "threshold; the dashed line is the threshold the run's rule chose there.",
        png_bytes(fig),
    )


def plot_weights(run: RunFiles) -> Plot | None:
    """Per-layer histograms of |w| (log scale) with the share of near-zero weights."""
    exp = run.explanation
    if exp is None:
        return None
    names = [str(n) for n in exp["layer_names"]]
    cut = float(exp["near_zero"])
    edges = np.log10(exp["weight_edges"])  # drawn on a linear log10 axis (log axes are slow)
    fig = new_figure(2.9 * len(names), 3.2)
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
        style_axes(ax)
    return Plot(
        "weights",
        "Weight magnitudes",
        f"Histogram of |w| per layer on a log scale; the red line is {cut:g}, and the "
        "share of weights below it is what L1 has (nearly) switched off.",
        png_bytes(fig),
    )


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
        fig = message_figure("No wrong calls on the test split.")
        return Plot("wrong", "Most confidently wrong", caption, png_bytes(fig))
    labels = [
        (f"true {names[int(y)]}\np={float(p):.2f}", "black")
        for y, p in zip(exp["wrong_labels"], exp["wrong_probs"], strict=True)
    ]
    fig = mosaic_figure([rgb(i) for i in images], min(8, len(images)), labels)
    return Plot("wrong", "Most confidently wrong", caption, png_bytes(fig))


def plot_saliency(run: RunFiles) -> Plot | None:
    """Grad-CAM overlays of a few correct and wrong test images."""
    exp = run.explanation
    if exp is None or len(exp["saliency_images"]) == 0:
        return None
    images, maps = exp["saliency_images"], exp["saliency_maps"]
    names = run.data["class_names"]
    tiles = [rgb(i) for i in images] + [
        heat_overlay(rgb(i), m) for i, m in zip(images, maps, strict=True)
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
    fig = mosaic_figure(tiles, len(images), labels)
    return Plot(
        "saliency",
        "Saliency (Grad-CAM)",
        "Top: test images; bottom: Grad-CAM on the last convolution, bright where the "
        "image pushed the model toward the class it called.",
        png_bytes(fig),
    )


def plot_augmented_samples(run: RunFiles) -> Plot | None:
    """The run's grid of augmented training images (``augment_samples.png``), if any.

    Drawn by ``l1cnn.augment`` at training time (it needs the augmentation layers), shown as is.
    """
    path = run.path / "augment_samples.png"
    if not path.is_file():
        return None
    caption = "Training images (left) and four random augmentations of each (training only)."
    return Plot("augmented_samples", "Augmented training samples", caption, path.read_bytes())


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
