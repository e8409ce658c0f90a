"""Image files -> pixels: decoding with Pillow, and file-backed images decoded on demand.

``FileImages`` is what a class-folder split holds instead of a pixel array: the files, each
one's pixel digest, and optionally rows of an on-disk cache of decoded pixels. Training streams
it batch by batch, so memory does not grow with the number of images.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import warnings
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from l1cnn.errors import DataError

MAX_IMAGE_PIXELS = 40_000_000  # refuse larger declared sizes before decoding (decompression bombs)
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
SCAN_CHUNK = 1024  # images decoded per round of the scan: bounds its memory
CACHE_VERSION = 1


def decode_workers() -> int:
    """Threads for decoding (Pillow releases the GIL while decoding and resizing)."""
    return min(8, (os.cpu_count() or 2) * 2)


def _open_image(path: Path) -> Any:
    """Open an image header with Pillow, refusing huge declared sizes before decoding."""
    from PIL import Image

    try:
        img = Image.open(path)
    except FileNotFoundError:
        raise DataError(f"'{path}': file does not exist") from None
    except IsADirectoryError:
        raise DataError(f"'{path}': is a folder, not an image") from None
    except PermissionError:
        raise DataError(f"'{path}': permission denied") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"'{path}': not a readable image ({exc})") from None
    except Image.DecompressionBombError:
        raise DataError(f"'{path}': declared size exceeds the pixel limit") from None
    width, height = img.size
    if width * height > MAX_IMAGE_PIXELS:
        img.close()
        raise DataError(
            f"'{path}': declared size {width}x{height} exceeds the limit of "
            f"{MAX_IMAGE_PIXELS:,} pixels (possible decompression bomb)"
        )
    if width == 0 or height == 0:
        img.close()
        raise DataError(f"'{path}': image has zero size")
    return img


def image_is_gray(path: Path) -> bool:
    """Whether the image at ``path`` has a single (gray) channel, from its header alone."""
    with _open_image(path) as img:
        return img.mode in _GRAY_MODES


def load_image(path: str | Path, image_size: tuple[int, int], channels: int) -> np.ndarray:
    """Decode one image to uint8 (H, W, channels) at ``image_size`` = (height, width).

    Handles 16-bit, palette (with transparency), CMYK and animated images (first frame).
    Raises DataError naming the file when it cannot be decoded.
    """
    from PIL import Image

    path = Path(path)
    img = _open_image(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # palette-transparency notes etc.
            img.seek(0)
            img.load()
            if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
                arr = np.asarray(img, dtype=np.float64)
                top = 65535.0 if arr.max(initial=0) > 255 or img.mode.startswith("I;16") else 255.0
                img = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8))
            if img.mode in ("P", "PA", "LA", "RGBA") or "transparency" in img.info:
                rgba = img.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
                img = Image.alpha_composite(background, rgba)
            img = img.convert("L" if channels == 1 else "RGB")
            height, width = image_size
            if img.size != (width, height):
                img = img.resize((width, height), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise DataError(f"'{path}': truncated or corrupt image ({exc})") from None
    finally:
        img.close()
    return arr.reshape(image_size[0], image_size[1], channels)


def load_images(
    paths: list[Path], image_size: tuple[int, int], channels: int, skip_bad: bool
) -> tuple[np.ndarray, list[int], list[str]]:
    """Decode many images in parallel threads.

    Returns (images, indices of the paths that loaded, messages for those that did not). Without
    ``skip_bad`` any failure raises one DataError listing the bad files.
    """

    with ThreadPoolExecutor(max_workers=decode_workers()) as pool:
        results = list(pool.map(lambda p: _try_load(p, image_size, channels), paths))
    good = [i for i, r in enumerate(results) if not isinstance(r, str)]
    bad = [r for r in results if isinstance(r, str)]
    _raise_if_bad(bad, skip_bad)
    shape = (len(good), image_size[0], image_size[1], channels)
    images = np.stack([results[i] for i in good]) if good else np.zeros(shape, np.uint8)
    return images, good, bad


# --------------------------------------------------------------------------- file-backed images


class FileImages:
    """N image files seen as a uint8 array (N, H, W, C) that is decoded only where it is read.

    ``digests`` (N, 32) holds each image's sha256 of decoded pixels, taken once by
    :func:`scan_images`, so a data fingerprint needs no pixels. With ``cache_file`` the pixels
    are read from that raw file (row ``rows[i]`` for image i) instead of being decoded again.
    With ``pixels`` (N, H, W, C) the decoded images are held in memory (kept from the scan when
    they fit the memory budget) and nothing is decoded or read again.
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(
        self,
        paths: np.ndarray,
        digests: np.ndarray,
        image_size: tuple[int, int],
        channels: int,
        cache_file: str | None = None,
        rows: np.ndarray | None = None,
        pixels: np.ndarray | None = None,
    ) -> None:
        self.paths = np.asarray(paths, dtype=object)
        self.digests = np.asarray(digests, dtype=np.uint8).reshape(-1, 32)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.channels = int(channels)
        self.cache_file = cache_file
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.pixels = pixels
        self._fd: int | None = None
        self._lock = threading.Lock()

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), *self.image_size, self.channels)

    @property
    def image_bytes(self) -> int:
        return self.image_size[0] * self.image_size[1] * self.channels

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: np.ndarray) -> FileImages:
        """The images at ``index``, still undecoded."""
        index = np.asarray(index, dtype=np.int64)
        rows = None if self.rows is None else self.rows[index]
        return FileImages(
            self.paths[index],
            self.digests[index],
            self.image_size,
            self.channels,
            self.cache_file,
            rows,
            None if self.pixels is None else self.pixels[index],
        )

    @staticmethod
    def concat(parts: list[FileImages]) -> FileImages:
        """One FileImages of several (which must share size, channels and cache file)."""
        first = parts[0]
        cached = all(p.cache_file == first.cache_file and p.rows is not None for p in parts)
        kept = all(p.pixels is not None for p in parts)
        return FileImages(
            np.concatenate([p.paths for p in parts]),
            np.concatenate([p.digests for p in parts]),
            first.image_size,
            first.channels,
            first.cache_file if cached else None,
            np.concatenate([p.rows for p in parts]) if cached else None,  # type: ignore[misc]
            np.concatenate([p.pixels for p in parts]) if kept else None,  # type: ignore[misc]
        )

    def read(self, index: np.ndarray) -> np.ndarray:
        """Pixels (len(index), H, W, C) uint8 of the images at ``index``.

        Raises DataError when a file can no longer be decoded (changed since the scan).
        """
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        if self.pixels is not None:
            return self.pixels[index]
        out = np.empty((len(index), *self.image_size, self.channels), np.uint8)
        if self.cache_file is not None and self.rows is not None:
            fd = self._cache_fd()
            size = self.image_bytes
            for k, row in enumerate(self.rows[index]):
                chunk = os.pread(fd, size, int(row) * size)
                if len(chunk) != size:
                    raise DataError(f"pixel cache '{self.cache_file}' is truncated")
                out[k] = np.frombuffer(chunk, np.uint8).reshape(out.shape[1:])
            return out

        def one(k: int) -> None:
            out[k] = load_image(self.paths[index[k]], self.image_size, self.channels)

        if len(index) <= 64:
            for k in range(len(index)):
                one(k)
        else:
            with ThreadPoolExecutor(max_workers=decode_workers()) as pool:
                list(pool.map(one, range(len(index))))
        return out

    def _cache_fd(self) -> int:
        with self._lock:
            if self._fd is None:
                try:
                    self._fd = os.open(str(self.cache_file), os.O_RDONLY)
                except OSError as exc:
                    raise DataError(
                        f"pixel cache '{self.cache_file}' cannot be read: {exc.strerror}"
                    ) from None
            return self._fd

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)  # type: ignore[arg-type]

    def __getitem__(self, key: Any) -> np.ndarray:
        """NumPy-style reads: an int gives one image, a slice or index array gives a batch."""
        if isinstance(key, (int, np.integer)):
            return self.read(np.arange(len(self))[[key]])[0]
        return self.read(np.arange(len(self))[key])

    def __iter__(self) -> Iterator[np.ndarray]:
        for start in range(0, len(self), 256):
            yield from self.read(np.arange(start, min(start + 256, len(self))))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """Every image decoded into memory (for small data, tests and exports' parity checks)."""
        pixels = self.read(np.arange(len(self)))
        return pixels if dtype is None else pixels.astype(dtype)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_fd=None, _lock=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


