"""Import TensorFlow, whenever something first does, with oneDNN on and without start-up chatter.

TensorFlow's C++ code writes CUDA-probing and CPU-feature notes straight to file descriptor 2
on import and first device use; TF_CPP_MIN_LOG_LEVEL does not silence them. They would bury
l1cnn's own one-line messages, so the first import runs with fd 2 pointed at /dev/null.
Set L1CNN_TF_LOGS=1 to see them.

TensorFlow turns its oneDNN kernels on by default only on some Intel CPUs; on others (AMD, for
one) they are 1.16x faster for our training step and 1.5x for inference (benchmarks/RESULTS.md),
so l1cnn asks for them unless the user set TF_ENABLE_ONEDNN_OPTS. It only works before
TensorFlow is first imported.

``import l1cnn`` does not import TensorFlow (``l1cnn --help`` answers at once); it installs
:class:`QuietTensorFlowFinder`, which applies the above to the first import of TensorFlow,
from whichever module (Keras' backend, ``l1cnn.data``, the user's code) makes it.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import sys
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Point fd 2 at /dev/null for the block (Python's own sys.stderr is flushed around it)."""
    try:
        saved = os.dup(2)
    except OSError:  # no usable stderr (e.g. a daemon): nothing to protect
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stderr.flush()
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Meta path finder: on the first ``import tensorflow``, set the environment and run the
    module (and its device discovery) with native stderr silenced, then step aside."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "tensorflow":
            return None
        uninstall()
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
        if os.environ.get("L1CNN_TF_LOGS") == "1":
            return None  # the normal import, chatter and all
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        spec = importlib.util.find_spec(fullname)  # the finders after this one
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            with _native_stderr_silenced():
                run_module(module)
                module.config.list_physical_devices()  # first device use chatters too

        spec.loader.exec_module = exec_module  # this spec's loader only
        return spec


_FINDER = QuietTensorFlowFinder()


def install() -> None:
    """Ask for oneDNN and make the first import of TensorFlow quiet (no-op once it is imported)."""
    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # visible at once, as users expect
        if _FINDER not in sys.meta_path:
            sys.meta_path.insert(0, _FINDER)


def uninstall() -> None:
    """Remove the finder (it acts once)."""
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
