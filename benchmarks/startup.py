"""What a user waits for before anything is trained (issue 17): start-up and one prediction.

Whole processes, the cases in alternation so that machine load spreads evenly, medians of N:
``l1cnn --help``, ``l1cnn train --help``, a bad option and an error found without a model
(goal < 0.5 s each: none imports TensorFlow), against the reference every command paid before,
``python -c "import tensorflow, keras"``; and one image predicted end to end from an ONNX export
folder (goal < 1.5 s, no TensorFlow) against the same image from the run folder (Keras). The
run is the specified model trained 2 epochs on the bundled digits, made in a temporary folder.

    .venv/bin/python benchmarks/startup.py [--repeats 10] [--out benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import machine, replace_section

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "l1cnn --help": (["--help"], 0),
    "l1cnn train --help": (["train", "--help"], 0),
    "l1cnn train digits --nope": (["train", "digits", "--nope"], 2),
    "l1cnn predict MISSING x.png": (["predict", "MISSING-RUN", "x.png"], 2),
}


def default_command() -> list[str]:
    """The console script next to this interpreter, else ``python -m l1cnn.cli``."""
    script = Path(sys.executable).parent / "l1cnn"
    if script.exists():
        return [str(script)]
    found = shutil.which("l1cnn")
    return [found] if found else [sys.executable, "-m", "l1cnn.cli"]


def _prepare(command: list[str], tmp: Path) -> dict[str, tuple[list[str], int]]:
    """Train a tiny run, export it to ONNX, write one image; the two prediction cases."""
    from PIL import Image

    run, export = tmp / "run", tmp / "run-onnx"
    steps = (
        ["train", "digits", "--epochs", "2", "--out", str(run), "--quiet"],
        ["export", str(run), "--format", "onnx", "--out", str(export)],
    )
    for argv in steps:
        subprocess.run([*command, *argv], check=True, capture_output=True, cwd=tmp)
    image = tmp / "one.png"
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(image)
    return {
        "l1cnn predict RUN one.png (Keras)": (["predict", str(run), str(image)], 0),
        "l1cnn predict ONNX_EXPORT one.png": (["predict", str(export), str(image)], 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="runs of each case (default 10)")
    parser.add_argument(
        "--command", nargs="+", help="how to start l1cnn (default: the console script)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    args = parser.parse_args()
    command = args.command or default_command()
    reference = "python -c 'import tensorflow, keras' (reference)"
    cases = {name: ([*command, *argv], code) for name, (argv, code) in CASES.items()}
    cases[reference] = ([sys.executable, "-c", "import tensorflow, keras"], 0)
    with tempfile.TemporaryDirectory(prefix="l1cnn-startup-") as tmp:
        for name, (argv, code) in _prepare(command, Path(tmp)).items():
            cases[name] = ([*command, *argv], code)
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.repeats):
            for name, (argv, expected) in cases.items():
                start = time.perf_counter()
                done = subprocess.run(argv, capture_output=True, cwd=tmp)
                times[name].append(time.perf_counter() - start)
                if done.returncode != expected:
                    sys.exit(f"{name}: exit {done.returncode}, not {expected}: {done.stderr!r}")
    med = {name: statistics.median(values) for name, values in times.items()}
    keras_predict = med["l1cnn predict RUN one.png (Keras)"]
    lines = [
        f"## Start-up and one prediction, {dt.date.today().isoformat()}",
        "",
        f"- machine: {machine()}; command: `python benchmarks/startup.py --repeats "
        f"{args.repeats}`; whole processes in alternation, medians; the run is the specified "
        "model trained 2 epochs on the bundled digits (seed 42), exported with "
        "`l1cnn export RUN --format onnx`.",
        "",
        "| case | median s | min s | max s | ratio to reference |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, values in times.items():
        ref = keras_predict if "ONNX" in name else med[reference]
        ratio = "" if name == reference or "(Keras)" in name else f"{med[name] / ref:.2f}"
        lines.append(
            f"| {name} | {med[name]:.3f} | {min(values):.3f} | {max(values):.3f} | {ratio} |"
        )
    lines += [
        "",
        "Goals: start-up cases < 0.5 s (reference: importing TensorFlow and Keras, what every "
        "command paid before); the ONNX prediction < 1.5 s (reference: the same prediction "
        "from the run folder with Keras).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    replace_section(args.out, "## Start-up and one prediction", text)


if __name__ == "__main__":
    main()
