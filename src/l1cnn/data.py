"""Data sources (class folders, ``.npz`` arrays, the bundled digits) -> splits -> ``tf.data``.

Knows nothing of the model. Every source ends up as a :class:`Dataset`: raw pixel arrays
(uint8, or float32 in 0..255) shaped (N, H, W, C), labels in {0, 1} where 1 is the positive
class, and a stable id per image (its relative path, or ``split:index`` for arrays) so that a
run's split can be recorded and checked later.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from l1cnn.config import DataConfig
from l1cnn.errors import DataError, first_line
from l1cnn.images import (  # noqa: F401  (load_image, load_images, MAX_IMAGE_PIXELS: public here)
    MAX_IMAGE_PIXELS,
    FileImages,
    image_is_gray,
    load_image,
    load_images,
    scan_images,
)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif"})
SPLIT_NAMES = ("train", "val", "test")
DEFAULT_FOLDER_IMAGE_SIZE = 64
DIGITS = "digits"


@dataclass
class Split:
    """One split's pixels, labels (1 = positive class) and image ids.

    ``images`` is an in-memory array (``.npz``, digits) or, for class folders, a
    :class:`FileImages` that decodes images only when they are read.
    """

    images: np.ndarray | FileImages
    labels: np.ndarray
    ids: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def streamed(self) -> bool:
        """Whether the pixels live in files (decoded per batch), not in memory."""
        return isinstance(self.images, FileImages) and self.images.pixels is None

    def take(self, index: np.ndarray) -> Split:
        """The sub-split at ``index``."""
        images = self.images
        picked = images.subset(index) if isinstance(images, FileImages) else images[index]
        return Split(picked, self.labels[index], [self.ids[i] for i in index])

    def pixel_digest(self) -> bytes:
        """Bytes that change when any pixel does: the per-image digests, or the pixels."""
        if isinstance(self.images, FileImages):
            return self.images.digests.tobytes()
        return np.ascontiguousarray(self.images).tobytes()


def concat_splits(parts: list[Split]) -> Split:
    """One split made of ``parts`` in order."""
    if all(isinstance(p.images, FileImages) for p in parts):
        images: np.ndarray | FileImages = FileImages.concat([p.images for p in parts])  # type: ignore[misc]
    else:
        images = np.concatenate([np.asarray(p.images) for p in parts])
    labels = np.concatenate([p.labels for p in parts])
    return Split(images, labels, [i for p in parts for i in p.ids])


@dataclass
class Dataset:
    """A loaded, split, validated data source."""

    name: str
    source: str
    kind: str  # "folder", "npz" or "digits"
    class_names: list[str]  # [negative, positive]
    splits: dict[str, Split]
    split_origin: dict[str, str]  # split -> "given" or "stratified"
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(height, width, channels) of every image."""
        return tuple(self.splits["train"].images.shape[1:])  # type: ignore[return-value]

    @property
    def positive_class(self) -> str:
        return self.class_names[1]

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and class name."""
        return {
            name: {
                self.class_names[0]: int((split.labels == 0).sum()),
                self.class_names[1]: int((split.labels == 1).sum()),
            }
            for name, split in self.splits.items()
        }

    def fingerprint(self) -> str:
        """sha256 of every split's ids, labels and pixels: changes when the data does."""
        digest = hashlib.sha256()
        for name in SPLIT_NAMES:
            split = self.splits.get(name)
            if split is None:
                continue
            digest.update(name.encode())
            digest.update("\n".join(split.ids).encode("utf-8"))
            digest.update(np.ascontiguousarray(split.labels, dtype=np.int64).tobytes())
            digest.update(split.pixel_digest())
        return digest.hexdigest()

    def summary(self) -> dict[str, Any]:
        """Plain-data description stored in a run's ``data.json``."""
        return {
            "name": self.name,
            "source": self.source,
            "kind": self.kind,
            "class_names": self.class_names,
            "positive_class": self.positive_class,
            "image_shape": list(self.image_shape),
            "pixel_dtype": str(self.splits["train"].images.dtype),
            "streamed": self.splits["train"].streamed,
            "counts": self.counts(),
            "split_origin": self.split_origin,
            "fingerprint": self.fingerprint(),
            "skipped_images": self.skipped,
            "notes": self.notes,
        }

    def split_ids(self) -> dict[str, list[str]]:
        """Image ids per split, stored in a run's ``split.json``."""
        return {name: list(split.ids) for name, split in self.splits.items()}


