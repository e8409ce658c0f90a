"""Use a saved run: ``predict`` on new images and ``evaluate_run`` on its test split or other data.

Images are preprocessed exactly as in training (``data.load_image``) and processed in chunks,
so thousands of images run without memory growth.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
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
    load_data,
    make_tf_dataset,
)
from l1cnn.errors import DataError
from l1cnn.evaluate import compute_metrics
from l1cnn.inference import Prediction, PredictResult, predict_with  # noqa: F401  (public here)
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


def _as_run(run: Run | str | Path) -> Run:
    return run if isinstance(run, Run) else load_run(run)


def predict(
    run: Run | str | Path,
    inputs: Iterable[str | Path],
    skip_bad_images: bool = False,
    threshold: float | None = None,
    shard: tuple[int, int] | None = None,
) -> PredictResult:
    """Positive-class probabilities and class names for image files, folders or ``.npz`` files.

    Args:
        run: a Run or its folder.
        inputs: image files, folders (searched recursively) and ``.npz`` files.
        skip_bad_images: skip unreadable images (listed in ``skipped``) instead of failing.
        threshold: override the run's decision threshold.
        shard: (K, N): predict only the K-th of N slices of the inputs (``--shard K/N``).
    """
    run = _as_run(run)
    cut = run.threshold if threshold is None else threshold
    return predict_with(
        make_predict_fn(run.model),
        run.image_shape,
        run.class_names,
        cut,
        inputs,
        skip_bad_images,
        shard,
    )


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
