"""Start-up time of the ``l1cnn`` command (issue 17): whole processes, median of N runs.

Times ``l1cnn --help``, ``l1cnn train --help``, a bad option and ``l1cnn predict MISSING x.png``
(an error found without a model), the cases in alternation so that machine load spreads evenly.
The goal is < 0.5 s each: none of them imports TensorFlow.

    .venv/bin/python benchmarks/startup.py [--repeats 10] [--command .venv/bin/l1cnn]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10, help="runs of each case (default 10)")
    parser.add_argument(
        "--command", nargs="+", help="how to start l1cnn (default: the console script)"
    )
    args = parser.parse_args()
    command = args.command or default_command()
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for _ in range(args.repeats):
        for name, (argv, expected) in CASES.items():
            start = time.perf_counter()
            done = subprocess.run([*command, *argv], capture_output=True)
            times[name].append(time.perf_counter() - start)
            if done.returncode != expected:
                sys.exit(f"{name}: exit {done.returncode}, expected {expected}: {done.stderr!r}")
    print(f"Start-up of `{' '.join(command)}`, median of {args.repeats} processes each:")
    for name, values in times.items():
        print(
            f"  {name:30s} {statistics.median(values):6.3f} s  "
            f"(min {min(values):.3f}, max {max(values):.3f})"
        )


if __name__ == "__main__":
    main()
