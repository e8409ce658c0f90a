"""Run folders: create, write atomically, read back; seeding and version records.

A run folder holds everything needed to use and reproduce a run (see ``docs/run-folder.md``).
Every file is written to a temporary name and renamed, so a kill leaves the old file or the new
one, never half of one.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import hashlib
import io
import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from l1cnn.config import Config, config_from_dict, read_toml
from l1cnn.errors import ConfigError, ModelError, RunError, first_line

CONFIG_FILE = "config.toml"
MODEL_FILE = "model.keras"
RUN_FILE = "run.json"
DATA_FILE = "data.json"
SPLIT_FILE = "split.json"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
CALIBRATION_FILE = "calibration.json"  # the temperature, when the run's probabilities are scaled
# A calibrated run's predictions.csv also keeps the model's own probabilities (to refit T).
UNCALIBRATED_FIELD = "uncalibrated_probability"
# The resumable per-epoch backup and the lock of a live trainer (docs/run-folder.md).
BACKUP_FILE = "backup.npz"
EXPLAIN_FILE = "explain.npz"  # written by l1cnn.explain, drawn by the report
LOCK_FILE = "train.lock"
# A run with one of these statuses is finished: `l1cnn train --resume` leaves it alone
# ("pruned": stopped early by `l1cnn tune`, its history kept).
FINAL_STATUSES = ("completed", "early_stopped", "diverged", "collapsed", "pruned")


def _umask_permissions(fd: int) -> None:
    """Give a mkstemp file (0600) the permissions a plain ``open`` would have."""
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    _umask_permissions(fd)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_csv(path: str | Path, rows: list[dict[str, Any]], fieldnames: list[str]) -> None:
    """Write dict rows as CSV, atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def read_json(path: str | Path) -> Any:
    """Read a JSON file written by this module."""
    with Path(path).open(encoding="utf-8") as f:
        return json.load(f)


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """Read a CSV file into dict rows (values stay strings)."""
    with Path(path).open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_model_atomic(model: Any, path: str | Path) -> str:
    """Save a Keras model to ``path`` (.keras) through a temporary file and a rename.

    Returns:
        The sha256 of the saved file (recorded in run.json, checked by ``load_run``).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".keras")
    _umask_permissions(fd)
    os.close(fd)
    try:
        model.save(tmp)
        sha256 = file_sha256(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return sha256


def remove_orphan_temp_files(run_dir: str | Path) -> list[str]:
    """Delete temporary files a killed writer left in ``run_dir``; returns their names.

    Only safe while holding the folder's :class:`RunLock` (no other writer can own them).
    """
    run_dir = Path(run_dir)
    orphans = [*run_dir.glob(".*.tmp"), *run_dir.glob(f".{Path(MODEL_FILE).stem}.*.keras")]
    for path in orphans:
        path.unlink(missing_ok=True)
    return sorted(p.name for p in orphans)


class RunLock:
    """An exclusive lock on a run folder while one process trains into it.

    ``train.lock`` holds the owner's PID; the lock itself is an ``fcntl.flock`` on that file, which
    the kernel drops when the owner dies, so a lock left by a killed trainer is stale and taken
    over, while a second live trainer is refused with RunError naming the owner's PID.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock or raise RunError; returns self."""
        import fcntl

        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise RunError(
                    f"cannot create the lock file '{self.path}': {exc.strerror}"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
                os.close(fd)
                raise RunError(
                    f"run folder '{self.path.parent}' is being trained by another process "
                    f"(PID {owner}, lock file {LOCK_FILE}); wait for it to finish or stop it"
                ) from None
            try:  # the file may have been removed by its previous owner meanwhile: retry
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        # Ours now (a stale file from a dead owner is simply overwritten).
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):  # a read-only folder keeps a stale (unlocked) file
            self.path.unlink(missing_ok=True)
        os.close(self._fd)  # closing drops the flock
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def default_run_dir(source_name: str, root: str | Path = "runs") -> Path:
    """``runs/<source>-<YYYYmmdd-HHMMSS>``: a fresh name for a run."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{source_name}-{stamp}"


def prepare_run_dir(path: str | Path, overwrite: bool) -> Path:
    """Check that ``path`` can become a run folder, without creating it yet.

    Refuses an existing non-empty folder unless ``overwrite`` (and then only one that is a run),
    and a parent that cannot be written.
    """
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise RunError(f"output '{path}' exists and is not a folder")
        if any(path.iterdir()):
            if not overwrite:
                raise RunError(f"run folder '{path}' already exists; use --overwrite to replace it")
            if not (path / RUN_FILE).exists():
                raise RunError(f"refusing to overwrite '{path}': it is not a run folder")
    parent = path.parent if not path.exists() else path
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RunError(f"output folder '{path}' cannot be written (no permission on '{parent}')")
    return path


def create_run_dir(path: str | Path, overwrite: bool) -> Path:
    """Create the run folder (emptying an old run when ``overwrite``)."""
    path = prepare_run_dir(path, overwrite)
    try:
        if path.exists() and overwrite and (path / RUN_FILE).exists():
            with RunLock(path):  # Never delete a run another process is training
                pass
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"output folder '{path}' cannot be created: {exc.strerror}") from None
    return path


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and the backend, and make TensorFlow ops deterministic on CPU."""
    import keras

    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def library_versions() -> dict[str, str]:
    """Versions of everything that can change a result."""
    import keras
    import numpy
    import sklearn

    from l1cnn.version import __version__

    versions = {
        "l1cnn": __version__,
        "python": platform.python_version(),
        "keras": keras.__version__,
        "keras_backend": keras.backend.backend(),
        "numpy": numpy.__version__,
        "scikit-learn": sklearn.__version__,
        "platform": platform.platform(),
    }
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        versions["tensorflow"] = tf.__version__
        # Other kernels, other last bits: needed to reproduce a run exactly.
        versions["tf_onednn_opts"] = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "unset")
    return versions