# --------------------------------------------------------------------------- images


def _is_visible(name: str) -> bool:
    return not name.startswith(".") and not name.startswith("__MACOSX")


def is_image_file(path: Path) -> bool:
    """An image by extension, not hidden (``.DS_Store``, ``._x.png`` are skipped)."""
    return _is_visible(path.name) and path.suffix.lower() in IMAGE_EXTENSIONS


def iter_image_files(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, sorted; hidden files and folders skipped.

    Symlinked folders are not followed (so a symlink loop cannot hang the walk).
    """

    def fail(err: OSError) -> None:
        raise DataError(f"folder '{err.filename}' cannot be read: {err.strerror}")

    found = []
    for root, dirs, files in os.walk(folder, onerror=fail, followlinks=False):
        dirs[:] = sorted(d for d in dirs if _is_visible(d))
        for name in files:
            path = Path(root) / name
            if is_image_file(path) and path.is_file():
                found.append(path)
    return sorted(found)


# --------------------------------------------------------------------------- splitting


def _stratified(split: Split, fraction: float, seed: int, what: str) -> tuple[Split, Split]:
    """Split off ``fraction`` of ``split``, stratified by label, reproducibly with ``seed``."""
    from sklearn.model_selection import train_test_split

    counts = np.bincount(split.labels, minlength=2)
    n_held = int(round(fraction * len(split)))
    if counts.min() < 2 or n_held < 2 or len(split) - n_held < 2:
        raise DataError(
            f"too few images to make a {what} split ({counts[0]} and {counts[1]} per class); "
            "add images or provide the split explicitly"
        )
    index = np.arange(len(split))
    # Stratify on labels relative to the first image's, so choosing the other class as positive
    # (which flips every label) gives the same split.
    strata = split.labels ^ split.labels[0]
    keep, held = train_test_split(
        index, test_size=n_held, stratify=strata, random_state=seed, shuffle=True
    )
    return split.take(np.sort(keep)), split.take(np.sort(held))


def make_splits(
    given: dict[str, Split], config: DataConfig, seed: int, make_missing: bool = True
) -> tuple[dict[str, Split], dict[str, str]]:
    """Use the given splits; make missing val/test splits by stratified splitting of train.

    With ``config.groups`` or ``config.group_pattern`` the splits are made by group (one group
    never spans two splits, checked for the given splits too); with ``config.fold`` the splits
    are one cross-validation fold (:func:`fold_splits`).
    """
    origin = {name: "given" for name in given}
    if not make_missing:
        return dict(given), origin
    groups = image_groups(given, config)
    if groups is not None:
        check_groups_apart(given, groups, "given")
    if config.folds is not None:
        return fold_splits(given, config, seed, groups)
    train = given["train"]
    test = given.get("test")
    val = given.get("val")
    if test is None:
        share = (
            config.test_fraction
            if val is None
            else config.test_fraction / (1 - config.val_fraction)
        )
        train, test = _hold_out(train, share, seed, "test", groups)
        origin["test"] = "stratified" if groups is None else "grouped"
    if val is None:
        share = config.val_fraction / (1 - config.test_fraction)
        train, val = _hold_out(train, share, seed + 1, "validation", groups)
        origin["val"] = "stratified" if groups is None else "grouped"
    if origin["val"] != "given" or origin["test"] != "given":
        origin["train"] = "remainder"
    return {"train": train, "val": val, "test": test}, origin


# ------------------------------------------------------------ groups and cross-validation


def _group_name(image_id: str) -> str:
    """The file name of an image id (``train/ants/x.jpg`` -> ``x.jpg``; ``train:3`` as is)."""
    return image_id.rsplit("/", 1)[-1]


def _read_groups_file(path: Path) -> dict[str, str]:
    """``id -> group`` from a CSV of ``id,group`` rows (an ``id,group`` header is allowed)."""
    import csv

    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except FileNotFoundError:
        raise DataError(f"groups file '{path}' does not exist") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"groups file '{path}' cannot be read: {first_line(exc)}") from None
    if rows and [c.strip().lower() for c in rows[0]][1:2] == ["group"]:
        rows = rows[1:]  # header
    mapping: dict[str, str] = {}
    for line, row in enumerate(rows, start=1):
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise DataError(
                f"groups file '{path}': row {line} must be 'image id,group', got {row!r}"
            )
        key = row[0].strip().replace("\\", "/").removeprefix("./")
        if mapping.setdefault(key, row[1].strip()) != row[1].strip():
            raise DataError(f"groups file '{path}': image '{key}' is given two groups")
    if not mapping:
        raise DataError(f"groups file '{path}' holds no 'image id,group' rows")
    return mapping


def _listing(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def image_groups(splits: dict[str, Split], config: DataConfig) -> dict[str, str] | None:
    """Each image's group (``id -> group``), from ``config.groups`` or ``config.group_pattern``.

    Returns None when neither is set. Raises DataError when the groups file misses images or
    names unknown ones, or when the pattern does not match every file name.
    """
    ids = [i for split in splits.values() for i in split.ids]
    if config.groups is not None:
        path = Path(config.groups)
        mapping = _read_groups_file(path)
        missing = [i for i in ids if i not in mapping]
        if missing:
            raise DataError(
                f"groups file '{path}' misses {len(missing)} of {len(ids)} images "
                f"({_listing(missing)}); ids are as in split.json, e.g. '{ids[0]}'"
            )
        known = set(ids)
        unknown = [k for k in mapping if k not in known]
        if unknown:
            raise DataError(
                f"groups file '{path}' names {len(unknown)} image(s) not in the data "
                f"({_listing(unknown)}); ids are as in split.json, e.g. '{ids[0]}'"
            )
        return {i: mapping[i] for i in ids}
    if config.group_pattern is not None:
        import re

        pattern = re.compile(config.group_pattern)
        groups: dict[str, str] = {}
        unmatched = []
        for i in ids:
            match = pattern.search(_group_name(i))
            if match is None:
                unmatched.append(_group_name(i))
            else:
                groups[i] = match.group(1) if pattern.groups else match.group(0)
        if unmatched:
            matched = len(ids) - len(unmatched)
            what = "no" if not matched else f"only {matched} of {len(ids)}"
            raise DataError(
                f"group pattern '{config.group_pattern}' matches {what} file names: every "
                f"image needs a group (not matched: {_listing(unmatched)})"
            )
        return groups
    return None


def check_groups_apart(splits: dict[str, Split], groups: dict[str, str], what: str) -> None:
    """Refuse a group whose images lie in two splits (a leak from training into evaluation)."""
    seen: dict[str, str] = {}
    for name, split in splits.items():
        for image_id in split.ids:
            first = seen.setdefault(groups[image_id], name)
            if first != name:
                raise DataError(
                    f"group '{groups[image_id]}' has images in both the {first} and the {name} "
                    f"split ({what} splits), e.g. '{image_id}'; regroup, or give the data "
                    "without its own val/test folders so the splits are made by group"
                )


def _group_array(split: Split, groups: dict[str, str]) -> np.ndarray:
    return np.array([groups[i] for i in split.ids], dtype=object)


def _hold_out(
    split: Split, fraction: float, seed: int, what: str, groups: dict[str, str] | None
) -> tuple[Split, Split]:
    """Split off about ``fraction`` of ``split``: stratified, and by group when grouped.

    By group, the held-out part is one fold of ``round(1 / fraction)`` stratified group folds
    (of fewer when there are fewer groups: then one group, more than ``fraction``).
    """
    if groups is None:
        return _stratified(split, fraction, seed, what)
    from sklearn.model_selection import StratifiedGroupKFold

    group_of = _group_array(split, groups)
    n_groups = len(set(group_of))
    if n_groups < 2:
        raise DataError(
            f"too few groups ({n_groups}) to make a {what} split by group; "
            "add images or provide the split explicitly"
        )
    n_splits = min(max(2, int(round(1 / fraction))), n_groups)
    strata = split.labels ^ split.labels[0]
    folds = StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)
    keep, held = next(folds.split(np.zeros(len(split)), strata, group_of))
    if len(held) < 2 or len(keep) < 2:
        raise DataError(f"too few images to make a {what} split by group")
    return split.take(np.sort(keep)), split.take(np.sort(held))


def fold_splits(
    given: dict[str, Split], config: DataConfig, seed: int, groups: dict[str, str] | None
) -> tuple[dict[str, Split], dict[str, str]]:
    """One cross-validation fold: its test split is fold ``config.fold`` of train+val.

    The folds are stratified (and grouped when ``groups``), shuffled by ``seed``, the same for
    every fold. The source's own test split, if any, stays out of cross-validation entirely.
    The fold's validation split (early stopping, threshold) is held out of the other folds.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    k = int(config.folds)  # type: ignore[arg-type]
    if config.fold is None:
        raise DataError("data.folds needs data.fold (1..K) for one run; `l1cnn cv` runs them all")
    pool = concat_splits([given[n] for n in ("train", "val") if n in given])
    strata = pool.labels ^ pool.labels[0]
    if groups is None:
        smallest = int(np.bincount(pool.labels, minlength=2).min())
        unit = "images"
    else:
        group_of = _group_array(pool, groups)
        smallest = min(len(set(group_of[pool.labels == c])) for c in (0, 1))
        unit = "groups"
    if k > smallest:
        raise DataError(
            f"--folds {k} is more than the smaller class has {unit} ({smallest}) in train+val; "
            f"use --folds {smallest} or fewer"
        )
    if groups is None:
        folds = StratifiedKFold(k, shuffle=True, random_state=seed).split(pool.labels, strata)
    else:
        splitter = StratifiedGroupKFold(k, shuffle=True, random_state=seed)
        folds = splitter.split(np.zeros(len(pool)), strata, group_of)
    rest_index, held_index = list(folds)[config.fold - 1]
    rest, held = pool.take(np.sort(rest_index)), pool.take(np.sort(held_index))
    train, val = _hold_out(rest, config.val_fraction, seed + 1, "validation", groups)
    origin = {
        "train": f"folds other than {config.fold}/{k}",
        "val": f"held out of the other folds{' by group' if groups else ''}",
        "test": f"fold {config.fold} of {k}{' (grouped)' if groups else ''}",
    }
    if "test" in given:
        origin["test"] += f"; the source's own test split ({len(given['test'])} images) left out"
    return {"train": train, "val": val, "test": held}, origin


def _check_labels(labels: np.ndarray, where: str, need_both: bool) -> np.ndarray:
    if (
        labels.size
        and labels.dtype != bool
        and not (  # Nor complex labels
            np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)
        )
    ):
        raise DataError(f"{where}: labels must be numbers 0/1, got dtype {labels.dtype}")
    values = labels.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise DataError(f"{where}: labels contain NaN or Inf")
    bad = sorted(set(np.unique(values).tolist()) - {0.0, 1.0})
    if bad:
        raise DataError(f"{where}: labels must be 0 or 1, found {bad[:5]}")
    labels = values.astype(np.int64)
    if need_both and len(np.unique(labels)) < 2:
        raise DataError(
            f"{where}: only one class present ({labels[0] if labels.size else '-'}); "
            "a binary classifier needs both"
        )
    return labels


