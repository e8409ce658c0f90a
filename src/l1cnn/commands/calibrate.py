"""``l1cnn calibrate RUN``: fit a temperature on a finished run's validation predictions.

No retraining (``l1cnn.recalibrate``): the run's ``calibration.json`` then holds T, and
predict, evaluate, serve and export give the calibrated probability.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from l1cnn.cli_args import Subparsers, add_run_argument
from l1cnn.runs import check_is_run


def add(sub: Subparsers) -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit a temperature on a run's validation predictions and keep it",
        description=(
            "Temperature scaling of a finished run: one scalar T fitted on the run's stored "
            "validation predictions (minimum log loss), kept in calibration.json; the "
            "threshold rule is applied again on the calibrated probabilities, and metrics, "
            "predictions and the report are rewritten. model.keras is not touched; calibrating "
            "again refits from the model's own probabilities."
        ),
    )
    add_run_argument(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    check_is_run(args.run)
    from l1cnn.recalibrate import calibrate_run

    record = calibrate_run(args.run, ["l1cnn", "calibrate", args.run])
    before, after = record["before"], record["after"]
    print(f"Calibrated {args.run}: temperature {record['temperature']:.4f} (fitted on val)")
    for split in ("val", "test"):
        b, a = before[split], after[split]
        print(
            f"  {split:<4}  ECE {b['ece']:.4f} -> {a['ece']:.4f}  "
            f"Brier {b['brier']:.4f} -> {a['brier']:.4f}  "
            f"log loss {b['log_loss']:.4f} -> {a['log_loss']:.4f}"
        )
    print(f"Report:   {Path(args.run) / 'report.html'}")
    return 0
