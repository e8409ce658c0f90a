"""An export folder read back and run in its own runtime, without TensorFlow where possible.

ONNX exports run on onnxruntime and LiteRT exports on the LiteRT interpreter; only SavedModel
exports need TensorFlow. Importing this module imports neither TensorFlow, Keras nor
scikit-learn, so ``l1cnn predict EXPORT ...`` (and ``serve``) start in a fraction of a second:
the way to deploy on small machines.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from l1cnn import runs
from l1cnn.config import EXPORT_FORMATS as FORMATS
from l1cnn.config import parse_abstain_rule
from l1cnn.data import PREDICT_CHUNK
from l1cnn.errors import ConfigError, ModelError, RunError, first_line
from l1cnn.inference import PredictResult, add_decisions, predict_with

EXPORT_FILE = "export.json"

# The runtime each format's artifact runs in (all but TensorFlow are in the `deploy` extra).
_RUNTIMES = {"savedmodel": "tensorflow", "onnx": "onnxruntime", "litert": "ai_edge_litert"}


def _require_runtime(fmt: str) -> None:
    """Refuse an export whose runtime is not installed, saying what to install."""
    import importlib.util

    if importlib.util.find_spec(_RUNTIMES[fmt]) is None:
        raise ModelError(
            f"a {fmt} export needs {_RUNTIMES[fmt]} (install l1cnn[deploy]: "
            f"pip install 'l1cnn[deploy]')"
        )


def as_uint8(x: np.ndarray) -> np.ndarray:
    """0..255 pixels as uint8, rounding any float pixels (the SavedModel signature takes uint8)."""
    if x.dtype == np.uint8:
        return x
    return np.clip(np.round(np.asarray(x, np.float64)), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- loading


class ExportedModel:
    """An export folder read back: metadata plus a forward function in the format's runtime."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        record = self.path / EXPORT_FILE
        if not record.exists():
            raise RunError(f"'{self.path}' is not an l1cnn export folder (no {EXPORT_FILE})")
        try:
            self.info: dict[str, Any] = runs.read_json(record)
            self.format: str = self.info["format"]
            self.artifact = self.path / self.info["artifact"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise RunError(f"'{record}' is unreadable: {exc}") from None
        if self.format not in FORMATS or not self.artifact.exists():
            raise RunError(f"'{self.path}' has no usable {self.format} artifact")
        _require_runtime(self.format)
        self._forward = self._load()

    @property
    def class_names(self) -> list[str]:
        """[negative, positive] class names."""
        return list(self.info["class_names"])

    @property
    def threshold(self) -> float:
        """The run's decision threshold, carried by the export."""
        return float(self.info["threshold"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(height, width, channels) the model takes."""
        return tuple(self.info["image_shape"])  # type: ignore[return-value]

    @property
    def temperature(self) -> float:
        """The run's temperature, already inside the exported graph (1.0: not calibrated)."""
        return float(self.info.get("temperature", 1.0))

    def abstain_coverage(self, coverage: float | None) -> float | None:
        """The coverage asked for (checked to be in (0, 1)), else the run's ``train.abstain``."""
        if coverage is None:
            return parse_abstain_rule(self.info.get("abstain", "none"))
        return parse_abstain_rule(f"coverage={coverage}", key="--abstain")

    def refer_threshold(self, coverage: float) -> float:
        """The split-conformal score threshold from the validation scores the export carries.

        Raises:
            RunError: an export written before it carried them.
        """
        from l1cnn.calibration import threshold_from_scores

        scores = self.info.get("conformal_scores")
        if not scores:
            raise RunError(
                f"export '{self.path}' carries no validation scores for --abstain; "
                "export the run again with this version of l1cnn"
            )
        return threshold_from_scores(scores, coverage)

    def _load(self) -> Callable[[np.ndarray], np.ndarray]:
        try:
            if self.format == "savedmodel":
                return self._load_savedmodel()
            if self.format == "onnx":
                return self._load_onnx()
            return self._load_litert()
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelError(
                f"exported model '{self.artifact}' cannot be loaded: {first_line(exc)}"
            ) from None

    def _load_savedmodel(self) -> Callable[[np.ndarray], np.ndarray]:
        import tensorflow as tf

        signature = tf.saved_model.load(str(self.artifact)).signatures["serving_default"]

        def forward(x: np.ndarray) -> np.ndarray:
            return signature(pixels=tf.constant(as_uint8(x)))["probability"].numpy()

        return forward

    def _load_onnx(self) -> Callable[[np.ndarray], np.ndarray]:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(
            str(self.artifact), options, providers=["CPUExecutionProvider"]
        )
        name = session.get_inputs()[0].name

        def forward(x: np.ndarray) -> np.ndarray:
            return session.run(None, {name: np.asarray(x, np.float32)})[0].reshape(-1)

        return forward

    def _load_litert(self) -> Callable[[np.ndarray], np.ndarray]:
        from ai_edge_litert.interpreter import Interpreter

        runner = Interpreter(model_path=str(self.artifact)).get_signature_runner()
        (name,) = runner.get_input_details()

        def forward(x: np.ndarray) -> np.ndarray:
            (out,) = runner(**{name: np.asarray(x, np.float32)}).values()
            return np.asarray(out, np.float32).reshape(-1)

        return forward

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities (N,) for 0..255 pixels (N, H, W, C), in chunks."""
        if len(pixels) == 0:
            return np.zeros((0,), np.float32)
        return np.concatenate(
            [
                self._forward(pixels[i : i + PREDICT_CHUNK])
                for i in range(0, len(pixels), PREDICT_CHUNK)
            ]
        )


def is_export_folder(path: str | Path) -> bool:
    """True for a folder written by :func:`export_run` (it has ``export.json``)."""
    return (Path(path) / EXPORT_FILE).is_file()


def load_export(path: str | Path) -> ExportedModel:
    """Read an export folder back, refusing one whose float parity check failed.

    Args:
        path: the folder :func:`export_run` wrote.

    Returns:
        An ExportedModel whose ``predict`` runs the artifact in its own runtime.
    """
    exported = ExportedModel(path)
    if exported.info.get("parity", {}).get("passed") is False:
        raise ModelError(f"export '{path}' failed its parity check (see its {EXPORT_FILE})")
    return exported


def predict_export(
    path: str | Path,
    inputs: Iterable[str | Path],
    skip_bad_images: bool = False,
    threshold: float | None = None,
    abstain: float | None = None,
    mc_samples: int | None = None,
    shard: tuple[int, int] | None = None,
) -> PredictResult:
    """Like ``l1cnn.predict.predict`` but through an exported model, with the same preprocessing.

    Args:
        path: an export folder.
        inputs: image files, folders (searched recursively) and ``.npz`` files.
        skip_bad_images: skip unreadable images instead of failing.
        threshold: override the exported decision threshold.
        abstain: target coverage in (0, 1) of split-conformal label sets, from the validation
            scores in ``export.json`` (default: the run's ``train.abstain``).
        mc_samples: refused: an exported graph runs in inference mode, without dropout.
        shard: (K, N): predict only the K-th of N slices of the inputs (``--shard K/N``).

    Returns:
        A PredictResult in input order.

    Raises:
        ConfigError: ``mc_samples`` given, or ``abstain`` outside (0, 1).
    """
    if mc_samples is not None:
        raise ConfigError(
            "--mc-samples needs a run folder: an export runs without dropout (inference mode)"
        )
    exported = load_export(path)
    coverage = exported.abstain_coverage(abstain)
    q = None if coverage is None else exported.refer_threshold(coverage)
    cut = exported.threshold if threshold is None else threshold
    result = predict_with(
        exported.predict,
        exported.image_shape,
        exported.class_names,
        cut,
        inputs,
        skip_bad_images,
        shard,
    )
    if q is not None:
        add_decisions(result.predictions, exported.class_names, q)
        result.coverage = coverage
    return result
