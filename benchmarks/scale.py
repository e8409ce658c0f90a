"""Memory and speed of training on class folders as they grow: 10k, 50k and 200k PNGs.

For each size, writes a synthetic folder of small grayscale PNGs (two classes, learnable) to a
temporary directory, then trains the specified network for ``--epochs`` epochs through
l1cnn's public ``train()`` in a fresh process, and reports the scan (decode-once) time,
training images/s, the whole run's wall time and its peak RSS. With ``--cache`` each size also
runs twice with ``data.cache`` set: the first run fills the pixel cache, the second reuses it.

    python benchmarks/scale.py [--sizes 10000 50000 200000] [--epochs 2] [--cache]

Writes a "## Scale, DATE" section of benchmarks/RESULTS.md (other sections are kept).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import machine, replace_section

ROOT = Path(__file__).resolve().parents[1]
SIDE = 28
RSS_BUDGET_MB = 300


def write_folder(root: Path, n: int, seed: int = 0) -> None:
    """``n`` 28x28 gray PNGs in root/normal and root/abnormal; abnormal ones have a bright blob."""
    import numpy as np
    from PIL import Image

    for name in ("normal", "abnormal"):
        (root / name).mkdir(parents=True, exist_ok=True)

    def write(start: int) -> None:
        rng = np.random.default_rng([seed, start])
        for i in range(start, min(start + 1000, n)):
            img = rng.integers(0, 90, size=(SIDE, SIDE), dtype=np.uint8)
            label = i % 2
            if label:
                y, x = rng.integers(4, SIDE - 10, size=2)
                img[y : y + 6, x : x + 6] += 120
            folder = "abnormal" if label else "normal"
            Image.fromarray(img).save(root / folder / f"{i:07d}.png")

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(write, range(0, n, 1000)))


def run_child(folder: Path, epochs: int, cache: str | None) -> dict:
    """One training run in this process (called in a fresh child); prints its figures."""
    from l1cnn import load_config, load_data, train

    # keep_decoded_mb=0: this benchmark measures streaming (memory must not grow with the data)
    overrides = [f"epochs={epochs}", "early_stopping=false", f"image_size={SIDE}", "seed=42"]
    overrides.append("keep_decoded_mb=0")
    if cache:
        overrides.append(f"cache={cache}")
    config = load_config(None, overrides)
    start = time.perf_counter()
    load_data(folder, config.data, config.train.seed)  # the scan alone, timed
    scan_s = time.perf_counter() - start
    out = Path(tempfile.mkdtemp(prefix="l1cnn-scale-run-"))
    start = time.perf_counter()
    result = train(folder, config, out=out / "run")
    wall = time.perf_counter() - start
    n_train = sum(result.data["counts"]["train"].values())
    seconds = [h["seconds"] for h in result.history]
    shutil.rmtree(out, ignore_errors=True)
    return {
        "n_train": n_train,
        "scan_s": scan_s,
        "epoch_s": seconds,
        "train_images_per_s": n_train / min(seconds),
        "train_wall_s": wall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _child(folder: Path, epochs: int, cache: Path | None) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT / "src")}
    args = [sys.executable, __file__, "--child", str(folder), "--epochs", str(epochs)]
    if cache is not None:
        args += ["--cache-dir", str(cache)]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"run on {folder} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--cache", action="store_true", help="also run with a pixel cache")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child, args.epochs, args.cache_dir)))
        return

    import keras
    import tensorflow as tf

    rows = []
    work = Path(tempfile.mkdtemp(prefix="l1cnn-scale-"))
    try:
        for n in args.sizes:
            folder = work / f"png-{n}"
            start = time.perf_counter()
            write_folder(folder, n)
            print(f"{n:,} PNGs written in {time.perf_counter() - start:.0f} s", flush=True)
            variants = [("decode every epoch", None)]
            if args.cache:
                cache_dir = work / "cache"
                variants += [("cache, first run", cache_dir), ("cache, reused", cache_dir)]
            for label, cache in variants:
                result = _child(folder, args.epochs, cache)
                rows.append((n, label, result))
                print(f"{n:,} {label}: {result}", flush=True)
            shutil.rmtree(folder)
            shutil.rmtree(work / "cache", ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    base = next(r for n, label, r in rows if n == args.sizes[0] and label == "decode every epoch")
    lines = [
        "| images | variant | scan s | train images/s | epoch s | run wall s | peak RSS MB "
        "| RSS vs smallest |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for n, label, r in rows:
        epochs = ", ".join(f"{s:.1f}" for s in r["epoch_s"])
        lines.append(
            f"| {n:,} | {label} | {r['scan_s']:.1f} | {r['train_images_per_s']:.0f} | {epochs} "
            f"| {r['train_wall_s']:.1f} | {r['peak_rss_mb']:.0f} "
            f"| {r['peak_rss_mb'] - base['peak_rss_mb']:+.0f} |"
        )
    growth = max(r["peak_rss_mb"] for *_, r in rows) - base["peak_rss_mb"]
    verdict = "within" if growth <= RSS_BUDGET_MB else "OVER"
    command = f"python benchmarks/scale.py --sizes {' '.join(map(str, args.sizes))} --epochs " + (
        f"{args.epochs}" + (" --cache" if args.cache else "")
    )
    text = (
        f"## Scale, {dt.date.today().isoformat()}\n\n"
        f"- machine: {machine()}; Python {platform.python_version()}, TensorFlow "
        f"{tf.__version__}, Keras {keras.__version__}\n"
        f"- command: `{command}`; data: synthetic {SIDE}x{SIDE} gray PNGs in two class "
        f"folders (written to a temporary directory), the specified network, seed 42, "
        f"`image_size={SIDE}`, {args.epochs} epoch(s) without early stopping; each run in its "
        "own process. `scan s`: listing, decoding every image once (digests for the data "
        "fingerprint; pixels to the cache when set); `run wall s`: the whole `train()` "
        "(scan, epochs, scoring every split, report).\n\n"
        + "\n".join(lines)
        + f"\n\n- peak RSS grows by at most {growth:.0f} MB over the smallest folder: "
        f"{verdict} the {RSS_BUDGET_MB} MB budget.\n"
    )
    print("\n" + text)
    replace_section(args.out, "## Scale,", text)


if __name__ == "__main__":
    main()
