"""Class folders: kept in memory when they fit the budget, else streamed (decoded per batch or
read from the pixel cache, never held whole). Most tests here set the budget to 0 to stream."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import make_images, tiny_config, write_class_folders
from test_cli import TINY, assert_one_line_error, run_cli

from l1cnn import images as images_module
from l1cnn import load_data, train
from l1cnn.config import DataConfig
from l1cnn.data import Split, make_tf_dataset
from l1cnn.errors import DataError
from l1cnn.images import FileImages, load_images

STREAM = ["--keep-decoded-mb", "0"]  # stream: decode every epoch


def _batches(split: Split, seed: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    ds = make_tf_dataset(split, 8, shuffle=True, seed=seed, weights={0: 1.5, 1: 0.5})
    return [(x.numpy(), y.numpy(), w.numpy()) for x, y, w in ds]


def test_folder_splits_are_file_backed_and_decode_like_the_decoder(image_folder: Path) -> None:
    ds = load_data(image_folder, DataConfig(image_size=12, keep_decoded_mb=0), seed=1)
    train_split = ds.splits["train"]
    assert train_split.streamed and isinstance(train_split.images, FileImages)
    assert train_split.images.shape == (len(train_split), 12, 12, 1)
    assert ds.summary()["streamed"] is True
    paths = [image_folder / i for i in train_split.ids]
    expected, _, _ = load_images(paths, (12, 12), 1, skip_bad=False)
    np.testing.assert_array_equal(np.asarray(train_split.images), expected)
    np.testing.assert_array_equal(train_split.images[[3, 0]], expected[[3, 0]])
    np.testing.assert_array_equal(train_split.images[2], expected[2])


def test_streamed_batches_equal_in_memory_batches(image_folder: Path) -> None:
    """Same seed, same batches, whether the pixels are in files or in an array."""
    ds = load_data(image_folder, DataConfig(image_size=12, keep_decoded_mb=0), seed=1)
    streamed = ds.splits["train"]
    in_memory = Split(np.asarray(streamed.images), streamed.labels, streamed.ids)
    for seed in (3, 4):
        got, want = _batches(streamed, seed), _batches(in_memory, seed)
        assert len(got) == len(want) == 4
        for (xg, yg, wg), (xw, yw, ww) in zip(got, want, strict=True):
            np.testing.assert_array_equal(xg, xw)
            np.testing.assert_array_equal(yg, yw)
            np.testing.assert_array_equal(wg, ww)
    assert not np.array_equal(_batches(streamed, 3)[0][0], _batches(streamed, 4)[0][0])


def test_fingerprint_follows_pixels_not_file_bytes(image_folder: Path) -> None:
    first = load_data(
        image_folder, DataConfig(image_size=12, keep_decoded_mb=0), seed=1
    ).fingerprint()
    assert (
        load_data(image_folder, DataConfig(image_size=12, keep_decoded_mb=0), seed=1).fingerprint()
        == first
    )
    target = image_folder / "dog" / "img_001.png"
    from PIL import Image

    pixels = np.asarray(Image.open(target)).copy()
    Image.fromarray(pixels).save(target, optimize=True, compress_level=1)  # other bytes
    assert (
        load_data(image_folder, DataConfig(image_size=12, keep_decoded_mb=0), seed=1).fingerprint()
        == first
    )
    pixels[0, 0] ^= 0xFF
    Image.fromarray(pixels).save(target)
    assert (
        load_data(image_folder, DataConfig(image_size=12, keep_decoded_mb=0), seed=1).fingerprint()
        != first
    )


def test_cache_is_written_then_reused_without_decoding(
    image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    config = DataConfig(image_size=12, keep_decoded_mb=0, cache=str(cache))
    first = load_data(image_folder, config, seed=1)
    entries = sorted(p.name for p in cache.iterdir())
    assert len(entries) == 2 and entries[0].endswith(".meta.npz") and entries[1].endswith(".pixels")
    assert (cache / entries[1]).stat().st_size == 40 * 12 * 12
    plain = load_data(image_folder, DataConfig(image_size=12, keep_decoded_mb=0), seed=1)
    assert first.fingerprint() == plain.fingerprint()
    want = {name: np.asarray(split.images) for name, split in plain.splits.items()}
    train_plain = plain.splits["train"]
    in_memory = Split(want["train"], train_plain.labels, train_plain.ids)
    want_batches = _batches(in_memory, 5)

    def no_decoding(*args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("decoded although the cache holds the pixels")

    monkeypatch.setattr(images_module, "load_image", no_decoding)
    again = load_data(image_folder, config, seed=1)
    assert again.fingerprint() == first.fingerprint()
    for name, pixels in want.items():
        np.testing.assert_array_equal(np.asarray(again.splits[name].images), pixels)
    batches = _batches(again.splits["train"], 5)  # the tf.data path reads the cache too
    for (xg, *_), (xw, *_) in zip(batches, want_batches, strict=True):
        np.testing.assert_array_equal(xg, xw)


def test_cache_misses_when_a_file_changes_or_the_size_does(image_folder: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    load_data(image_folder, DataConfig(image_size=12, keep_decoded_mb=0, cache=str(cache)), seed=1)
    load_data(image_folder, DataConfig(image_size=10, cache=str(cache)), seed=1)
    assert len(list(cache.glob("*.pixels"))) == 2  # another size is another entry
    target = image_folder / "cat" / "img_000.png"
    make = make_images(1, 12, seed=99)[0][0, ..., 0]
    from PIL import Image

    Image.fromarray(make).save(target)
    os.utime(target, ns=(1, 1))  # a different mtime as well as different pixels
    ds = load_data(
        image_folder, DataConfig(image_size=12, keep_decoded_mb=0, cache=str(cache)), seed=1
    )
    assert len(list(cache.glob("*.pixels"))) == 3
    split = next(s for s in ds.splits.values() if "cat/img_000.png" in s.ids)
    got = split.images[split.ids.index("cat/img_000.png")]
    np.testing.assert_array_equal(got[..., 0], make)
    assert not list(cache.glob("*.tmp")), "no temporary files left behind"


def test_cache_records_bad_images_and_skip_flag(image_folder: Path, tmp_path: Path) -> None:
    (image_folder / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="1 bad image"):
        load_data(
            image_folder, DataConfig(image_size=12, keep_decoded_mb=0, cache=str(cache)), seed=1
        )
    assert not list(cache.glob("*.pixels")) and not list(cache.glob("*.tmp"))
    config = DataConfig(image_size=12, keep_decoded_mb=0, cache=str(cache), skip_bad_images=True)
    ds = load_data(image_folder, config, seed=1)
    assert len(ds.skipped) == 1 and sum(len(s) for s in ds.splits.values()) == 40
    with pytest.raises(DataError, match="1 bad image"):  # a cached entry still refuses
        load_data(
            image_folder, DataConfig(image_size=12, keep_decoded_mb=0, cache=str(cache)), seed=1
        )
    assert len(load_data(image_folder, config, seed=1).skipped) == 1


def test_unwritable_cache_folder_is_one_clear_error(image_folder: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DataError, match="cache folder"):
        load_data(
            image_folder,
            DataConfig(image_size=12, keep_decoded_mb=0, cache=str(blocker / "c")),
            seed=1,
        )


def test_training_on_folder_equals_training_on_the_same_arrays(tmp_path: Path) -> None:
    """Streaming changes where pixels come from, not what the network learns."""
    folder = write_class_folders(tmp_path / "pets", n=48, size=12)
    ds = load_data(folder, DataConfig(image_size=12, keep_decoded_mb=0), seed=7)
    arrays = {}
    for name, split in ds.splits.items():
        arrays[f"{name}_images"] = np.asarray(split.images)
        arrays[f"{name}_labels"] = split.labels
    np.savez(tmp_path / "same.npz", **arrays)
    config = tiny_config(data={"image_size": 12})
    streamed = train(folder, config, out=tmp_path / "a")
    in_memory = train(tmp_path / "same.npz", config, out=tmp_path / "b")
    assert [h["loss"] for h in streamed.history] == [h["loss"] for h in in_memory.history]
    assert streamed.metrics["test"]["roc_auc"] == in_memory.metrics["test"]["roc_auc"]


def test_cli_cache_option_and_a_file_broken_mid_training(tmp_path: Path, capsys) -> None:
    data = write_class_folders(tmp_path / "pets", n=40)
    cache = tmp_path / "pixels"
    out = tmp_path / "run"
    code, _, err = run_cli(
        ["train", data, "--out", out, "--image-size", "12", "--cache", cache, *STREAM, *TINY],
        capsys,
    )
    assert code == 0, err
    assert len(list(cache.glob("*.pixels"))) == 1
    assert json.loads((out / "data.json").read_text())["streamed"] is True

    # Without a cache, every epoch decodes: a file broken after the scan stops training with
    # one line naming it, and the last finished epoch can be resumed.
    train_ids = (
        load_data(data, DataConfig(image_size=12, keep_decoded_mb=0), seed=42).splits["train"].ids
    )
    victim = data / train_ids[-1]  # decoded in epoch 1 (the CLI's default seed is 42)
    real_load = images_module.load_image
    calls = {"n": 0}

    def break_after_scan(path, *args):  # the scan decodes each file once, then epochs start
        calls["n"] += 1
        if calls["n"] > 40 and str(path) == str(victim):
            raise DataError(f"'{path}': truncated or corrupt image (test)")
        return real_load(path, *args)

    images_module.load_image = break_after_scan
    try:
        code, _, err = run_cli(
            ["train", data, "--out", tmp_path / "run2", "--image-size", "12", *STREAM, *TINY],
            capsys,
        )
    finally:
        images_module.load_image = real_load
    assert_one_line_error(code, err, victim.name, "--resume")


def test_pixels_that_fit_the_budget_are_kept_from_the_scan_and_never_decoded_again(
    image_folder: Path, monkeypatch
) -> None:
    """The default budget keeps small folders in memory: same pixels, same batches, no decoding."""
    streamed = load_data(image_folder, DataConfig(image_size=12, keep_decoded_mb=0), seed=1)
    want = {seed: _batches(streamed.splits["train"], seed) for seed in (3, 4)}
    want_pixels = streamed.splits["train"].images[[2, 0]]
    calls = {"n": 0}
    real_load = images_module.load_image

    def counting_load(*args):
        calls["n"] += 1
        return real_load(*args)

    monkeypatch.setattr(images_module, "load_image", counting_load)
    kept = load_data(image_folder, DataConfig(image_size=12), seed=1)
    scanned = calls["n"]
    assert scanned == sum(len(s) for s in kept.splits.values())  # each file decoded once
    train_split = kept.splits["train"]
    assert not train_split.streamed and isinstance(train_split.images, FileImages)
    assert kept.summary()["streamed"] is False
    assert kept.fingerprint() == streamed.fingerprint()  # the same data, however it is held
    for seed in (3, 4):
        for (xg, yg, _), (xw, yw, _) in zip(_batches(train_split, seed), want[seed], strict=True):
            np.testing.assert_array_equal(xg, xw)
            np.testing.assert_array_equal(yg, yw)
    np.testing.assert_array_equal(train_split.images[[2, 0]], want_pixels)
    assert calls["n"] == scanned  # batches and reads came from memory

    # One byte less than the folder's pixels: every split streams again.
    total = sum(len(s) * 12 * 12 for s in kept.splits.values())
    tight = load_data(
        image_folder, DataConfig(image_size=12, keep_decoded_mb=(total - 1) / 2**20), seed=1
    )
    assert any(s.streamed for s in tight.splits.values())
