"""Prediction on image files, folders and arrays with any forward function; no TensorFlow.

A run (``l1cnn.predict``) and an export folder (``l1cnn.exported``) both predict through
:func:`predict_with`, so their preprocessing is the same by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from l1cnn.data import PREDICT_CHUNK, iter_predict_inputs, load_images
from l1cnn.errors import DataError


@dataclass
class Prediction:
    """One image's answer."""

    id: str
    probability: float  # with Monte Carlo dropout: the mean over the passes
    predicted_class: str
    std: float | None = None  # with Monte Carlo dropout: the standard deviation over the passes
    decision: str | None = None  # with abstention: the class, or REFER
    label_set: list[str] | None = None  # with abstention: the conformal set of class names


@dataclass
class PredictResult:
    """Predictions in input order, and the inputs that were skipped as unreadable."""

    predictions: list[Prediction]
    skipped: list[str] = field(default_factory=list)
    threshold: float = 0.5
    coverage: float | None = None  # the abstention's target coverage, when asked for
    mc_samples: int | None = None  # Monte Carlo dropout passes, when asked for


REFER = "refer"  # the decision for an image whose conformal label set is not a single class


def add_decisions(predictions: list[Prediction], names: list[str], q: float) -> None:
    """Fill ``decision`` and ``label_set`` of each prediction from a conformal score threshold.

    Args:
        predictions: answers whose ``probability`` is the run's (calibrated) probability.
        names: [negative, positive] class names.
        q: the split-conformal score threshold (``l1cnn.calibration.threshold_from_scores``).
    """
    from l1cnn.calibration import prediction_sets

    probs = np.array([p.probability for p in predictions], dtype=np.float64)
    has_neg, has_pos = prediction_sets(probs, q)
    for p, neg, pos in zip(predictions, has_neg, has_pos, strict=True):
        p.label_set = [n for n, inside in zip(names, (neg, pos), strict=True) if inside]
        p.decision = p.label_set[0] if len(p.label_set) == 1 else REFER


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def shard_bounds(total: int, k: int, n: int) -> tuple[int, int]:
    """Items ``[lo, hi)`` of shard ``k`` (1-based) of ``n`` over ``total`` items, in order.

    Contiguous, balanced, disjoint and complete: shards 1..n in turn are the whole list.
    """
    if not 1 <= k <= n:
        raise DataError(f"shard {k}/{n}: K must be in 1..{n}")
    return total * (k - 1) // n, total * k // n


def _pixels_like_run(pixels: np.ndarray, shape: tuple[int, int, int], where: str) -> np.ndarray:
    """Array inputs must already have the run's image shape (they are not resized)."""
    if pixels.shape != shape:
        raise DataError(f"{where}: image shape {pixels.shape} differs from the model's {shape}")
    return pixels


def predict_with(
    forward: Callable[[np.ndarray], np.ndarray],
    image_shape: tuple[int, int, int],
    names: list[str],
    cut: float,
    inputs: Iterable[str | Path],
    skip_bad_images: bool = False,
    shard: tuple[int, int] | None = None,
) -> PredictResult:
    """``predict`` with any forward function (pixels float32 -> probabilities (N,)).

    Split out of ``predict`` so an exported model (``l1cnn.export``) predicts image
    files with exactly the same preprocessing as a run.

    Args:
        forward: maps a float32 batch (N, H, W, C) of 0..255 pixels to probabilities (N,),
            or to Monte Carlo samples (N, S): then their mean and standard deviation.
        image_shape: (height, width, channels) the model takes.
        names: [negative, positive] class names.
        cut: the decision threshold.
        inputs: image files, folders (searched recursively) and ``.npz`` files.
        skip_bad_images: skip unreadable images (listed in ``skipped``) instead of failing.
        shard: (K, N): only the K-th (1-based) of N contiguous slices of the expanded inputs
            (:func:`shard_bounds`), so N machines together predict each input once.

    Returns:
        A PredictResult in input order.
    """
    height, width, channels = image_shape
    items: Iterable[tuple[str, Path | np.ndarray]] = iter_predict_inputs(inputs)
    if shard is not None:  # paths only are listed; images are read for this slice alone
        listed = list(items)
        lo, hi = shard_bounds(len(listed), *shard)
        items = listed[lo:hi]

    def prepare(chunk: list[tuple[str, Path | np.ndarray]]) -> tuple[list[str], list, list[str]]:
        """Decode one chunk: (ids, pixels per item or None when skipped, bad-image messages)."""
        files = [(i, src) for i, (_, src) in enumerate(chunk) if isinstance(src, Path)]
        batch: list[np.ndarray | None] = [None] * len(chunk)
        for i, (item_id, src) in enumerate(chunk):
            if not isinstance(src, Path):
                batch[i] = _pixels_like_run(src, (height, width, channels), item_id)
        bad: list[str] = []
        if files:
            images, good, bad = load_images(
                [p for _, p in files], (height, width), channels, skip_bad_images
            )
            for k, g in enumerate(good):
                batch[files[g][0]] = images[k]
        return [item_id for item_id, _ in chunk], batch, bad

    out: list[Prediction] = []
    skipped: list[str] = []
    # Decode the next chunk while the model runs on this one (both release the GIL).
    with ThreadPoolExecutor(max_workers=1) as decoder:
        chunks = _chunks(iter(items), PREDICT_CHUNK)
        first = next(chunks, None)
        pending = decoder.submit(prepare, first) if first is not None else None
        while pending is not None:
            ids, batch, bad = pending.result()
            following = next(chunks, None)
            pending = decoder.submit(prepare, following) if following is not None else None
            skipped += bad
            keep = [i for i, b in enumerate(batch) if b is not None]
            if not keep:
                continue
            probs = forward(np.stack([batch[i] for i in keep]).astype(np.float32))
            stds = probs.std(axis=1) if probs.ndim == 2 else [None] * len(keep)
            probs = probs.mean(axis=1) if probs.ndim == 2 else probs
            for i, p, sd in zip(keep, probs, stds, strict=True):
                std = None if sd is None else float(sd)
                out.append(Prediction(ids[i], float(p), names[int(p >= cut)], std))
    return PredictResult(out, skipped, cut)
