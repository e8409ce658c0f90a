"""Issue 6: a corpus of hostile and broken inputs, generated here, run through every command.

Each bad case must end in one ``error:`` line naming the file and the problem, exit status 2
and no traceback; survivable cases (odd but valid images, hidden and non-image files) must work,
and bad images are skipped with a warning and a count under ``--skip-bad-images``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import make_images, unprivileged, write_class_folders
from PIL import Image

from l1cnn.cli import main
from l1cnn.data import MAX_IMAGE_PIXELS

TINY = [
    "--conv-filters",
    "4,8",
    "--dense-units",
    "8",
    "--epochs",
    "1",
    "--batch-size",
    "16",
    "--quiet",
]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def run_cli(args: list, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


# --------------------------------------------------------------------------- the image corpus


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _png_with_declared_size(width: int, height: int) -> bytes:
    """A PNG header that declares ``width`` x ``height`` pixels, with almost no data after it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _gray(size: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)


# name -> (bytes, the problem the error must mention)
BAD_IMAGES: dict[str, tuple[Callable[[], bytes], str]] = {
    "truncated.png": (lambda: _encode(Image.fromarray(_gray(40)), "PNG")[:60], "truncated"),
    "truncated.jpg": (lambda: _encode(Image.fromarray(_gray(40)), "JPEG")[:200], "truncated"),
    "zero-bytes.png": (lambda: b"", "not a readable image"),
    "text.png": (lambda: b"this is not an image\n" * 3, "not a readable image"),
    "bomb.png": (lambda: _png_with_declared_size(7000, 7000), f"{MAX_IMAGE_PIXELS:,} pixels"),
    "huge-bomb.png": (lambda: _png_with_declared_size(100_000, 100_000), "pixel"),
    "garbage.gif": (lambda: b"GIF89a\x10\x00\x10\x00" + b"\xff" * 20, "image"),
}