# --------------------------------------------------------------------------- sources


def _class_folders(folder: Path) -> list[Path]:
    try:
        entries = sorted(p for p in folder.iterdir() if p.is_dir() and _is_visible(p.name))
    except PermissionError:
        raise DataError(f"folder '{folder}' cannot be read: permission denied") from None
    if len(entries) != 2:
        names = ", ".join(p.name for p in entries) or "none"
        raise DataError(
            f"'{folder}' must hold exactly two class folders, found {len(entries)} ({names})"
        )
    return entries


def _resolve_class_names(names: list[str], config: DataConfig) -> tuple[list[str], bool]:
    """Order ``names`` as [negative, positive]; True when the source's order was flipped."""
    names = sorted(names)
    if config.positive_class is None:
        return names, False
    if config.positive_class not in names:
        raise DataError(
            f"positive class '{config.positive_class}' is not one of the classes {names}"
        )
    if config.positive_class == names[1]:
        return names, False
    return [names[1], names[0]], True


def _load_folder(root: Path, config: DataConfig, seed: int, make_missing: bool = True) -> Dataset:
    split_dirs = {n: root / n for n in SPLIT_NAMES if (root / n).is_dir()}
    has_splits = "train" in split_dirs
    layout = split_dirs if has_splits else {"train": root}
    per_split_files: dict[str, list[tuple[Path, str]]] = {}
    class_names: list[str] | None = None
    for split_name, split_dir in layout.items():
        classes = _class_folders(split_dir)
        names = [c.name for c in classes]
        if class_names is not None and names != class_names:
            raise DataError(f"'{split_dir}' has classes {names}, but train has {class_names}")
        class_names = names
        files = []
        for class_dir in classes:
            class_files = iter_image_files(class_dir)
            if not class_files:
                raise DataError(
                    f"class folder '{class_dir}' holds no images "
                    f"({', '.join(sorted(IMAGE_EXTENSIONS))})"
                )
            files += [(p, class_dir.name) for p in class_files]
        per_split_files[split_name] = files
    assert class_names is not None
    ordered, _ = _resolve_class_names(class_names, config)

    all_paths = [p for files in per_split_files.values() for p, _ in files]
    channels = config.channels
    if channels is None:
        gray_flags = []
        for p in all_paths:
            try:
                gray_flags.append(image_is_gray(p))
            except DataError:
                gray_flags.append(True)  # reported when decoding
        channels = 1 if all(gray_flags) else 3
    side = config.image_size or DEFAULT_FOLDER_IMAGE_SIZE
    size = (side, side)

    splits: dict[str, Split] = {}
    skipped: list[str] = []
    keep_bytes = int(config.keep_decoded_mb * 2**20)  # shared by the splits, in scan order
    for split_name, files in per_split_files.items():
        paths = [p for p, _ in files]
        images, good, bad = scan_images(
            paths, size, channels, config.skip_bad_images, config.cache, keep_bytes
        )
        if images.pixels is not None:
            keep_bytes -= images.pixels.nbytes
        skipped += bad
        labels = np.array([1 if files[i][1] == ordered[1] else 0 for i in good], dtype=np.int64)
        ids = [paths[i].relative_to(root).as_posix() for i in good]
        splits[split_name] = Split(images, labels, ids)
        _check_labels(
            labels,
            f"'{layout[split_name]}' after skipping bad images",
            need_both=split_name == "train",
        )
    notes = [f"skipped {len(skipped)} bad image(s)"] if skipped else []
    final, origin = make_splits(splits, config, seed, make_missing)
    return Dataset(root.name, str(root), "folder", ordered, final, origin, skipped, notes)