# --------------------------------------------------------------------------- scan and cache


def _cache_key(paths: list[Path], image_size: tuple[int, int], channels: int) -> str:
    """Names the cache entry: the files (path, size, mtime) and how they are decoded."""
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, list(image_size), channels]).encode())
    for path in paths:
        try:
            stat = path.stat()  # abspath, not resolve(): no syscalls per path component
            digest.update(f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}\0missing\n".encode())
    return digest.hexdigest()[:32]


def _read_cache(
    folder: Path, key: str, paths: list[Path], image_size: tuple[int, int], channels: int
) -> tuple[FileImages, list[int], list[str]] | None:
    meta_file, pixel_file = folder / f"{key}.meta.npz", folder / f"{key}.pixels"
    if not meta_file.is_file() or not pixel_file.is_file():
        return None
    try:
        with np.load(meta_file, allow_pickle=False) as meta:
            good = meta["good"].astype(np.int64)
            digests = meta["digests"]
            bad = [str(b) for b in meta["bad"]]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None  # unreadable entry: rebuilt below
    row_bytes = image_size[0] * image_size[1] * channels
    if pixel_file.stat().st_size != len(good) * row_bytes or len(digests) != len(good):
        return None
    images = FileImages(
        np.array([str(paths[i]) for i in good], dtype=object),
        digests,
        image_size,
        channels,
        str(pixel_file),
        np.arange(len(good)),
    )
    return images, [int(i) for i in good], bad


