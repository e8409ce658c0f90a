"""Use a saved run: ``predict`` on new images and ``evaluate_run`` on its test split or other data.

Images are preprocessed exactly as in training (``data.load_image``) and processed in chunks,
so thousands of images run without memory growth.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
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
from l1cnn.errors import ConfigError, DataError
from l1cnn.evaluate import compute_metrics
from l1cnn.inference import (  # noqa: F401  (Prediction, REFER: public here)
    REFER,
    Prediction,
    PredictResult,
    add_decisions,
    predict_with,
)
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


def abstain_coverage(run: Run, coverage: float | None) -> float | None:
    """The coverage asked for (checked to be in (0, 1)), else the run's ``train.abstain``."""
    from l1cnn.config import parse_abstain_rule

    if coverage is None:
        return parse_abstain_rule(run.config.train.abstain)
    return parse_abstain_rule(f"coverage={coverage}", key="--abstain")


def conformal_threshold_of(run: Run, coverage: float) -> float:
    """The split-conformal score threshold from the run's stored validation predictions."""
    from l1cnn.calibration import conformal_threshold
    from l1cnn.rethreshold import stored_predictions

    labels, probs = stored_predictions(run.path)["val"]
    return conformal_threshold(labels, probs, coverage)


def make_mc_predict_fn(model: keras.Model, n_samples: int, seed: int) -> Callable:
    """Monte Carlo dropout: pixels (N, H, W, C) -> probabilities (N, n_samples), dropout on.

    A fresh copy of the model whose Dropout layers draw from ``seed``: the same seed and the
    same inputs in the same order give the same numbers.
    """
    import tensorflow as tf

    from l1cnn.model import with_seeded_dropout

    sampled = with_seeded_dropout(model, seed)

    @tf.function(input_signature=[tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)])
    def forward(x: Any) -> Any:
        return tf.reshape(sampled(x, training=True), [-1])

    def predict(x: Any) -> np.ndarray:
        x = tf.cast(x, tf.float32)
        return np.stack([forward(x).numpy() for _ in range(n_samples)], axis=1)

    return predict


def check_mc_samples(mc_samples: int | None) -> None:
    """Refuse ``--mc-samples`` below 1."""
    if mc_samples is not None and mc_samples < 1:
        raise ConfigError(f"--mc-samples must be >= 1, got {mc_samples}")


def predict(
    run: Run | str | Path,
    inputs: Iterable[str | Path],
    skip_bad_images: bool = False,
    threshold: float | None = None,
    abstain: float | None = None,
    mc_samples: int | None = None,
    mc_seed: int | None = None,
    shard: tuple[int, int] | None = None,
) -> PredictResult:
    """Positive-class probabilities and class names for image files, folders or ``.npz`` files.

    The probabilities are the run's: temperature-scaled when the run is calibrated.

    Args:
        run: a Run or its folder.
        inputs: image files, folders (searched recursively) and ``.npz`` files.
        skip_bad_images: skip unreadable images (listed in ``skipped``) instead of failing.
        threshold: override the run's decision threshold.
        abstain: target coverage in (0, 1) of split-conformal label sets (default: the run's
            ``train.abstain``); each prediction gains ``decision`` (a class or "refer") and
            ``label_set``.
        mc_samples: run this many forward passes with dropout on; ``probability`` is their
            mean and ``std`` their standard deviation.
        mc_seed: the seed of the dropout masks (default: the run's ``train.seed``).

    Raises:
        ConfigError: ``abstain`` outside (0, 1) or ``mc_samples`` < 1.
        shard: (K, N): predict only the K-th of N slices of the inputs (``--shard K/N``).
    """
    check_mc_samples(mc_samples)
    run = _as_run(run)
    coverage = abstain_coverage(run, abstain)
    cut = run.threshold if threshold is None else threshold
    if mc_samples is None:
        forward = make_predict_fn(run.calibrated_model)
    else:
        seed = run.config.train.seed if mc_seed is None else mc_seed
        forward = make_mc_predict_fn(run.calibrated_model, mc_samples, seed)
    result = predict_with(
        forward, run.image_shape, run.class_names, cut, inputs, skip_bad_images, shard
    )
    result.mc_samples = mc_samples
    if coverage is not None:
        add_decisions(result.predictions, run.class_names, conformal_threshold_of(run, coverage))
        result.coverage = coverage
    return result


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
    abstain: float | None = None,
) -> dict[str, Any]:
    """Metrics of a saved run on its own test split (default) or on the images of ``data``.

    With ``data`` and ``skip_bad_images``, unreadable images are skipped and listed under
    ``skipped_images``. With ``abstain`` (a coverage in (0, 1); default the run's
    ``train.abstain``), ``metrics["abstain"]`` holds the empirical coverage of the conformal
    label sets, the share referred and the accuracy on the rest, with 95% Wilson intervals.
    """
    run = _as_run(run)
    coverage = abstain_coverage(run, abstain)
    skipped: list[str] = []
    if data is None:
        split, what, source = reload_run_data(run).splits["test"], "test split", run.info["source"]
    else:
        (split, what, skipped), source = load_other_data(run, data, skip_bad_images), str(data)
    probs = predict_split(run.calibrated_model, split)
    cut = run.threshold if threshold is None else threshold
    metrics = compute_metrics(split.labels, probs, cut)
    if run.temperature != 1.0:
        metrics["temperature"] = run.temperature
    if coverage is not None:
        from l1cnn.calibration import abstain_report

        q = conformal_threshold_of(run, coverage)
        metrics["abstain"] = abstain_report(split.labels, probs, q, coverage)
    metrics.update(source=source, evaluated_on=what)
    if skipped:
        metrics["skipped_images"] = skipped
    return metrics