def _as_nhwc(images: np.ndarray, where: str) -> np.ndarray:
    if images.dtype == object or not (  # Complex numbers are not pixels either
        np.issubdtype(images.dtype, np.integer)
        or np.issubdtype(images.dtype, np.floating)
        or images.dtype == bool
    ):
        raise DataError(f"{where}: images must be numeric arrays, got dtype {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise DataError(f"{where}: images must have shape (N,H,W) or (N,H,W,C), got {images.shape}")
    if images.shape[0] == 0:
        raise DataError(f"{where}: no images (empty array)")
    if images.shape[-1] not in (1, 3):
        raise DataError(f"{where}: images must have 1 or 3 channels, got {images.shape[-1]}")
    if np.issubdtype(images.dtype, np.floating):
        if not np.all(np.isfinite(images)):
            raise DataError(f"{where}: images contain NaN or Inf")
        low, high = float(images.min()), float(images.max())
        if low < 0 or high > 255:
            raise DataError(
                f"{where}: float pixel values must lie in [0, 1] or [0, 255], found "
                f"[{low:.3g}, {high:.3g}]"
            )
        scale = 255.0 if high <= 1.0 else 1.0  # [0, 1] floats become 0..255 pixels
        return (images.astype(np.float32) * scale).astype(np.float32)
    if images.dtype == np.uint8:
        return images
    low, high = int(images.min()), int(images.max())
    if low < 0 or high > 255:
        raise DataError(f"{where}: integer pixel values must lie in 0..255, found {low}..{high}")
    return images.astype(np.uint8)


def _convert_arrays(images: np.ndarray, side: int | None, channels: int) -> np.ndarray:
    """Resize to ``side`` x ``side`` and convert channels, as images from folders are."""
    if images.shape[-1] != channels:
        if channels == 3:
            images = np.repeat(images, 3, axis=-1)
        else:  # ITU-R 601 luma, as Pillow's convert("L")
            luma = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
            images = luma[..., None].astype(
                images.dtype if images.dtype != np.uint8 else np.float32
            )
            if images.dtype != np.uint8:
                images = np.clip(np.round(images), 0, 255).astype(np.uint8)
    if side is not None and images.shape[1:3] != (side, side):
        import tensorflow as tf

        resized = tf.image.resize(images.astype(np.float32), (side, side), method="bilinear")
        images = np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8)
    return images


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        loaded = np.load(path, allow_pickle=False)
        # A plain .npy file named .npz loads as one array, not as named arrays.
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single .npy array, not named arrays (use np.savez)")
        with loaded as npz:
            return {key: npz[key] for key in npz.files}
    # zlib.error (corrupt compressed member), MemoryError (absurd declared shape) and
    # NotImplementedError (unsupported zip compression) came out of hostile files too.
    except (
        ValueError,
        OSError,
        zipfile.BadZipFile,
        EOFError,
        KeyError,
        zlib.error,
        MemoryError,
        NotImplementedError,
    ) as exc:
        reason = first_line(exc)
        if "allow_pickle" in reason or "Object arrays" in reason:
            reason = "it holds Python objects, which are not loaded for safety"
        raise DataError(f"'{path}' is not a readable .npz array file: {reason}") from None


