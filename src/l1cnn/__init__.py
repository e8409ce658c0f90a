"""l1cnn: train, evaluate, explain and ship a small L1-regularized CNN for binary images.

The public names are imported on first use (PEP 562), so ``import l1cnn`` and ``l1cnn --help``
do not pay for TensorFlow; whenever TensorFlow is imported, it starts quietly (``_quiet``).
"""

import importlib
import sys
import types

from l1cnn import _quiet
from l1cnn.version import __version__

_quiet.install()

# Public name -> the module that defines it.
_PUBLIC = {
    "Config": "l1cnn.config",
    "DataConfig": "l1cnn.config",
    "ModelConfig": "l1cnn.config",
    "TrainConfig": "l1cnn.config",
    "load_config": "l1cnn.config",
    "Dataset": "l1cnn.data",
    "load_data": "l1cnn.data",
    "ConfigError": "l1cnn.errors",
    "DataError": "l1cnn.errors",
    "L1CNNError": "l1cnn.errors",
    "ModelError": "l1cnn.errors",
    "RunError": "l1cnn.errors",
    "TrainingError": "l1cnn.errors",
    "choose_threshold": "l1cnn.evaluate",
    "compute_metrics": "l1cnn.evaluate",
    "export_run": "l1cnn.export",
    "build_model": "l1cnn.model",
    "evaluate_run": "l1cnn.predict",
    "predict": "l1cnn.predict",
    "prune_run": "l1cnn.prune",
    "write_report": "l1cnn.reporting",
    "Run": "l1cnn.runs",
    "load_run": "l1cnn.runs",
    "run_study": "l1cnn.study",
    "TrainResult": "l1cnn.train",
    "resume": "l1cnn.train",
    "train": "l1cnn.train",
}

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


def __getattr__(name: str) -> object:
    """Import a public name's module on first use and keep the name."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'l1cnn' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


class _Package(types.ModuleType):
    """The package module, so that ``l1cnn.train`` and ``l1cnn.predict`` stay the functions.

    Importing a submodule binds it as an attribute of its package; for the two submodules named
    like the function they define, the function is bound instead, as the eager imports did.
    """

    def __setattr__(self, name: str, value: object) -> None:
        if isinstance(value, types.ModuleType) and _PUBLIC.get(name) == value.__name__:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
