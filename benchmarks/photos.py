"""Photo-size training (issue 17, goal 4): the whole `l1cnn train` on real colour photos at 64x64.

Three variants of the same command on ``../shared/data/hymenoptera`` (ants vs bees, JPEGs of
varied sizes, default 64x64x3), whole processes in alternation, ``--repeats`` times:
decoding every epoch (``--keep-decoded-mb 0``, the behaviour before), the default (pixels kept
from the first pass), and the default with ``--precision mixed_bfloat16``. Reported: training
images/s over epochs 2+ (from history.csv: training and validation of each epoch), the share of
the arithmetic ceiling (float32 matmul GFLOP/s measured in the same run over the FLOPs of one
training image), whole-command wall time, and test ROC-AUC.

    python benchmarks/photos.py [--repeats 3] [--epochs 5] [--out benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine, replace_section

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hymenoptera"
SEED = 42
VARIANTS = {
    "decode every epoch": ["--keep-decoded-mb", "0"],
    "pixels kept (default)": [],
    "kept + mixed_bfloat16": ["--precision", "mixed_bfloat16"],
}

MATMUL = """
import json, time, tensorflow as tf
out = {}
for dtype in (tf.float32, tf.bfloat16):
    a = tf.random.normal([2048, 2048], dtype=tf.float32)
    a = tf.cast(a, dtype)
    f = tf.function(lambda: tf.matmul(a, a))
    f().numpy()
    best = 1e9
    for _ in range(5):
        t = time.perf_counter(); f().numpy(); best = min(best, time.perf_counter() - t)
    out[dtype.name] = 2 * 2048**3 / best / 1e9
print(json.dumps(out))
"""


def train_flops_per_image(side: int = 64, channels: int = 3) -> float:
    """Multiply-adds x 2 of the specified network's forward pass, x 3 for a training step."""
    h = side - 2
    conv1 = 2 * h * h * 32 * 9 * channels
    h2 = h - 2
    conv2 = 2 * h2 * h2 * 64 * 9 * 32
    dense = 2 * (h2 // 2) ** 2 * 64 * 64 + 2 * 64
    return 3.0 * (conv1 + conv2 + dense)


def _run(variant: list[str], out: Path, epochs: int) -> dict:
    command = [
        sys.executable, "-m", "l1cnn.cli", "train", str(DATA), "--epochs", str(epochs),
        "--early-stopping", "false", "--set", "l1_lambda=0.001", "--seed", str(SEED),
        "--out", str(out), "--overwrite", "--quiet", *variant,
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    wall = time.perf_counter() - started
    with open(out / "history.csv", newline="") as f:
        seconds = [float(row["seconds"]) for row in csv.DictReader(f)]
    data = json.loads((out / "data.json").read_text())
    n_train = sum(data["counts"]["train"].values())
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "wall": wall,
        "ips": n_train * len(seconds[1:]) / sum(seconds[1:]),
        "roc_auc": metrics["test"]["roc_auc"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    args = parser.parse_args()
    if not DATA.exists():
        sys.exit(f"error: {DATA} is absent (the shared photo data)")
    gflops = json.loads(
        subprocess.run(
            [sys.executable, "-c", MATMUL], check=True, capture_output=True, text=True
        ).stdout
    )
    ceiling = gflops["float32"] * 1e9 / train_flops_per_image()
    results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="l1cnn-photos-") as tmp:
        for r in range(args.repeats):
            for name, variant in VARIANTS.items():
                results[name].append(
                    _run(variant, Path(tmp) / f"{r}-{len(results[name])}", args.epochs)
                )
    base = statistics.median(x["ips"] for x in results["decode every epoch"])
    lines = [
        f"## Photo-size training, {dt.date.today().isoformat()}",
        "",
        f"- machine: {machine()}; command: `python benchmarks/photos.py --repeats {args.repeats} "
        f"--epochs {args.epochs}`; data: `hymenoptera` (real JPEGs, 64x64x3 by default), "
        f"l1_lambda=0.001, seed {SEED}, {args.epochs} epochs, early stopping off; medians of "
        f"{args.repeats} whole processes per variant, in alternation.",
        f"- arithmetic ceiling: {train_flops_per_image() / 1e6:.0f} MFLOP per training image; "
        f"matmul {gflops['float32']:.0f} GFLOP/s float32 ({gflops['bfloat16']:.0f} bfloat16) "
        f"-> {ceiling:.0f} images/s at float32.",
        "",
        "| variant | training images/s (epochs 2+) | vs decode every epoch | share of float32 "
        "ceiling | whole command s | test ROC-AUC |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, runs in results.items():
        ips = statistics.median(x["ips"] for x in runs)
        wall = statistics.median(x["wall"] for x in runs)
        aucs = ", ".join(f"{x['roc_auc']:.3f}" for x in runs[:1])
        lines.append(
            f"| {name} | {ips:.0f} | {ips / base:.2f} | {ips / ceiling:.0%} | {wall:.1f} | {aucs} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    replace_section(args.out, "## Photo-size training", text)


if __name__ == "__main__":
    main()
