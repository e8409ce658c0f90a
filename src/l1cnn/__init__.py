"""l1cnn: train, evaluate, explain and ship a small L1-regularized CNN for binary images.

The public API is imported lazily, so ``l1cnn --help`` and config handling do not load
TensorFlow.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "l1cnn.config",
    "DataConfig": "l1cnn.config",
    "ModelConfig": "l1cnn.config",
    "TrainConfig": "l1cnn.config",
    "load_config": "l1cnn.config",
    "L1CNNError": "l1cnn.errors",
    "ConfigError": "l1cnn.errors",
    "DataError": "l1cnn.errors",
    "ModelError": "l1cnn.errors",
    "RunError": "l1cnn.errors",
    "TrainingError": "l1cnn.errors",
    "Dataset": "l1cnn.data",
    "load_data": "l1cnn.data",
    "build_model": "l1cnn.model",
    "compute_metrics": "l1cnn.evaluate",
    "Run": "l1cnn.runs",
    "load_run": "l1cnn.runs",
    "train": "l1cnn.train",
    "TrainResult": "l1cnn.train",
    "predict": "l1cnn.predict",
    "evaluate_run": "l1cnn.predict",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'l1cnn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
