"""``make demo``: the specified model, the same model with a working ``l1_lambda``, one
comparison page and a three-line account of what happened and why.

The specified ``l1_lambda = 0.01`` makes the network collapse to a constant prediction on the
bundled digits (as on the real X-rays); showing that first is the honest point, and the second
run shows that the same network learns once the penalty no longer outweighs the data.
Run as ``python -m l1cnn.demo [--out DIR]``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from l1cnn.config import Config, load_config, replace

WORKING_L1 = 0.001  # a tenth of the specified value: learns on digits and X-rays alike
COMPARE_FILE = "compare.html"
SUMMARY_FILE = "summary.txt"


@dataclass
class DemoResult:
    """The two runs, the comparison page and the summary lines (also in ``summary.txt``)."""

    specified: Path
    working: Path
    compare: Path
    summary: list[str]


def _sparsity(run_dir: Path) -> float:
    """Share of all regularized kernel weights with |w| < 1e-3 in the run's model."""
    from l1cnn import runs
    from l1cnn.model import kernel_sparsity

    counts = kernel_sparsity(runs.load_model_file(run_dir / runs.MODEL_FILE))
    return sum(c.near_zero for c in counts) / sum(c.weights for c in counts)


def _describe(metrics: dict[str, Any], l1_lambda: float, small: float) -> str:
    test, diagnosis = metrics["test"], metrics["diagnosis"]
    verdict = "collapsed" if diagnosis["collapsed"] else "learned"
    return (
        f"l1_lambda={l1_lambda:g}: {verdict}, test accuracy {test['accuracy']:.3f}, "
        f"ROC-AUC {test['roc_auc']:.3f}; {small:.0%} of kernel weights below 1e-3"
    )


def summary_lines(
    specified: dict[str, Any], working: dict[str, Any], lambdas: tuple[float, float], small: tuple
) -> list[str]:
    """Three lines: each run's outcome, then why (from the runs' own metrics)."""
    first = _describe(specified, lambdas[0], small[0])
    second = _describe(working, lambdas[1], small[1])
    if specified["diagnosis"]["collapsed"] and not working["diagnosis"]["collapsed"]:
        why = (
            f"Why: at {lambdas[0]:g} the L1 pull on every weight outweighs what the data can pay "
            "back, so the weights go to ~0 and the output is one constant (test loss "
            f"{specified['test']['loss']:.3f}, ln 2 = 0.693: a coin); at {lambdas[1]:g} L1 only "
            "prunes."
        )
    else:
        why = (
            "Why: the two runs differ only in l1_lambda; see the comparison page for the "
            "learning curves and weights."
        )
    return [f"Specified  {first}.", f"Changed    {second}.", why]


def run_demo(out: str | Path, config: Config | None = None, verbose: bool = False) -> DemoResult:
    """Train the specified model and the working one on the digits, compare, summarize.

    Args:
        out: the demo folder (``specified/``, ``l1-<value>/``, ``compare.html``,
            ``summary.txt``); runs in it are replaced.
        config: the specified model (default: the defaults, which are the specified model).
        verbose: progress bars while training.

    Returns:
        A DemoResult.
    """
    from l1cnn import runs
    from l1cnn.reporting import write_comparison
    from l1cnn.train import train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = config or Config()
    working_config = replace(base, model={"l1_lambda": WORKING_L1})
    lambdas = (base.model.l1_lambda, WORKING_L1)
    results = []
    for name, cfg in (("specified", base), (f"l1-{WORKING_L1:g}", working_config)):
        print(f"Training {name} (l1_lambda={cfg.model.l1_lambda:g}) on the bundled digits ...")
        result = train("digits", cfg, out=out / name, overwrite=True, verbose=verbose)
        print(f"  {result.run_dir}: {result.epochs_run} epochs, {result.wall_time_s:.1f} s")
        results.append(result)
    page = write_comparison([r.run_dir for r in results], out / COMPARE_FILE)
    small = (_sparsity(results[0].run_dir), _sparsity(results[1].run_dir))
    lines = summary_lines(results[0].metrics, results[1].metrics, lambdas, small)
    runs.atomic_write_text(out / SUMMARY_FILE, "\n".join(lines) + "\n")
    return DemoResult(results[0].run_dir, results[1].run_dir, page, lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m l1cnn.demo``: run the demo and print the summary."""
    from l1cnn.errors import L1CNNError

    parser = argparse.ArgumentParser(prog="python -m l1cnn.demo", description=__doc__)
    parser.add_argument("--out", default="runs/demo", help="demo folder (default: runs/demo)")
    parser.add_argument("--config", metavar="FILE", help="the specified model's TOML file")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        result = run_demo(args.out, load_config(args.config), verbose=not args.quiet)
    except L1CNNError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print()
    print("\n".join(result.summary))
    print(f"Compare:  {result.compare}")
    print(f"Watch:    tensorboard --logdir {Path(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
