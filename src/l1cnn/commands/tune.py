"""``l1cnn tune DATA``: search hyperparameters with Optuna, trials shared through a storage."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from l1cnn.cli_args import Subparsers, add_config_options, check_data, config_from_args, fmt
from l1cnn.errors import ConfigError


def add(sub: Subparsers) -> None:
    p = sub.add_parser(
        "tune",
        help="search hyperparameters (Optuna, pruning, sparsity as a second objective)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Search l1_lambda, dropout_rate, learning_rate and batch_size (or the space of "
            "--space) on DATA's validation split. Every trial is a run folder in DIR/trials; "
            "the specified configuration is trial 0. Rerun the same command to continue the "
            "search; run it on several machines with one --storage URL to share it.\n"
            "The train options (--config, --set, --KEY) give the fixed base configuration."
        ),
    )
    p.add_argument("data", metavar="DATA", help="'digits', a .npz file, or a folder")
    p.add_argument(
        "--trials",
        type=int,
        default=20,
        metavar="N",
        help="trials in the whole search (all workers together; raise it to search further; "
        "default 20)",
    )
    p.add_argument(
        "--timeout", type=float, metavar="S", help="stop starting trials after S seconds"
    )
    p.add_argument(
        "--space",
        metavar="FILE",
        help="TOML search space: [key] tables of low/high/log/zero "
        "or choices (default: see README)",
    )
    p.add_argument(
        "--objective",
        default="val_roc_auc",
        metavar="NAMES",
        help="val_roc_auc (default), val_loss, or val_roc_auc,sparsity for the Pareto front",
    )
    p.add_argument(
        "--within",
        type=float,
        default=0.01,
        metavar="X",
        help="two objectives: choose the sparsest model within X of the best (default 0.01)",
    )
    p.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna storage: an SQLAlchemy URL such as postgresql://user@host/db "
        "(default: sqlite:///DIR/tune.db)",
    )
    p.add_argument("--name", default="tune", help="study name in the storage (default: tune)")
    p.add_argument(
        "--jobs", type=int, default=1, metavar="N", help="worker processes on this machine"
    )
    p.add_argument(
        "--heartbeat",
        type=float,
        default=20,
        metavar="S",
        help="seconds between a trial's heartbeats; a trial silent for 3 beats (its worker "
        "died) is failed and retried once (default 20)",
    )
    p.add_argument("--out", metavar="DIR", help="output folder (default: runs/tune-<name>)")
    p.add_argument("--quiet", action="store_true", help="no line per trial")
    add_config_options(p, "override a key of the base configuration (repeatable)")
    p.set_defaults(handler=run)


def print_trial(info: dict[str, Any]) -> None:
    """One line per finished trial (module level: worker processes call it too)."""
    values = "  ".join(f"{k} {fmt(v)}" for k, v in info["values"].items())
    print(
        f"trial {info['number']}: {info['status']}  {values}  ({info['seconds']:.0f} s)",
        flush=True,
    )


def run(args: argparse.Namespace) -> int:
    if args.heartbeat <= 0:
        raise ConfigError(f"--heartbeat must be > 0, got {args.heartbeat:g}")
    if args.timeout is not None and args.timeout <= 0:
        raise ConfigError(f"--timeout must be > 0, got {args.timeout:g}")
    base = config_from_args(args)
    check_data(args.data)
    from l1cnn.tune_space import load_space, parse_objectives

    objectives = parse_objectives(args.objective)
    space = load_space(args.space, base, objectives)
    if args.within < 0:
        raise ConfigError(f"--within must be >= 0, got {args.within:g}")
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {args.jobs}")
    if args.trials < 0:
        raise ConfigError(f"--trials must be >= 0, got {args.trials}")
    from l1cnn.tune import STORAGE_DB, TuneSettings, redact, tune

    out = Path(args.out) if args.out else Path("runs") / f"tune-{args.name}"
    storage = args.storage or f"sqlite:///{(out / STORAGE_DB).resolve()}"
    settings = TuneSettings(
        source=args.data,
        base=base,
        out=out,
        storage=storage,
        name=args.name,
        objectives=objectives,
        space=space,
        trials=args.trials,
        timeout=args.timeout,
        heartbeat=args.heartbeat,
        command=args.command_line,
    )
    print(f"Search:   study '{args.name}' in {redact(storage)}, {args.trials} trials in all")
    result = tune(
        settings, jobs=args.jobs, within=args.within, on_trial=None if args.quiet else print_trial
    )
    counts = ", ".join(f"{v} {k}" for k, v in sorted(result.counts.items())) or "none"
    print()
    print(f"Trials:   {counts}")
    for label, row in (("Specified", result.specified), ("Chosen", result.chosen)):
        if row is None:
            continue
        values = "  ".join(f"{o} {fmt(row.get(o))}" for o in objectives)
        print(f"{label + ':':<11}trial {row['number']} ({row['state']})  {values}  (validation)")
    if result.chosen is not None:
        test = result.chosen.get("test") or {}
        print(f"Test:     {'  '.join(f'{k} {fmt(v)}' for k, v in test.items())}  (chosen only)")
        print(
            f"Best:     {result.files['best']}  (l1cnn train DATA --config {result.files['best']})"
        )
    print(f"Results:  {result.files['trials']}")
    print(f"Page:     {result.files['page']}")
    return 0