def scan_images(
    paths: list[Path],
    image_size: tuple[int, int],
    channels: int,
    skip_bad: bool,
    cache_dir: str | Path | None = None,
    keep_bytes: int = 0,
) -> tuple[FileImages, list[int], list[str]]:
    """Decode every file once, keeping a digest per image (with a cache or a budget, the pixels).

    Memory stays bounded: images are decoded SCAN_CHUNK at a time in parallel threads. With
    ``cache_dir`` the decoded pixels go to a raw file there, named by the files' paths, sizes and
    mtimes; a later scan of unchanged files reads that entry and decodes nothing. When all the
    files' pixels fit in ``keep_bytes``, they are also kept in memory, so epochs read them
    instead of decoding every image again.

    Returns (images of the files that decoded, their indices in ``paths``, messages for the
    others). Without ``skip_bad`` any failure raises one DataError listing the bad files.
    """
    folder = key = None
    if cache_dir is not None:
        folder = Path(cache_dir)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"cache folder '{folder}' cannot be created: {exc.strerror}") from None
        key = _cache_key(paths, image_size, channels)
        hit = _read_cache(folder, key, paths, image_size, channels)
        if hit is not None:
            _raise_if_bad(hit[2], skip_bad)
            images = hit[0]
            if len(images) * images.image_bytes <= keep_bytes:
                images.pixels = np.asarray(images)  # one sequential read of the cache file
            return hit
    good: list[int] = []
    bad: list[str] = []
    digests = np.zeros((len(paths), 32), np.uint8)
    row_bytes = image_size[0] * image_size[1] * channels
    kept = (
        np.empty((len(paths), *image_size, channels), np.uint8)
        if 0 < len(paths) * row_bytes <= keep_bytes
        else None
    )
    out = _CacheWriter(folder) if folder is not None else None
    try:
        with ThreadPoolExecutor(max_workers=decode_workers()) as pool:
            for start in range(0, len(paths), SCAN_CHUNK):
                chunk = paths[start : start + SCAN_CHUNK]
                decoded = pool.map(lambda p: _try_load(p, image_size, channels), chunk)
                for offset, result in enumerate(decoded):
                    if isinstance(result, str):
                        bad.append(result)
                        continue
                    data = result.tobytes()
                    digests[len(good)] = np.frombuffer(hashlib.sha256(data).digest(), np.uint8)
                    if kept is not None:
                        kept[len(good)] = result
                    good.append(start + offset)
                    if out is not None:
                        out.write(data)
        _raise_if_bad(bad, skip_bad)
        digests = digests[: len(good)]
        cache_file = None
        if out is not None and folder is not None and key is not None:
            cache_file = out.finish(folder, key, np.array(good, np.int64), digests, bad)
            out = None
    finally:
        if out is not None:
            out.discard()
    rows = np.arange(len(good)) if cache_file else None
    images = FileImages(
        np.array([str(paths[i]) for i in good], dtype=object),
        digests,
        image_size,
        channels,
        cache_file,
        rows,
        None if kept is None else kept[: len(good)],
    )
    return images, good, bad


def _try_load(path: Path, image_size: tuple[int, int], channels: int) -> np.ndarray | str:
    try:
        return load_image(path, image_size, channels)
    except DataError as exc:
        return str(exc)


def _raise_if_bad(bad: list[str], skip_bad: bool) -> None:
    if bad and not skip_bad:
        shown = "; ".join(bad[:3]) + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise DataError(f"{len(bad)} bad image(s): {shown} (use --skip-bad-images to skip them)")


class _CacheWriter:
    """Appends decoded pixels to a temporary file in the cache folder; renamed when complete."""

    def __init__(self, folder: Path) -> None:
        try:
            fd, name = tempfile.mkstemp(dir=folder, suffix=".tmp")
        except OSError as exc:
            raise DataError(f"cache folder '{folder}' is not writable: {exc.strerror}") from None
        self.path = Path(name)
        self.file = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        try:
            self.file.write(data)
        except OSError as exc:
            message = f"writing the pixel cache '{self.path}' failed: {exc.strerror}"
            raise DataError(message) from None

    def finish(
        self, folder: Path, key: str, good: np.ndarray, digests: np.ndarray, bad: list[str]
    ) -> str:
        """Make the entry visible: pixels first, then the metadata that marks it complete."""
        pixel_file, meta_file = folder / f"{key}.pixels", folder / f"{key}.meta.npz"
        try:
            self.file.close()
            os.replace(self.path, pixel_file)
            fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                np.savez(f, good=good, digests=digests, bad=np.array(bad, dtype=str))
            os.replace(tmp, meta_file)
        except OSError as exc:
            message = f"writing the pixel cache in '{folder}' failed: {exc.strerror}"
            raise DataError(message) from None
        return str(pixel_file)

    def discard(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)
