"""Import TensorFlow once, with oneDNN kernels on and without its start-up chatter on stderr.

TensorFlow's C++ code writes CUDA-probing and CPU-feature notes straight to file descriptor 2
on import and first device use; TF_CPP_MIN_LOG_LEVEL does not silence them. They would bury
l1cnn's own one-line messages, so the first import runs with fd 2 pointed at /dev/null.
Set L1CNN_TF_LOGS=1 to see them.

TensorFlow turns its oneDNN kernels on by default only on some Intel CPUs; on others (AMD, for
one) they are 1.16x faster for our training step and 1.5x for inference (benchmarks/RESULTS.md),
so l1cnn asks for them unless the user set TF_ENABLE_ONEDNN_OPTS. It only works before
TensorFlow is first imported.
"""

from __future__ import annotations

import os
import sys


def import_tensorflow_quietly() -> None:
    """Import TensorFlow (and initialise its devices) once, with native stderr silenced."""
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    if os.environ.get("L1CNN_TF_LOGS") == "1":
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        saved = os.dup(2)
    except OSError:  # no usable stderr (e.g. a daemon): nothing to protect
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stderr.flush()
        os.dup2(devnull, 2)
        import tensorflow as tf

        tf.config.list_physical_devices()
    except ImportError:
        pass  # another backend: Keras will report what it needs
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
