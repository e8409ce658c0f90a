"""Shared fixtures: tiny image folders and arrays made in tmp_path, a tiny config, a tiny run."""

from __future__ import annotations

import contextlib
import os
import pwd
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from l1cnn.config import Config, config_from_dict  # noqa: E402

SHARED_NPZ = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pneumoniamnist_balanced.npz"
)


def tiny_config(**sections: dict) -> Config:
    """A small, fast network (2 epochs) with any section overrides."""
    raw = {
        "model": {"conv_filters": [4, 8], "dense_units": 8},
        "train": {"epochs": 2, "batch_size": 16, "seed": 7},
    }
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    return config_from_dict(raw)


def make_images(
    n: int, size: int = 12, seed: int = 0, channels: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Learnable toy images: class 1 has a bright square in the top-left corner."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.integers(0, 60, size=(n, size, size, channels), dtype=np.uint8)
    images[labels == 1, : size // 2, : size // 2, :] += 150
    return images, labels


def write_class_folders(
    root: Path,
    n: int = 40,
    size: int = 12,
    channels: int = 1,
    names: tuple[str, str] = ("cat", "dog"),
    seed: int = 0,
) -> Path:
    """Write ``n`` PNGs into root/<name>/ folders (label 1 -> names[1])."""
    from PIL import Image

    images, labels = make_images(n, size, seed, channels)
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        arr = img[..., 0] if channels == 1 else img
        Image.fromarray(arr).save(root / names[label] / f"img_{i:03d}.png")
    return root


@pytest.fixture
def seed() -> int:
    return 7


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """40 grayscale 12x12 PNGs in two class folders (cat, dog)."""
    return write_class_folders(tmp_path / "images")


@pytest.fixture
def npz_file(tmp_path: Path) -> Path:
    """MedMNIST-style arrays: train/val/test splits of 12x12 grayscale images."""
    path = tmp_path / "tiny.npz"
    arrays = {}
    for i, (split, n) in enumerate((("train", 80), ("val", 20), ("test", 20))):
        x, y = make_images(n, seed=i)
        arrays[f"{split}_images"] = x[..., 0]
        arrays[f"{split}_labels"] = y.reshape(-1, 1)
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny run, trained once per session (read-only for tests: copy before changing it)."""
    from l1cnn import train

    root = tmp_path_factory.mktemp("session")
    x, y = make_images(120, seed=3)
    data = root / "data.npz"
    np.savez(data, x=x, y=y)
    result = train(
        data, tiny_config(model={"l1_lambda": 0.0001}, train={"epochs": 3}), out=root / "run"
    )
    return result.run_dir


@pytest.fixture
def shared_npz() -> Path:
    if not SHARED_NPZ.exists():
        pytest.skip(f"shared data not found at {SHARED_NPZ} (the real X-ray data lives there)")
    return SHARED_NPZ


@contextlib.contextmanager
def unprivileged() -> Iterator[None]:
    """Root ignores permission bits: act as 'nobody' (effective ids only) while inside."""
    if os.geteuid() != 0:
        yield
        return
    nobody = pwd.getpwnam("nobody")
    os.setegid(nobody.pw_gid)
    os.seteuid(nobody.pw_uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def interruptible() -> None:
    """``preexec_fn`` for a child that a test stops with SIGINT: restore its default handler.

    A shell that runs the suite in the background (``make test &``) starts it with SIGINT
    ignored, and children inherit that, so Python would never raise KeyboardInterrupt there.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
