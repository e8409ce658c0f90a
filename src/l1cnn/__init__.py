"""l1cnn: train, evaluate, explain and ship a small L1-regularized CNN for binary images."""

from l1cnn._quiet import import_tensorflow_quietly

__version__ = "0.1.0"

import_tensorflow_quietly()

from l1cnn.config import Config, DataConfig, ModelConfig, TrainConfig, load_config  # noqa: E402
from l1cnn.data import Dataset, load_data  # noqa: E402
from l1cnn.errors import (  # noqa: E402
    ConfigError,
    DataError,
    L1CNNError,
    ModelError,
    RunError,
    TrainingError,
)
from l1cnn.evaluate import choose_threshold, compute_metrics  # noqa: E402
from l1cnn.export import export_run  # noqa: E402
from l1cnn.model import build_model  # noqa: E402
from l1cnn.predict import evaluate_run, predict  # noqa: E402
from l1cnn.prune import prune_run  # noqa: E402
from l1cnn.reporting import write_report  # noqa: E402
from l1cnn.runs import Run, load_run  # noqa: E402
from l1cnn.study import run_study  # noqa: E402
from l1cnn.train import TrainResult, resume, train  # noqa: E402

__all__ = [
    "ConfigError",
    "Config",
    "DataConfig",
    "DataError",
    "Dataset",
    "L1CNNError",
    "ModelConfig",
    "ModelError",
    "Run",
    "RunError",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "__version__",
    "build_model",
    "choose_threshold",
    "compute_metrics",
    "evaluate_run",
    "export_run",
    "load_config",
    "load_data",
    "load_run",
    "predict",
    "prune_run",
    "resume",
    "run_study",
    "train",
    "write_report",
]