@dataclass
class Run:
    """A finished (or interrupted) run read back from its folder."""

    path: Path
    config: Config
    info: dict[str, Any]
    data: dict[str, Any]
    metrics: dict[str, Any]
    model: Any  # as trained (model.keras)
    calibration: dict[str, Any] | None = None  # calibration.json, when there is one

    @property
    def temperature(self) -> float:
        """The temperature the run's logits are divided by (1.0: not calibrated)."""
        return float(self.calibration["temperature"]) if self.calibration else 1.0

    @property
    def calibrated_model(self) -> Any:
        """The model that gives the run's probabilities: ``model`` with its temperature.

        What predict, evaluate, serve and export use; ``model`` itself when not calibrated.
        """
        if self.temperature == 1.0:
            return self.model
        cached = getattr(self, "_calibrated", None)
        if cached is None or cached[0] != self.temperature:
            from l1cnn.model import with_temperature

            cached = (self.temperature, with_temperature(self.model, self.temperature))
            self._calibrated = cached
        return cached[1]

    @property
    def class_names(self) -> list[str]:
        """[negative, positive] class names."""
        return list(self.data["class_names"])

    @property
    def threshold(self) -> float:
        """The decision threshold chosen for this run."""
        return float(self.metrics["threshold"]["value"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(height, width, channels) the model takes."""
        return tuple(self.data["image_shape"])  # type: ignore[return-value]


def read_run_config(path: str | Path) -> Config:
    """The resolved config a run was trained with."""
    try:
        return config_from_dict(read_toml(Path(path) / CONFIG_FILE))
    except ConfigError as exc:
        raise RunError(f"run '{path}' has a bad config: {exc}") from None


def check_is_run(path: str | Path) -> Path:
    """Refuse a path that is not a finished run folder, naming what is missing."""
    path = Path(path)
    if not path.exists():
        raise RunError(f"run folder '{path}' does not exist")
    if not path.is_dir():
        raise RunError(f"'{path}' is not a run folder (it is a file)")
    missing = [
        name
        for name in (CONFIG_FILE, RUN_FILE, DATA_FILE, METRICS_FILE, MODEL_FILE)
        if not (path / name).exists()
    ]
    if missing:
        raise RunError(f"'{path}' is not a finished l1cnn run (missing {', '.join(missing)})")
    return path


def load_model_file(path: str | Path) -> Any:
    """Load a ``.keras`` model with Keras' safe mode on (no arbitrary code is run)."""
    import keras

    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types here; all mean "unusable file"
        raise ModelError(
            f"model file '{path}' cannot be loaded safely: {first_line(exc)}"
        ) from None


def check_model_sha256(path: Path, info: dict[str, Any]) -> None:
    """Refuse a ``model.keras`` whose sha256 differs from the one recorded in ``run.json``.

    Detects a swapped or corrupted model file before Keras reads it. Runs written
    before the hash was recorded have no ``model_sha256`` and are not checked.
    """
    expected = info.get("model_sha256")
    if expected is None:
        return
    actual = file_sha256(path / MODEL_FILE)
    if actual != expected:
        raise ModelError(
            f"model file '{path / MODEL_FILE}' does not match run.json (sha256 {actual[:12]}... "
            f"instead of {str(expected)[:12]}...): it was replaced or corrupted after training"
        )


def load_run(path: str | Path) -> Run:
    """Read a run folder back: config, records and the model (best weights)."""
    path = check_is_run(path)
    try:
        info = read_json(path / RUN_FILE)
        data = read_json(path / DATA_FILE)
        metrics = read_json(path / METRICS_FILE)
        calibration = (
            read_json(path / CALIBRATION_FILE) if (path / CALIBRATION_FILE).exists() else None
        )
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or not UTF-8 at all
        raise RunError(f"run '{path}' has an unreadable record: {exc}") from None
    config = read_run_config(path)
    check_model_sha256(path, info)
    model = load_model_file(path / MODEL_FILE)
    return Run(
        path=path,
        config=config,
        info=info,
        data=data,
        metrics=metrics,
        model=model,
        calibration=calibration,
    )