def _load_npz(path: Path, config: DataConfig, seed: int, make_missing: bool = True) -> Dataset:
    arrays = _read_npz(path)
    given: dict[str, tuple[np.ndarray, np.ndarray, str]] = {}
    if "train_images" in arrays:
        for name in SPLIT_NAMES:
            key_x, key_y = f"{name}_images", f"{name}_labels"
            if key_x in arrays or key_y in arrays:
                if key_x not in arrays or key_y not in arrays:
                    raise DataError(
                        f"'{path}': has {key_x if key_x in arrays else key_y} but not its partner"
                    )
                given[name] = (arrays[key_x], arrays[key_y], name)
    elif "x" in arrays and "y" in arrays:
        given["train"] = (arrays["x"], arrays["y"], "x")
    else:
        raise DataError(
            f"'{path}' must hold train_images/train_labels (MedMNIST style) or x/y arrays; "
            f"found keys {sorted(arrays)}"
        )
    class_names = ["0", "1"]
    if "class_names" in arrays:
        raw = arrays["class_names"]
        if raw.shape != (2,) or raw.dtype.kind not in "US":
            raise DataError(f"'{path}': class_names must be an array of two strings")
        class_names = [str(v) for v in raw]
    ordered, flipped = _resolve_class_names(class_names, config)
    source_order_flip = sorted(class_names) != class_names  # label 1 is class_names[1]

    splits: dict[str, Split] = {}
    channels = config.channels
    nhwc = {}
    for name, (images, labels, prefix) in given.items():
        where = f"'{path}' [{name}]"
        images = _as_nhwc(images, where)
        if labels.size != images.shape[0]:
            raise DataError(
                f"{where}: {images.shape[0]} images but {labels.size} labels (shape "
                f"{labels.shape}); they must have the same length"
            )
        y = _check_labels(labels.reshape(-1), where, need_both=name == "train")
        if flipped != source_order_flip:
            y = 1 - y
        nhwc[name] = (images, y, prefix)
    if channels is None:
        channels = 1 if all(v[0].shape[-1] == 1 for v in nhwc.values()) else 3
    shapes = {v[0].shape[1:3] for v in nhwc.values()}
    if len(shapes) > 1 and config.image_size is None:
        raise DataError(
            f"'{path}': splits have different image sizes {sorted(shapes)}; "
            "set data.image_size to resize them"
        )
    for name, (images, y, prefix) in nhwc.items():
        images = _convert_arrays(images, config.image_size, channels)
        ids = [f"{prefix}:{i}" for i in range(len(y))]
        splits[name] = Split(images, y, ids)
    final, origin = make_splits(splits, config, seed, make_missing)
    return Dataset(path.stem, str(path), "npz", ordered, final, origin)