def _odd_but_valid() -> dict[str, bytes]:
    """Images that are unusual but fine: each must load (converted to the run's shape)."""
    rgb = np.random.default_rng(1).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    palette = Image.fromarray(_gray(16)).convert("P")
    palette.info["transparency"] = 0
    frames = [Image.fromarray(_gray(16, seed=s)) for s in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return {
        "deep16.png": _encode(Image.fromarray(_gray(12).astype(np.uint16) * 257), "PNG"),
        "palette-alpha.png": _encode(palette, "PNG", transparency=0),
        "cmyk.jpg": _encode(Image.fromarray(rgb).convert("CMYK"), "JPEG"),
        "animated.gif": gif.getvalue(),
        "wide-rgb.png": _encode(Image.fromarray(rgb), "PNG"),
        "rgba.png": _encode(Image.fromarray(rgb).convert("RGBA"), "PNG"),
        "gray-alpha.png": _encode(Image.fromarray(_gray(9)).convert("LA"), "PNG"),
        "ünïcödé name ✓.png": _encode(Image.fromarray(_gray(12)), "PNG"),
        "with  spaces .jpeg": _encode(Image.fromarray(_gray(12)), "JPEG"),
        "UPPER.PNG": _encode(Image.fromarray(_gray(12)), "PNG"),
    }


IGNORED = {  # hidden files and non-image files beside images: neither loaded nor errors
    ".DS_Store": b"\x00\x00\x00\x01Bud1" + b"\x00" * 40,
    "._img_000.png": b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ",
    "notes.txt": b"not an image",
    "Thumbs.db": b"\xd0\xcf\x11\xe0",
    "labels.csv": b"a,b\n1,2\n",
}


def _hostile_folder(root: Path, bad: dict[str, bytes] | None = None) -> Path:
    """Class folders '0' and '1' (like the trained run's) with odd, ignored and ``bad`` files."""
    write_class_folders(root, n=40, names=("0", "1"))
    for name, data in _odd_but_valid().items():
        (root / "1" / name).write_bytes(data)
    for name, data in IGNORED.items():
        (root / "0" / name).write_bytes(data)
    (root / "0" / ".hidden-folder").mkdir()
    (root / "0" / ".hidden-folder" / "x.png").write_bytes(b"not even an image")
    (root / "0" / "loop").symlink_to(root / "0", target_is_directory=True)  # a symlink loop
    (root / "0" / "self-loop.png").symlink_to(root / "0" / "self-loop.png")
    for name, data in (bad or {}).items():
        (root / "0" / name).write_bytes(data)
    return root


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_each_bad_image_is_named_by_every_command(
    name: str, trained_run: Path, tmp_path: Path, capsys
) -> None:
    make, problem = BAD_IMAGES[name]
    folder = _hostile_folder(tmp_path / "data", {name: make()})
    bad_file = folder / "0" / name
    run = tmp_path / "run"
    code, _, err = run_cli(["train", folder, "--out", run, *TINY], capsys)
    assert_one_line_error(code, err, name, problem, "--skip-bad-images")
    assert not run.exists()
    code, _, err = run_cli(["evaluate", trained_run, "--data", folder], capsys)
    assert_one_line_error(code, err, name, problem)
    code, _, err = run_cli(["predict", trained_run, bad_file], capsys)
    assert_one_line_error(code, err, name, problem)
    code, _, err = run_cli(["predict", trained_run, folder], capsys)
    assert_one_line_error(code, err, name, problem)


def test_odd_valid_images_load_and_ignored_files_are_ignored(
    trained_run: Path, tmp_path: Path, capsys
) -> None:
    folder = _hostile_folder(tmp_path / "data")
    code, out, err = run_cli(["predict", trained_run, folder], capsys)
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    names = {Path(r["path"]).name for r in rows}
    assert set(_odd_but_valid()) <= names
    assert len(rows) == 40 + len(_odd_but_valid())  # nothing hidden, no non-images, no loop
    assert all(0.0 <= float(r["probability"]) <= 1.0 for r in rows)
    code, out, err = run_cli(["evaluate", trained_run, "--data", folder, "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["n"] == 40 + len(_odd_but_valid())


@pytest.mark.slow
def test_skip_bad_images_trains_on_the_rest_with_a_warning(
    trained_run: Path, tmp_path: Path, capsys
) -> None:
    bad = {name: make() for name, (make, _) in BAD_IMAGES.items()}
    folder = _hostile_folder(tmp_path / "data", bad)
    run = tmp_path / "run"
    code, out, err = run_cli(
        ["train", folder, "--out", run, "--image-size", "12", *TINY, "--skip-bad-images"], capsys
    )
    assert code == 0, err
    assert f"warning: skipped {len(bad)} bad image(s)" in err and "Traceback" not in err
    data = json.loads((run / "data.json").read_text())
    assert len(data["skipped_images"]) == len(bad)
    assert sum(sum(c.values()) for c in data["counts"].values()) == 40 + len(_odd_but_valid())
    code, out, err = run_cli(["predict", trained_run, folder, "--skip-bad-images"], capsys)
    assert code == 0 and f"warning: skipped {len(bad)} bad image(s)" in err
    assert len(list(csv.DictReader(io.StringIO(out)))) == 40 + len(_odd_but_valid())
    code, out, err = run_cli(
        ["evaluate", trained_run, "--data", folder, "--skip-bad-images", "--json"], capsys
    )
    assert code == 0 and f"warning: skipped {len(bad)} bad image(s)" in err
    assert json.loads(out)["n"] == 40 + len(_odd_but_valid())


def test_unreadable_file_and_folder(trained_run: Path, capsys) -> None:
    base = Path(tempfile.mkdtemp(prefix="l1cnn-perm-"))  # reachable by 'nobody' too
    try:
        run = Path(shutil.copytree(trained_run, base / "run"))
        folder = write_class_folders(base / "data", n=20, names=("0", "1"))
        for path in [base, *base.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        base.chmod(0o777)
        image = folder / "1" / "img_001.png"
        image.chmod(0o000)
        with unprivileged():
            code, _, err = run_cli(["predict", run, image], capsys)
            assert_one_line_error(code, err, "img_001.png", "permission denied")
            code, _, err = run_cli(["evaluate", run, "--data", folder], capsys)
            assert_one_line_error(code, err, "img_001.png", "permission denied")
        image.chmod(0o644)
        (folder / "1").chmod(0o000)
        with unprivileged():
            code, _, err = run_cli(["train", folder, "--out", base / "new", *TINY], capsys)
            assert_one_line_error(code, err, "cannot be read", "ermission denied")
            code, _, err = run_cli(["predict", run, folder], capsys)
            assert_one_line_error(code, err, "cannot be read", "ermission denied")
            code, _, err = run_cli(["evaluate", run, "--data", folder], capsys)
            assert_one_line_error(code, err, "cannot be read", "ermission denied")
    finally:
        (base / "data" / "1").chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------- the array corpus


def _npz(**arrays: np.ndarray) -> Callable[[Path], None]:
    return lambda path: np.savez(path, **arrays)


def _raw(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def _good_npz_bytes() -> bytes:
    x, y = make_images(20)
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y)
    return buf.getvalue()


def _npz_declaring_shape(shape: tuple[int, ...]) -> Callable[[Path], None]:
    """An .npz whose x.npy header declares ``shape`` but holds 64 bytes (an allocation bomb)."""

    def write(path: Path) -> None:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": "|u1", "fortran_order": False, "shape": shape}
        )
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("x.npy", header.getvalue() + b"\0" * 64)
            z.writestr("y.npy", header.getvalue() + b"\0" * 64)

    return write


X, Y = make_images(20)
X2 = X[..., 0]
# name -> (writer, problem the error must mention, whether predict reads it too)
BAD_ARRAYS: dict[str, tuple[Callable[[Path], None], str, bool]] = {
    "nan": (_npz(x=np.where(X2 > 100, np.nan, X2 / 255.0), y=Y), "NaN or Inf", True),
    "inf": (_npz(x=np.full(X2.shape, np.inf), y=Y), "NaN or Inf", True),
    "strings": (
        _npz(x=np.array([["a"] * 12] * 12 * 20).reshape(20, 12, 12), y=Y),
        "must be numeric",
        True,
    ),
    "objects": (
        lambda p: np.savez(p, x=np.array([X2[0], "x"], dtype=object), y=Y[:2]),
        "Python objects",
        True,
    ),
    "five-d": (_npz(x=np.zeros((20, 2, 12, 12, 1)), y=Y), "shape", True),
    "empty": (_npz(x=np.zeros((0, 12, 12)), y=np.zeros(0)), "empty", True),
    "four-channels": (_npz(x=np.zeros((20, 12, 12, 4), np.uint8), y=Y), "channels", True),
    "labels-0-2": (_npz(x=X2, y=Y * 2), "labels must be 0 or 1", False),
    "string-labels": (_npz(x=X2, y=np.array(["cat", "dog"] * 10)), "labels must be numbers", False),
    "label-count": (_npz(x=X2, y=Y[:7]), "20 images but 7 labels", False),
    "out-of-range": (_npz(x=X2.astype(np.int64) * 10, y=Y), "0..255", True),
    "complex": (_npz(x=X2 + 1j, y=Y), "", True),
    "no-known-keys": (_npz(pixels=X2, target=Y), "pixels", True),
    "pickle": (_raw(pickle.dumps({"x": X2, "y": Y})), "Python objects", True),
    "npy-not-npz": (lambda p: np.save(open(p, "wb"), X2), "not a readable .npz", True),  # noqa: SIM115
    "truncated-zip": (_raw(_good_npz_bytes()[:300]), "not a readable .npz", True),
    "zero-bytes": (_raw(b""), "not a readable .npz", True),
    "declares-90-TiB": (_npz_declaring_shape((10**6, 10**6, 100)), "not a readable .npz", True),
    "declares-2-GiB": (_npz_declaring_shape((30000, 300, 300)), "not a readable .npz", True),
    "text": (_raw(b"x,y\n1,2\n"), "not a readable .npz", True),
}


@pytest.mark.parametrize("name", sorted(BAD_ARRAYS))
def test_each_bad_array_file_is_named_by_every_command(
    name: str, trained_run: Path, tmp_path: Path, capsys
) -> None:
    write, problem, predict_reads = BAD_ARRAYS[name]
    path = tmp_path / f"{name}.npz"
    write(path)
    run = tmp_path / "run"
    code, _, err = run_cli(["train", path, "--out", run, *TINY], capsys)
    assert_one_line_error(code, err, path.name, problem)
    assert not run.exists()
    code, _, err = run_cli(["evaluate", trained_run, "--data", path], capsys)
    assert_one_line_error(code, err, path.name, problem)
    code, out, err = run_cli(["predict", trained_run, path], capsys)
    if predict_reads:
        assert_one_line_error(code, err, path.name, problem)
    else:  # labels do not matter to predict: the images are fine
        assert code == 0 and len(out.strip().splitlines()) == 21, err


# --------------------------------------------------------------------------- config files

BAD_TOML = {
    "not-toml": ("model = [unclosed\n", "is not valid TOML"),
    "binary": ("\x00\x01\x02", "is not valid TOML"),
    "unknown-key": ("[model]\nl2_lambda = 0.1\n", "unknown config key 'model.l2_lambda'"),
    "unknown-section": ("[optimizer]\nname = 'sgd'\n", "unknown config section 'optimizer'"),
    "wrong-type": ("[train]\nepochs = 'ten'\n", "'train.epochs' must be int"),
    "bool-for-int": ("[train]\nbatch_size = true\n", "'train.batch_size' must be int"),
    "out-of-range": ("[model]\ndropout_rate = 1.0\n", "'model.dropout_rate' must be in [0, 1)"),
    "negative": ("[train]\nlearning_rate = -0.1\n", "'train.learning_rate' must be > 0"),
    "section-not-table": ("model = 3\n", "'model' must be a table"),
    "empty-list": ("[model]\nconv_filters = []\n", "non-empty list"),
}


@pytest.mark.parametrize("name", sorted(BAD_TOML))
def test_each_bad_config_file_is_refused(name: str, npz_file: Path, tmp_path: Path, capsys) -> None:
    text, problem = BAD_TOML[name]
    config = tmp_path / f"{name}.toml"
    config.write_text(text, encoding="utf-8")
    code, _, err = run_cli(["train", npz_file, "--config", config, "--out", tmp_path / "r"], capsys)
    assert_one_line_error(code, err, problem)
    assert not (tmp_path / "r").exists()


RUN_DAMAGE = {
    "config.toml": (b"[model\n", "bad config"),
    "run.json": (b"{not json", "unreadable record"),
    "metrics.json": (b"\xff\xfe", "unreadable record"),
    "data.json": (b"", "unreadable record"),
    "model.keras": (b"PK\x03\x04", "model.keras"),
}


@pytest.mark.parametrize("name", sorted(RUN_DAMAGE))
def test_damaged_run_folder_is_refused_by_evaluate_and_predict(
    name: str, trained_run: Path, tmp_path: Path, capsys
) -> None:
    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    data, problem = RUN_DAMAGE[name]
    (run / name).write_bytes(data)
    image = tmp_path / "x.png"
    Image.fromarray(_gray(12)).save(image)
    for args in (["evaluate", run], ["predict", run, image]):
        code, _, err = run_cli(args, capsys)
        assert_one_line_error(code, err, problem)
    (run / name).unlink()
    code, _, err = run_cli(["evaluate", run], capsys)
    assert_one_line_error(code, err, "missing" if name != "data.json" else "data.json")


@pytest.mark.slow
def test_a_real_subprocess_reports_hostile_input_without_traceback(tmp_path: Path) -> None:
    folder = _hostile_folder(tmp_path / "data", {"text.png": b"not an image"})
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "l1cnn.cli",
            "train",
            str(folder),
            "--out",
            str(tmp_path / "r"),
            "--quiet",
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "text.png" in result.stderr and "not a readable image" in result.stderr
