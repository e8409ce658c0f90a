"""Use a saved run: ``predict`` on new images and ``evaluate_run`` on its test split or other data.

Images are preprocessed exactly as in training (``data.load_image``) and processed in chunks,
so thousands of images run without memory growth.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import keras
import numpy as np

from l1cnn.data import (
    PREDICT_CHUNK,
    Dataset,
    Split,
    concat_splits,
    image_read_errors,
    iter_predict_inputs,
    load_data,
    load_images,
    make_tf_dataset,
)
from l1cnn.errors import DataError
from l1cnn.evaluate import compute_metrics
from l1cnn.loop import make_predict_fn, predict_dataset
from l1cnn.runs import Run, load_run


def predict_split(model: keras.Model, split: Split) -> np.ndarray:
    """Probabilities for every image of a split, PREDICT_CHUNK images per call.

    In-memory pixels go to the compiled function directly (1.2x faster than through tf.data,
    benchmarks/RESULTS.md); streamed ones through tf.data, which decodes them in parallel.
    """
    forward = make_predict_fn(model)
    if not split.streamed:
        pixels = split.images
        chunks = [
            forward(pixels[i : i + PREDICT_CHUNK]) for i in range(0, len(split), PREDICT_CHUNK)
        ]
        return np.concatenate(chunks) if chunks else np.zeros((0,), np.float32)
    with image_read_errors():
        return predict_dataset(forward, make_tf_dataset(split, PREDICT_CHUNK))


@dataclass
class Prediction:
    """One image's answer."""

    id: str
    probability: float
    predicted_class: str


@dataclass
class PredictResult:
    """Predictions in input order, and the inputs that were skipped as unreadable."""

    predictions: list[Prediction]
    skipped: list[str] = field(default_factory=list)
    threshold: float = 0.5


def _as_run(run: Run | str | Path) -> Run:
    return run if isinstance(run, Run) else load_run(run)


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _pixels_like_run(pixels: np.ndarray, shape: tuple[int, int, int], where: str) -> np.ndarray:
    """Array inputs must already have the run's image shape (they are not resized)."""
    if pixels.shape != shape:
        raise DataError(f"{where}: image shape {pixels.shape} differs from the model's {shape}")
    return pixels


def predict(
    run: Run | str | Path,
    inputs: Iterable[str | Path],
    skip_bad_images: bool = False,
    threshold: float | None = None,
) -> PredictResult:
    """Positive-class probabilities and class names for image files, folders or ``.npz`` files.

    Args:
        run: a Run or its folder.
        inputs: image files, folders (searched recursively) and ``.npz`` files.
        skip_bad_images: skip unreadable images (listed in ``skipped``) instead of failing.
        threshold: override the run's decision threshold.
    """
    run = _as_run(run)
    cut = run.threshold if threshold is None else threshold
    return predict_with(
        make_predict_fn(run.model), run.image_shape, run.class_names, cut, inputs, skip_bad_images
    )


def predict_with(
    forward: Callable[[np.ndarray], np.ndarray],
    image_shape: tuple[int, int, int],
    names: list[str],
    cut: float,
    inputs: Iterable[str | Path],
    skip_bad_images: bool = False,
) -> PredictResult:
    """``predict`` with any forward function (pixels float32 -> probabilities (N,)).

    Split out of ``predict`` so an exported model (``l1cnn.export``) predicts image
    files with exactly the same preprocessing as a run.

    Args:
        forward: maps a float32 batch (N, H, W, C) of 0..255 pixels to probabilities (N,).
        image_shape: (height, width, channels) the model takes.
        names: [negative, positive] class names.
        cut: the decision threshold.
        inputs: image files, folders (searched recursively) and ``.npz`` files.
        skip_bad_images: skip unreadable images (listed in ``skipped``) instead of failing.

    Returns:
        A PredictResult in input order.
    """
    height, width, channels = image_shape

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
        chunks = _chunks(iter_predict_inputs(inputs), PREDICT_CHUNK)
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
            for i, p in zip(keep, probs, strict=True):
                out.append(Prediction(ids[i], float(p), names[int(p >= cut)]))
    return PredictResult(out, skipped, cut)


def reload_run_data(run: Run) -> Dataset:
    """The run's own data and split, reloaded and checked against the recorded fingerprint."""
    dataset = load_data(run.info["source"], run.config.data, run.config.train.seed)
    if dataset.fingerprint() != run.data["fingerprint"]:
        raise DataError(
            f"the data at '{run.info['source']}' has changed since run '{run.path}' was trained "
            "(fingerprint differs); pass --data to evaluate on it anyway"
        )
    return dataset


def load_other_data(
    run: Run, source: str | Path, skip_bad_images: bool = False
) -> tuple[Split, str, list[str]]:
    """Images of ``source`` prepared like the run's: its test split if it has one, else all.

    Returns (split, what it is, messages for the bad images skipped with ``skip_bad_images``).
    """
    data_config = replace(
        run.config.data, val_fraction=0.15, test_fraction=0.15, skip_bad_images=skip_bad_images
    )  # Evaluate can skip too
    dataset = load_data(source, data_config, run.config.train.seed, make_missing_splits=False)
    if dataset.kind == "folder" and sorted(dataset.class_names) != sorted(run.class_names):
        raise DataError(
            f"'{source}' has classes {sorted(dataset.class_names)}, the run was trained on "
            f"{sorted(run.class_names)}"
        )
    if dataset.image_shape != run.image_shape:
        raise DataError(
            f"'{source}' has images of shape {dataset.image_shape}, the model takes "
            f"{run.image_shape}; set matching image_size/channels"
        )
    if "test" in dataset.splits:
        return dataset.splits["test"], "test split", dataset.skipped
    return concat_splits(list(dataset.splits.values())), "all images", dataset.skipped


def evaluate_run(
    run: Run | str | Path,
    data: str | Path | None = None,
    threshold: float | None = None,
    skip_bad_images: bool = False,
) -> dict[str, Any]:
    """Metrics of a saved run on its own test split (default) or on the images of ``data``.

    With ``data`` and ``skip_bad_images``, unreadable images are skipped and listed under
    ``skipped_images``.
    """
    run = _as_run(run)
    skipped: list[str] = []
    if data is None:
        split, what, source = reload_run_data(run).splits["test"], "test split", run.info["source"]
    else:
        (split, what, skipped), source = load_other_data(run, data, skip_bad_images), str(data)
    probs = predict_split(run.model, split)
    cut = run.threshold if threshold is None else threshold
    metrics = compute_metrics(split.labels, probs, cut)
    metrics.update(source=source, evaluated_on=what)
    if skipped:
        metrics["skipped_images"] = skipped
    return metrics
