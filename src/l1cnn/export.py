"""Export a run as SavedModel, ONNX or LiteRT, and prove the export answers like the run.

Every export is followed by a parity check on the run's test split: the largest absolute
difference in probability, the agreement of predicted classes and each model's ROC-AUC, written
to ``export.json`` beside the artifact. A float32 export that differs by more than
``FLOAT_TOLERANCE`` is an error. An export folder is self-describing (class names, threshold,
image shape), so ``l1cnn predict`` accepts it as well as a run.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from l1cnn import runs
from l1cnn.config import ExportOptions
from l1cnn.data import Split
from l1cnn.errors import ModelError, RunError, first_line
from l1cnn.evaluate import compute_metrics
from l1cnn.exported import (  # noqa: F401  (load_export, predict_export: public here too)
    EXPORT_FILE,
    ExportedModel,
    as_uint8,
    is_export_folder,
    load_export,
    predict_export,
)
from l1cnn.predict import predict_split, reload_run_data

FLOAT_TOLERANCE = 1e-4
ARTIFACTS = {"savedmodel": "1", "onnx": "model.onnx", "litert": "model.tflite"}
REPRESENTATIVE_SAMPLES = 200  # training images that calibrate int8 ranges

# What each format needs beyond TensorFlow; all are in the `deploy` extra.
_NEEDS = {"savedmodel": (), "onnx": ("tf2onnx", "onnxruntime"), "litert": ("ai_edge_litert",)}


def _require(fmt: str) -> None:
    """Refuse a format whose converter or runtime is not installed, saying what to install."""
    import importlib.util

    missing = [m for m in _NEEDS[fmt] if importlib.util.find_spec(m) is None]
    if missing:
        raise ModelError(
            f"--format {fmt} needs {', '.join(missing)} (install l1cnn[deploy]: "
            f"pip install 'l1cnn[deploy]')"
        )


@contextlib.contextmanager
def _quiet_converters() -> Iterator[None]:
    """Silence tf2onnx's and the TFLite converter's chatter (they log every pass)."""
    loggers = [logging.getLogger(n) for n in ("tf2onnx", "absl", "tensorflow")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


# --------------------------------------------------------------------------- writing


def _write_savedmodel(model: Any, target: Path, meta: dict[str, Any]) -> None:
    """A TF Serving SavedModel: uint8 pixels in; probability, class name and threshold out."""
    import keras
    import tensorflow as tf

    height, width, channels = meta["image_shape"]
    names = tf.constant(meta["class_names"])
    cut = tf.constant(meta["threshold"], tf.float32)
    shape = tf.constant(meta["image_shape"], tf.int32)

    @tf.function(
        input_signature=[tf.TensorSpec([None, height, width, channels], tf.uint8, name="pixels")]
    )
    def serve(pixels: Any) -> dict[str, Any]:
        prob = tf.reshape(model(tf.cast(pixels, tf.float32), training=False), [-1])
        return {
            "probability": prob,
            "predicted_class": tf.gather(names, tf.cast(prob >= cut, tf.int32)),
            "threshold": tf.fill(tf.shape(prob), cut),
        }

    @tf.function(input_signature=[])
    def metadata() -> dict[str, Any]:
        return {
            "class_names": names,
            "positive_class": names[1],
            "threshold": cut,
            "image_shape": shape,
        }

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve)
    archive.add_endpoint("metadata", metadata)
    archive.write_out(str(target), verbose=False)
    # TF Serving's convention for files that travel with a model version.
    (target / "assets.extra").mkdir(exist_ok=True)
    runs.write_json(target / "assets.extra" / "l1cnn.json", meta)


def _representative(run: runs.Run) -> Callable[[], Iterator[list[np.ndarray]]]:
    """Up to REPRESENTATIVE_SAMPLES training images (seeded), one at a time, for int8 ranges."""
    train = reload_run_data(run).splits["train"]
    rng = np.random.default_rng(run.config.train.seed)
    index = rng.permutation(len(train))[:REPRESENTATIVE_SAMPLES]

    def gen() -> Iterator[list[np.ndarray]]:
        for i in index:
            yield [train.images[i : i + 1].astype(np.float32)]

    return gen


def _write_artifact(
    run: runs.Run, options: ExportOptions, folder: Path, meta: dict[str, Any]
) -> Path:
    """Convert the run's model into ``folder``; return the artifact's path.

    A calibrated run exports its model with the temperature inside the graph, so every
    format gives the run's calibrated probability.
    """
    model = run.calibrated_model
    # Keras' ONNX exporter refuses a model that was loaded but never called.
    model(np.zeros((1, *run.image_shape), np.float32), training=False)
    target = folder / ARTIFACTS[options.format]
    try:
        with _quiet_converters():
            if options.format == "savedmodel":
                _write_savedmodel(model, target, meta)
            elif options.format == "onnx":
                model.export(str(target), format="onnx", verbose=False)
            else:
                import tensorflow as tf

                kwargs: dict[str, Any] = {}
                if options.quantize == "float16":
                    kwargs = {
                        "optimizations": [tf.lite.Optimize.DEFAULT],
                        "target_spec": {"supported_types": [tf.float16]},
                    }
                elif options.quantize == "int8":
                    kwargs = {
                        "optimizations": [tf.lite.Optimize.DEFAULT],
                        "representative_dataset": _representative(run),
                    }
                model.export(str(target), format="litert", verbose=False, **kwargs)
    except Exception as exc:  # converters raise many types (ConverterError, tf2onnx's own...)
        raise ModelError(f"the {options.format} converter failed: {first_line(exc)}") from None
    return target


# --------------------------------------------------------------------------- parity


def compare_predictions(
    labels: np.ndarray,
    reference: np.ndarray,
    exported: np.ndarray,
    threshold: float,
    tolerance: float | None,
) -> dict[str, Any]:
    """How closely ``exported`` probabilities follow the Keras ``reference`` on labelled images.

    Args:
        labels: 0/1 labels.
        reference: the Keras model's probabilities.
        exported: the exported model's probabilities for the same images.
        threshold: the decision threshold both are cut at.
        tolerance: the largest allowed absolute difference, or None (quantized: report only).

    Returns:
        n, max_abs_diff, mean_abs_diff, class_agreement, roc_auc of each, accuracy of each,
        tolerance and passed.
    """
    reference = np.asarray(reference, np.float64).reshape(-1)
    exported = np.asarray(exported, np.float64).reshape(-1)
    if reference.shape != exported.shape:
        raise ModelError(
            f"the export returned {exported.shape[0]} probabilities for {reference.shape[0]} images"
        )
    if not np.all(np.isfinite(exported)):
        raise ModelError("the export returned NaN or infinite probabilities")
    diff = np.abs(reference - exported)
    ref_m = compute_metrics(labels, reference, threshold)
    exp_m = compute_metrics(labels, exported, threshold)
    max_diff = float(diff.max()) if diff.size else 0.0
    return {
        "n": int(reference.size),
        "max_abs_diff": max_diff,
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
        "class_agreement": float(np.mean((reference >= threshold) == (exported >= threshold)))
        if diff.size
        else 1.0,
        "roc_auc_keras": ref_m["roc_auc"],
        "roc_auc_export": exp_m["roc_auc"],
        "accuracy_keras": ref_m["accuracy"],
        "accuracy_export": exp_m["accuracy"],
        "tolerance": tolerance,
        "passed": None if tolerance is None else bool(max_diff <= tolerance),
    }


def _calibration_meta(run: runs.Run) -> dict[str, Any]:
    """What an export needs to answer like its run without it (issue 15).

    ``temperature`` is already applied inside the graph (1.0: none); ``abstain`` is the run's
    default rule and ``conformal_scores`` the sorted validation scores, from which the
    export's split-conformal threshold is computed for any coverage.
    """
    from l1cnn.calibration import conformal_scores
    from l1cnn.rethreshold import stored_predictions

    meta: dict[str, Any] = {"temperature": run.temperature, "abstain": run.config.train.abstain}
    try:
        labels, probs = stored_predictions(run.path)["val"]
    except RunError:  # no predictions.csv: the export answers, but cannot refer
        return meta
    meta["conformal_scores"] = [round(float(v), 8) for v in conformal_scores(labels, probs)]
    return meta


def _size_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists():
        if not out.is_dir():
            raise RunError(f"output '{out}' exists and is not a folder")
        if any(out.iterdir()):
            if not overwrite:
                raise RunError(
                    f"export folder '{out}' already exists; use --overwrite to replace it"
                )
            if not is_export_folder(out):
                raise RunError(f"refusing to overwrite '{out}': it is not an l1cnn export folder")
    parent = out.parent
    if not parent.exists():
        try:
            parent.mkdir(parents=True)
        except OSError as exc:
            raise RunError(f"output folder '{parent}' cannot be created: {exc.strerror}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RunError(f"export folder '{out}' cannot be written (no permission on '{parent}')")


def export_run(
    run: runs.Run | str | Path,
    options: ExportOptions,
    out: str | Path | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export a run's model, check it against the Keras model, and write ``export.json``.

    The folder is built under a temporary name and renamed into place, so a failed export
    leaves nothing half-written.

    Args:
        run: a Run or its folder.
        options: format and quantization.
        out: the export folder (default ``RUN/export-<format>[-<quantize>]``).
        overwrite: replace an existing export folder.

    Returns:
        The export record (also in ``OUT/export.json``), with ``path`` added.

    Raises:
        ModelError: the converter failed, or a float export differs by more than
            FLOAT_TOLERANCE (the folder is still written, marked as failed, for inspection).
    """
    run = run if isinstance(run, runs.Run) else runs.load_run(run)
    _require(options.format)
    out = Path(out) if out is not None else run.path / f"export-{options.name}"
    _prepare_out(out, overwrite)
    test = reload_run_data(run).splits["test"]
    meta = {
        "class_names": run.class_names,
        "positive_class": run.class_names[1],
        "threshold": run.threshold,
        "image_shape": list(run.image_shape),
        "input": "pixels: 0..255, shape (N, H, W, C); "
        + ("uint8" if options.format == "savedmodel" else "float32"),
        "output": "positive-class probability",
        **_calibration_meta(run),
    }
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
    try:
        artifact = _write_artifact(run, options, staging, meta)
        record: dict[str, Any] = {
            "format": options.format,
            "quantize": options.quantize,
            "artifact": artifact.name,
            **meta,
            "source_run": str(run.path),
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "size_bytes": _size_bytes(artifact),
            "versions": runs.library_versions(),
        }
        # The record must exist before ExportedModel can read the folder back.
        runs.write_json(staging / EXPORT_FILE, record)
        exported = ExportedModel(staging)
        pixels = np.asarray(test.images)  # the test split, decoded, for the parity check
        if options.format == "savedmodel":
            pixels = as_uint8(pixels)  # compare on exactly what the signature sees
        reference = predict_split(run.calibrated_model, Split(pixels, test.labels, test.ids))
        tolerance = FLOAT_TOLERANCE if options.quantize is None else None
        parity = compare_predictions(
            test.labels, reference, exported.predict(pixels), run.threshold, tolerance
        )
        record["parity"] = {"data": f"{run.info['source']} (test split)", **parity}
        runs.write_json(staging / EXPORT_FILE, record)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    record["path"] = str(out)
    if parity["passed"] is False:
        raise ModelError(
            f"the {options.format} export differs from the Keras model by "
            f"{parity['max_abs_diff']:.3g} > {FLOAT_TOLERANCE:g} in probability "
            f"(see {out / EXPORT_FILE})"
        )
    return record
