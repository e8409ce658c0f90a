"""What a user waits for: the whole `l1cnn train` command against a plain-Keras script.

Both train the specified network on the X-rays for the same fixed number of epochs (early
stopping off, ``l1_lambda = 0.001`` so that both learn), evaluate the test split and save the
model; l1cnn also scores every split, diagnoses, explains (Grad-CAM) and writes its report and
records. Whole processes, alternated ``--repeats`` times; medians and their ratio. A third
process runs ``l1cnn.train`` through the API to show where the command's time goes
(``TrainResult.timings``: data, epochs, scoring, writing, explanation, report).

    python benchmarks/whole_command.py [--repeats 3] [--epochs 8] [--out benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
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
DATA = ROOT.parent / "shared" / "data" / "pneumoniamnist_balanced.npz"
L1_LAMBDA = 0.001
SEED = 42

API_PARTS = """
import json, sys, time
started = time.perf_counter()
from l1cnn import load_config, train
imported = time.perf_counter()
config = load_config(None, ["train.epochs={epochs}", "train.early_stopping=false",
                            "model.l1_lambda={l1}", "train.seed={seed}"])
result = train({data!r}, config, out={out!r}, overwrite=True)
parts = {{"import": imported - started, **result.timings}}
parts["total"] = time.perf_counter() - started
print(json.dumps(parts))
"""


def _timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    args = parser.parse_args()
    if not DATA.exists():
        sys.exit(f"error: {DATA} is absent (the shared X-ray data)")
    tmp = Path(tempfile.mkdtemp(prefix="l1cnn-whole-"))
    l1cnn = [
        sys.executable,
        "-m",
        "l1cnn.cli",
        "train",
        str(DATA),
        "--epochs",
        str(args.epochs),
        "--early-stopping",
        "false",
        "--set",
        f"l1_lambda={L1_LAMBDA}",
        "--seed",
        str(SEED),
        "--out",
        str(tmp / "run"),
        "--overwrite",
        "--quiet",
    ]
    keras_script = [
        sys.executable,
        str(ROOT / "benchmarks" / "keras_script.py"),
        str(DATA),
        "--epochs",
        str(args.epochs),
        "--l1-lambda",
        str(L1_LAMBDA),
        "--seed",
        str(SEED),
        "--out",
        str(tmp / "model.keras"),
    ]
    times: dict[str, list[float]] = {"l1cnn train": [], "plain Keras script": []}
    for _ in range(args.repeats):
        times["l1cnn train"].append(_timed(l1cnn))
        times["plain Keras script"].append(_timed(keras_script))
    code = API_PARTS.format(
        epochs=args.epochs, l1=L1_LAMBDA, seed=SEED, data=str(DATA), out=str(tmp / "api")
    )
    parts = json.loads(
        subprocess.run(
            [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT
        ).stdout
    )
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["l1cnn train"] / med["plain Keras script"]
    after = sum(parts[k] for k in ("scoring", "writing", "explanation", "report"))
    lines = [
        f"## Whole command, {dt.date.today().isoformat()}",
        "",
        f"- machine: {machine()}; command: `python benchmarks/whole_command.py --repeats "
        f"{args.repeats} --epochs {args.epochs}`; data: `{DATA.name}` (X-rays 28x28), "
        f"l1_lambda={L1_LAMBDA}, seed {SEED}, {args.epochs} epochs, early stopping off.",
        "",
        "| command | median wall s | runs (s) |",
        "| --- | --- | --- |",
        *[f"| {k} | {med[k]:.2f} | {', '.join(f'{t:.2f}' for t in v)} |" for k, v in times.items()],
        "",
        f"**Ratio l1cnn / plain Keras: {ratio:.2f}** (goal <= 0.7).",
        "",
        "Where one `l1cnn.train` call spends its time (one process, seconds): "
        + ", ".join(f"{k} {v:.2f}" for k, v in parts.items())
        + f"; after the last epoch: **{after:.2f} s** (goal <= 2 s).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    replace_section(args.out, "## Whole command", text)


if __name__ == "__main__":
    main()
