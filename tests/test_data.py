"""Data sources, splits and the errors bad data gets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import make_images, write_class_folders
from PIL import Image

from l1cnn import load_data
from l1cnn.config import DataConfig
from l1cnn.data import make_tf_dataset
from l1cnn.errors import DataError


def test_class_folders_default_size_channels_and_positive(image_folder: Path) -> None:
    ds = load_data(image_folder, DataConfig(), seed=1)
    assert ds.class_names == ["cat", "dog"] and ds.positive_class == "dog"
    assert ds.image_shape == (64, 64, 1)  # folders default to 64x64; gray PNGs -> 1 channel
    assert ds.kind == "folder"
    assert sum(len(s) for s in ds.splits.values()) == 40
    assert ds.splits["train"].images.dtype == np.uint8
    # every id is a relative path inside its class folder, labels follow the folder
    for split in ds.splits.values():
        for image_id, label in zip(split.ids, split.labels, strict=True):
            assert image_id.startswith("dog/" if label == 1 else "cat/")


def test_positive_class_option_flips_labels(image_folder: Path) -> None:
    default = load_data(image_folder, DataConfig(image_size=12), seed=1)
    flipped = load_data(image_folder, DataConfig(image_size=12, positive_class="cat"), seed=1)
    assert flipped.class_names == ["dog", "cat"]
    by_id = dict(zip(default.splits["train"].ids, default.splits["train"].labels, strict=True))
    for i, label in zip(flipped.splits["train"].ids, flipped.splits["train"].labels, strict=True):
        assert label == 1 - by_id[i]
    with pytest.raises(DataError, match="positive class 'bird' is not one of"):
        load_data(image_folder, DataConfig(positive_class="bird"), seed=1)


def test_colour_images_give_three_channels_and_resize(tmp_path: Path) -> None:
    root = write_class_folders(tmp_path / "rgb", n=20, size=20, channels=3)
    ds = load_data(root, DataConfig(image_size=16), seed=0)
    assert ds.image_shape == (16, 16, 3)
    gray = load_data(root, DataConfig(image_size=16, channels=1), seed=0)
    assert gray.image_shape == (16, 16, 1)


def test_nested_folders_hidden_and_non_image_files(image_folder: Path) -> None:
    nested = image_folder / "dog" / "more" / "deeper"
    nested.mkdir(parents=True)
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(nested / "extra.jpg")
    (image_folder / "dog" / ".DS_Store").write_bytes(b"\x00junk")
    (image_folder / "dog" / "._img_001.png").write_bytes(b"apple double")
    (image_folder / "cat" / "notes.txt").write_text("not an image")
    (image_folder / ".hidden_class").mkdir()
    ds = load_data(image_folder, DataConfig(image_size=12), seed=0)
    ids = [i for s in ds.splits.values() for i in s.ids]
    assert "dog/more/deeper/extra.jpg" in ids and len(ids) == 41


def test_given_train_val_test_folders_are_used(tmp_path: Path) -> None:
    for split, n in (("train", 20), ("val", 8), ("test", 10)):
        write_class_folders(tmp_path / "d" / split, n=n, seed=len(split))
    ds = load_data(tmp_path / "d", DataConfig(image_size=12), seed=0)
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 20, "val": 8, "test": 10}
    assert ds.split_origin == {"train": "given", "val": "given", "test": "given"}
    assert all(i.startswith("test/") for i in ds.splits["test"].ids)


def test_stratified_70_15_15_split_is_seeded(tmp_path: Path) -> None:
    x, y = make_images(200)
    path = tmp_path / "xy.npz"
    np.savez(path, x=x, y=y)
    a = load_data(path, DataConfig(), seed=5)
    b = load_data(path, DataConfig(), seed=5)
    c = load_data(path, DataConfig(), seed=6)
    assert {k: len(v) for k, v in a.splits.items()} == {"train": 140, "val": 30, "test": 30}
    assert a.split_ids() == b.split_ids() and a.fingerprint() == b.fingerprint()
    assert a.split_ids() != c.split_ids()
    for split in a.splits.values():  # stratified: both classes equally present
        assert abs(int(split.labels.sum()) * 2 - len(split)) <= 1
    all_ids = [i for s in a.splits.values() for i in s.ids]
    assert len(set(all_ids)) == 200  # disjoint and complete


def test_medmnist_style_npz(npz_file: Path) -> None:
    ds = load_data(npz_file, DataConfig(), seed=0)
    assert ds.image_shape == (12, 12, 1)  # arrays keep their own size
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 80, "val": 20, "test": 20}
    assert ds.class_names == ["0", "1"] and ds.splits["train"].ids[3] == "train:3"
    assert ds.summary()["counts"]["test"] == {"0": 10, "1": 10}


def test_npz_test_only_split_carves_validation(tmp_path: Path) -> None:
    x, y = make_images(100)
    path = tmp_path / "tt.npz"
    np.savez(path, train_images=x[:80], train_labels=y[:80], test_images=x[80:], test_labels=y[80:])
    ds = load_data(path, DataConfig(), seed=0)
    assert len(ds.splits["test"]) == 20 and ds.split_origin["test"] == "given"
    assert ds.split_origin["val"] == "stratified" and len(ds.splits["val"]) == 14


def test_float_arrays_in_unit_range_become_pixels(tmp_path: Path) -> None:
    x, y = make_images(40)
    path = tmp_path / "f.npz"
    np.savez(path, x=x.astype(np.float32) / 255.0, y=y)
    ds = load_data(path, DataConfig(), seed=0)
    assert ds.splits["train"].images.max() > 100  # scaled back to 0..255


def test_digits_bundled(tmp_path: Path) -> None:
    ds = load_data("digits", DataConfig(), seed=0)
    assert ds.class_names == ["even", "odd"] and ds.image_shape == (8, 8, 1)
    assert sum(len(s) for s in ds.splits.values()) == 1797
    big = load_data("digits", DataConfig(image_size=16, channels=3), seed=0)
    assert big.image_shape == (16, 16, 3)


def test_tf_dataset_batches_and_weights(npz_file: Path) -> None:
    ds = load_data(npz_file, DataConfig(), seed=0)
    batches = list(make_tf_dataset(ds.splits["train"], 32, weights={0: 2.0, 1: 0.5}))
    assert [int(b[0].shape[0]) for b in batches] == [32, 32, 16]
    x, y, w = batches[0]
    assert x.dtype.name == "float32" and x.shape[1:] == (12, 12, 1)
    assert set(np.unique(w.numpy())) <= {2.0, 0.5}
    assert np.all(w.numpy()[y.numpy() == 1] == 0.5)


# ----------------------------------------------------------------------------- bad data


def _expect(source: Path | str, message: str, **config: object) -> None:
    with pytest.raises(DataError) as info:
        load_data(source, DataConfig(**config), seed=0)
    assert message in str(info.value), str(info.value)


def test_missing_path(tmp_path: Path) -> None:
    _expect(tmp_path / "nope", "does not exist")


@pytest.mark.parametrize("n_classes", [0, 1, 3])
def test_wrong_number_of_class_folders(tmp_path: Path, n_classes: int) -> None:
    root = tmp_path / "d"
    root.mkdir()
    for i in range(n_classes):
        write_class_folders(tmp_path / "tmp", n=4)
        (root / f"c{i}").mkdir()
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / f"c{i}" / "a.png")
    _expect(root, f"must hold exactly two class folders, found {n_classes}")


def test_empty_class(tmp_path: Path) -> None:
    root = write_class_folders(tmp_path / "d", n=10)
    for f in (root / "dog").iterdir():
        f.unlink()
    _expect(root, "class folder")
    _expect(root, "holds no images")


def test_corrupt_images_listed_and_skippable(image_folder: Path) -> None:
    (image_folder / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    good = image_folder / "dog" / "img_001.png"
    (image_folder / "dog" / "truncated.png").write_bytes(good.read_bytes()[:60])
    (image_folder / "dog" / "text.jpg").write_text("hello, not a jpeg")
    with pytest.raises(DataError) as info:
        load_data(image_folder, DataConfig(), seed=0)
    message = str(info.value)
    assert "3 bad image(s)" in message and "broken.png" in message
    assert "--skip-bad-images" in message
    ds = load_data(image_folder, DataConfig(skip_bad_images=True), seed=0)
    assert len(ds.skipped) == 3 and sum(len(s) for s in ds.splits.values()) == 40


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((10, 8, 8)), "y": np.array([0, 2] * 5)}, "labels must be 0 or 1"),
        ({"x": np.zeros((10, 8, 8)), "y": np.zeros(10)}, "only one class present"),
        ({"x": np.zeros((10, 8, 8)), "y": np.array([0, 1] * 4)}, "10 images but 8 labels"),
        ({"x": np.full((10, 8, 8), np.nan), "y": np.array([0, 1] * 5)}, "NaN or Inf"),
        ({"x": np.zeros((10, 8, 8, 1, 1)), "y": np.array([0, 1] * 5)}, "must have shape"),
        ({"x": np.zeros((0, 8, 8)), "y": np.zeros(0)}, "no images"),
        ({"x": np.full((10, 8, 8), 300.0), "y": np.array([0, 1] * 5)}, "must lie in"),
        ({"images": np.zeros((10, 8, 8))}, "must hold train_images/train_labels"),
        ({"x": np.array(["a"] * 10), "y": np.array([0, 1] * 5)}, "must be numeric"),
    ],
)
def test_bad_arrays(tmp_path: Path, arrays: dict, message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    _expect(path, message)


def test_pickle_disguised_as_npz_is_not_loaded(tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "evil.npz"
    path.write_bytes(pickle.dumps({"x": [1, 2, 3]}))
    _expect(path, "is not a readable .npz array file")
    objects = tmp_path / "objects.npz"
    np.savez(objects, x=np.array([object(), object()], dtype=object), y=np.array([0, 1]))
    _expect(objects, "not loaded for safety")


def test_unknown_file_type(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("1,2,3")
    _expect(path, "is neither a folder of class folders, a .npz file")