def _load_digits(config: DataConfig, seed: int, make_missing: bool = True) -> Dataset:
    """scikit-learn's 8x8 handwritten digits as even (0) vs odd (1)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = (bunch.target % 2).astype(np.int64)
    class_names = ["even", "odd"]
    ordered, flipped = _resolve_class_names(class_names, config)
    if flipped:
        labels = 1 - labels
    images = _convert_arrays(images, config.image_size, config.channels or 1)
    full = Split(images, labels, [f"digits:{i}" for i in range(len(labels))])
    final, origin = make_splits({"train": full}, config, seed, make_missing)
    notes = ["scikit-learn's 8x8 digits (1,797 images); task: even vs odd"]
    return Dataset(DIGITS, DIGITS, "digits", ordered, final, origin, notes=notes)


def load_data(
    source: str | Path, config: DataConfig, seed: int, make_missing_splits: bool = True
) -> Dataset:
    """Load, validate and split ``source``: ``"digits"``, a ``.npz`` file or a class folder.

    With ``make_missing_splits=False`` only the source's own splits are returned (a source
    without splits comes back as one "train" split), as ``evaluate --data`` needs.
    Raises DataError with a message naming the file and the problem.
    """
    if str(source) == DIGITS:
        return _load_digits(config, seed, make_missing_splits)
    path = Path(source)
    if not path.exists():
        raise DataError(f"data path '{path}' does not exist")
    if path.is_dir():
        return _load_folder(path, config, seed, make_missing_splits)
    if path.suffix.lower() == ".npz":
        return _load_npz(path, config, seed, make_missing_splits)
    raise DataError(f"'{path}' is neither a folder of class folders, a .npz file, nor '{DIGITS}'")


# --------------------------------------------------------------------------- inference inputs


def iter_predict_inputs(
    inputs: Iterable[str | Path],
) -> Iterator[tuple[str, Path | np.ndarray]]:
    """Expand files, folders (recursively) and ``.npz`` files into (id, path-or-pixels) items."""
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise DataError(f"input '{path}' does not exist")
        if path.is_dir():
            files = iter_image_files(path)
            if not files:
                raise DataError(f"folder '{path}' holds no images")
            for file in files:
                yield str(file), file
        elif path.suffix.lower() == ".npz":
            arrays = _read_npz(path)
            key = next((k for k in ("test_images", "x", "images") if k in arrays), None)
            if key is None:
                raise DataError(
                    f"'{path}' has no test_images, x or images array; found {sorted(arrays)}"
                )
            images = _as_nhwc(arrays[key], f"'{path}' [{key}]")
            for i in range(images.shape[0]):
                yield f"{path}:{key}:{i}", images[i]
        else:
            yield str(path), path


# --------------------------------------------------------------------------- tf.data


def class_weights(labels: np.ndarray, mode: str) -> dict[int, float] | None:
    """Inverse-frequency weights per class (``balanced``), as scikit-learn computes them."""
    if mode == "none":
        return None
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    return {c: float(len(labels) / (2 * counts[c])) for c in (0, 1)}


@contextlib.contextmanager
def image_read_errors(advice: str = "") -> Iterator[None]:
    """Turn a streamed image that failed to decode inside ``tf.data`` back into a DataError.

    A file can change or vanish after the scan; TensorFlow reports that as an op error whose
    text holds our DataError message, which is what the user needs to see (plus ``advice``).
    """
    import tensorflow as tf

    prefix = "an image failed to load while streaming: "
    try:
        yield
    except tf.errors.OpError as exc:
        marker = "DataError: "
        text = str(exc)
        if marker not in text:
            raise
        message = text[text.rindex(marker) + len(marker) :].strip().splitlines()[0]
        raise DataError(f"{prefix}{message}{advice}") from None
    except DataError as exc:  # from a nested block, which had no advice to give
        if not advice or not str(exc).startswith(prefix) or str(exc).endswith(advice):
            raise
        raise DataError(f"{exc}{advice}") from None


# Images per inference call (validation, scoring, predict, export parity): large enough that
# the per-call cost vanishes, small enough to bound memory on photo-size images.
PREDICT_CHUNK = 512


def make_tf_dataset(
    split: Split,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    weights: dict[int, float] | None = None,
) -> Any:
    """A batched, prefetched ``tf.data.Dataset`` of (pixels float32, label float32, weight).

    In-memory splits are sliced from their array. Streamed splits (class folders) shuffle only
    image indices and decode (or read from the pixel cache) one batch at a time in parallel, so
    memory does not grow with the data. Both give the same batches in the same order for the
    same seed: ``shuffle`` permutes positions the same way whatever the elements are.
    """
    import tensorflow as tf

    labels = split.labels.astype(np.float32)
    sample_w = (
        np.where(split.labels == 1, weights[1], weights[0]).astype(np.float32)
        if weights
        else np.ones_like(labels)
    )
    images = split.images
    if isinstance(images, FileImages) and images.pixels is not None:
        images = images.pixels  # kept from the scan: same batches, nothing decoded
    if not isinstance(images, FileImages):
        ds = tf.data.Dataset.from_tensor_slices((images, labels, sample_w)).cache()
    else:
        index = np.arange(len(split), dtype=np.int64)
        ds = tf.data.Dataset.from_tensor_slices((index, labels, sample_w))
    if shuffle:
        ds = ds.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if isinstance(images, FileImages):
        shape = [None, *images.shape[1:]]

        def read(i: Any, y: Any, w: Any) -> tuple[Any, Any, Any]:
            x = tf.numpy_function(images.read, [i], tf.uint8, stateful=False)
            return tf.ensure_shape(x, shape), y, w

        ds = ds.map(read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.map(lambda x, y, w: (tf.cast(x, tf.float32), y, w), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def epoch_shuffle_seed(seed: int, epoch: int) -> int:
    """The training data's shuffle seed in ``epoch``: a function of (seed, epoch) alone.

    So a resumed run sees the same batches in epoch k as an uninterrupted one.
    """
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
