"""``l1cnn cv DATA --folds K``: stratified (optionally grouped) K-fold cross-validation.

A command of its own rather than ``study --folds``: a study compares configurations over seeds
on one split, cross-validation estimates one configuration over K splits, and its outputs
(out-of-fold predictions, one interval per metric) differ. See :mod:`l1cnn.cv`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from l1cnn.cli_args import Subparsers, add_config_options, check_data, config_from_args


def add(sub: Subparsers) -> None:
    p = sub.add_parser(
        "cv",
        help="K-fold cross-validation (stratified, optionally grouped), each fold a run folder",
        description=(
            "Split train+val into K stratified folds (--folds, default 5; by group with "
            "--groups FILE.csv or --group-pattern REGEX, so one patient's images never span "
            "folds), train one run per fold (OUT/folds/fold-<i>, tested on its held-out fold; "
            "the data's own test split stays out), and write results.csv, "
            "oof_predictions.csv, the mean and 95% interval of every metric (cv.json, "
            "summary.md) and cv.html. Rerunning the same command skips finished folds."
        ),
    )
    p.add_argument(
        "data", metavar="DATA", help="'digits', a .npz file, or a folder of class folders"
    )
    p.add_argument("--out", metavar="DIR", help="cv folder (default: runs/cv-<data name>)")
    p.add_argument(
        "--jobs", type=int, default=1, metavar="N", help="folds trained at once (default: 1)"
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing; write the results from the finished folds",
    )
    add_config_options(p, "override a config key for every fold (repeatable)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    check_data(args.data)
    from l1cnn.cv import run_cv
    from l1cnn.study import format_eta

    out = Path(args.out) if args.out else Path("runs") / f"cv-{Path(args.data).stem}"

    def progress(p: dict[str, Any]) -> None:
        if p["trial"] is None:
            print(
                f"cv: {p['done']}/{p['total']} folds already finished; training "
                f"{p['total'] - p['done']} in {out}",
                file=sys.stderr,
                flush=True,
            )
            return
        print(
            f"cv: {p['done']}/{p['total']} folds done ({p['trial']}: {p['status']}, "
            f"{p['seconds']:.0f} s); about {format_eta(p['eta_s'])} left",
            file=sys.stderr,
            flush=True,
        )

    result = run_cv(
        args.data,
        config,
        out,
        jobs=args.jobs,
        on_progress=progress,
        train_missing=not args.report_only,
        command=args.command_line,
    )
    print(f"CV:       {out}  ({result.folds} folds)")
    print(
        f"Folds:    {len(result.rows)} of {result.folds} finished: {len(result.trained)} "
        f"trained now, {len(result.skipped)} kept from before"
        + (f"; failed: {', '.join(result.failed)}" if result.failed else "")
    )
    for column in ("test_roc_auc", "test_accuracy", "test_f1"):
        s = result.summaries.get(column)
        if s is None or s.n == 0:
            continue
        ci = f"  95% CI [{s.ci_low:.4f}, {s.ci_high:.4f}]" if s.n > 1 else ""
        print(f"{column[5:]:<9} {s.mean:.4f} ± {s.sd if s.n > 1 else 0:.4f} (sd){ci}")
    if result.rows:
        print(f"Results:  {out / 'results.csv'}  and  {out / 'oof_predictions.csv'}")
    print(f"Summary:  {out / 'summary.md'}  and  {out / 'cv.html'}")
    return 0
