"""Issue 6: property-based fuzzing of the loaders: random and mutated bytes as image and ``.npz``
files, and random arrays into the ``.npz`` loader. Whatever comes in, only the library's own
error types (``L1CNNError``) may come out. Bounded by ``max_examples`` to a few seconds each.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from l1cnn.config import DataConfig
from l1cnn.data import iter_predict_inputs, load_data, load_image
from l1cnn.errors import L1CNNError

FUZZ = settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """One folder for every example (hypothesis reruns the test body, not the fixture)."""
    with tempfile.TemporaryDirectory(prefix="l1cnn-fuzz-") as folder:
        yield Path(folder)


def _valid_images() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    gray = Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8))
    out = {}
    for ext, fmt, img in (
        (".png", "PNG", gray),
        (".jpg", "JPEG", gray.convert("RGB")),
        (".gif", "GIF", gray),
        (".bmp", "BMP", gray.convert("RGB")),
    ):
        buf = io.BytesIO()
        img.save(buf, fmt)
        out[ext] = buf.getvalue()
    return out


def _valid_npz(save=np.savez) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    save(buf, x=rng.integers(0, 255, (20, 8, 8), dtype=np.uint8), y=np.arange(20) % 2)
    return buf.getvalue()


VALID_IMAGES = _valid_images()
VALID_NPZ = [_valid_npz(), _valid_npz(np.savez_compressed)]  # stored and deflated members


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """``base`` with a few bytes overwritten, then maybe cut short or extended."""
    data = bytearray(base)
    for _ in range(draw(st.integers(0, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(data)))
    tail = draw(st.binary(max_size=32))
    return bytes(data[:cut]) + tail if draw(st.booleans()) else bytes(data)


def _only_library_errors(call) -> None:
    try:
        call()
    except L1CNNError as exc:
        assert str(exc) and "\n" not in str(exc).strip()


@FUZZ
@given(ext=st.sampled_from(sorted(VALID_IMAGES)), data=st.data())
def test_random_and_mutated_bytes_as_images(scratch: Path, ext: str, data: st.DataObject) -> None:
    raw = data.draw(st.one_of(st.binary(max_size=256), mutated(VALID_IMAGES[ext])))
    path = scratch / f"fuzz{ext}"
    path.write_bytes(raw)
    channels = data.draw(st.sampled_from([1, 3]))
    _only_library_errors(lambda: load_image(path, (12, 12), channels))


@FUZZ
@given(data=st.data())
def test_random_and_mutated_bytes_as_npz(scratch: Path, data: st.DataObject) -> None:
    raw = data.draw(
        st.one_of(st.binary(max_size=256), mutated(VALID_NPZ[0]), mutated(VALID_NPZ[1]))
    )
    path = scratch / "fuzz.npz"
    path.write_bytes(raw)
    _only_library_errors(lambda: load_data(path, DataConfig(), 0))
    _only_library_errors(lambda: list(iter_predict_inputs([path])))


DTYPES = st.one_of(
    hnp.integer_dtypes(),
    hnp.unsigned_integer_dtypes(),
    hnp.floating_dtypes(),
    hnp.boolean_dtypes(),
    hnp.complex_number_dtypes(),
    hnp.unicode_string_dtypes(),
    hnp.byte_string_dtypes(),
    hnp.datetime64_dtypes(),
)


@FUZZ
@given(
    x=hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=5, max_side=6)),
    y=hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=2, max_side=40)),
    layout=st.sampled_from(["xy", "splits"]),
)
def test_random_arrays_into_the_npz_loader(
    scratch: Path, x: np.ndarray, y: np.ndarray, layout: str
) -> None:
    path = scratch / "arrays.npz"
    if layout == "xy":
        np.savez(path, x=x, y=y)
    else:
        np.savez(path, train_images=x, train_labels=y, test_images=x, test_labels=y)
    _only_library_errors(lambda: load_data(path, DataConfig(), 0))
    _only_library_errors(lambda: load_data(path, DataConfig(image_size=5, channels=3), 0))
    _only_library_errors(lambda: list(iter_predict_inputs([path])))
