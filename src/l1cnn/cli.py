"""The ``l1cnn`` command: parses arguments, calls the library, prints results.

Only this module prints results or exits; every library error becomes one ``error: ...`` line
with exit status 2 (1 when training itself failed), never a traceback.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from l1cnn import __version__
from l1cnn.config import load_config, option_help
from l1cnn.errors import L1CNNError, RunError, TrainingError

EXIT_BAD_INPUT = 2
EXIT_TRAINING_FAILED = 1
EXIT_INTERRUPTED = 130
METRIC_NAMES = ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc", "loss")


def _quiet_tensorflow() -> None:
    """Keep TensorFlow's C++ start-up chatter out of the user's terminal (unless asked for)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per config key, defaulting to "not given" so the config file can set it."""
    parser.add_argument("--config", metavar="FILE", help="TOML config file (see configs/)")
    parser.add_argument(
        "--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
        help="override any config key, e.g. --set l1_lambda=0.001 (repeatable)",
    )
    for section, name, default, type_name in option_help():
        group = parser.add_argument_group(f"[{section}] config keys")
        shown = "auto" if default is None else (
            ",".join(map(str, default)) if isinstance(default, tuple) else default
        )
        kwargs: dict[str, Any] = {
            "dest": f"cfg__{section}__{name}",
            "default": argparse.SUPPRESS,
            "metavar": type_name.split(" ")[0].upper(),
            "help": f"default: {shown}",
        }
        if type_name == "bool":
            kwargs.update(nargs="?", const="true", metavar="true|false")
        group.add_argument(_flag(name), **kwargs)


def _config_from_args(args: argparse.Namespace) -> Any:
    overrides = list(args.overrides)
    types_ = {(s, n): t for s, n, _, t in option_help()}
    for key, value in vars(args).items():
        if not key.startswith("cfg__"):
            continue
        _, section, name = key.split("__")
        if types_[(section, name)].startswith("tuple") and not str(value).startswith("["):
            value = f"[{value}]"
        elif types_[(section, name)] in ("str", "str | None"):
            value = json.dumps(str(value))  # TOML basic string
        overrides.append(f"{section}.{name}={value}")
    return load_config(args.config, overrides)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="l1cnn",
        description="Train, evaluate and use a small L1-regularized CNN for two-class images.",
    )
    parser.add_argument("--version", action="version", version=f"l1cnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train", help="train on DATA and write a run folder",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Train the specified network on DATA: 'digits' (bundled), a .npz file "
            "(train_images/train_labels... or x/y), or a folder of two class folders "
            "(optionally inside train/ val/ test/).\n"
            "Config precedence: defaults < --config FILE < --set KEY=VALUE < --KEY VALUE."
        ),
    )
    p.add_argument("data", metavar="DATA", help="'digits', a .npz file, or a folder of class folders")
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/<data>-<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_config_options(p)

    p = sub.add_parser("evaluate", help="metrics of a saved run on its test split or other data")
    p.add_argument("run", metavar="RUN", help="run folder")
    p.add_argument("--data", metavar="DATA",
                   help="evaluate on this data instead (its test split if it has one, else all)")
    p.add_argument("--threshold", type=float, metavar="P",
                   help="decision threshold (default: the run's)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")

    p = sub.add_parser("predict", help="predict image files, folders or .npz arrays")
    p.add_argument("run", metavar="RUN", help="run folder")
    p.add_argument("inputs", metavar="IMAGE_OR_FOLDER", nargs="+",
                   help="image files, folders (recursive) or .npz files")
    p.add_argument("--output", metavar="CSV", help="write the CSV here (default: stdout)")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="skip unreadable images with a warning instead of failing")
    p.add_argument("--threshold", type=float, metavar="P",
                   help="decision threshold (default: the run's)")
    return parser


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _metrics_line(metrics: dict[str, Any]) -> str:
    return "  ".join(f"{name} {_fmt(metrics.get(name))}" for name in METRIC_NAMES)


def _counts_line(counts: dict[str, dict[str, int]]) -> str:
    return " | ".join(
        f"{split} {sum(c.values())} (" + ", ".join(f"{k} {v}" for k, v in c.items()) + ")"
        for split, c in counts.items()
    )


def cmd_train(args: argparse.Namespace) -> int:
    config = _config_from_args(args)
    from l1cnn.train import train

    result = train(args.data, config, out=args.out, overwrite=args.overwrite,
                   verbose=not args.quiet, command=["l1cnn", *sys.argv[1:]])
    data, metrics = result.data, result.metrics
    negative, positive = data["class_names"]
    how = "" if config.data.positive_class else ", the second in sorted order"
    stop = {
        "early_stopped": f"early stopping after epoch {result.epochs_run}",
        "completed": f"all {result.epochs_run} epochs",
        "interrupted": f"interrupted after {result.epochs_run} epochs",
    }[result.status]
    print()
    print(f"Run:      {result.run_dir}")
    print(f"Data:     {data['source']}  images {'x'.join(map(str, data['image_shape']))}  "
          f"classes {negative} (0) / {positive} (1, positive{how})")
    print(f"Splits:   {_counts_line(data['counts'])}")
    print(f"Training: {stop}; best epoch {result.best_epoch}; {result.wall_time_s:.1f} s; "
          f"seed {result.config.train.seed}")
    print(f"Test:     {_metrics_line(metrics['test'])}  (threshold {metrics['threshold']['value']:g})")
    diagnosis = metrics["diagnosis"]
    if diagnosis["collapsed"]:
        print(f"WARNING:  {'; '.join(diagnosis['reasons'])}.")
        print(f"          {diagnosis['advice']}")
    report = Path(result.run_dir) / "report.html"
    if report.exists():
        print(f"Report:   {report}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from l1cnn.predict import evaluate_run

    metrics = evaluate_run(args.run, data=args.data, threshold=args.threshold)
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    cm = metrics["confusion_matrix"]
    print(f"Evaluated {args.run} on {metrics['source']} ({metrics['evaluated_on']}, "
          f"{metrics['n']} images, {metrics['n_positive']} positive)")
    print(f"  {_metrics_line(metrics)}  (threshold {metrics['threshold']:g})")
    print(f"  confusion: tn {cm['tn']}  fp {cm['fp']}  fn {cm['fn']}  tp {cm['tp']}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from l1cnn.predict import predict
    from l1cnn.runs import atomic_write_text

    if args.output:
        out = Path(args.output)
        if not out.parent.exists() or not os.access(out.parent, os.W_OK):
            raise RunError(f"output '{out}' cannot be written (folder missing or read-only)")
    result = predict(args.run, args.inputs, skip_bad_images=args.skip_bad_images,
                     threshold=args.threshold)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "probability", "predicted_class"])
    for row in result.predictions:
        writer.writerow([row.id, f"{row.probability:.6f}", row.predicted_class])
    if result.skipped:
        print(f"warning: skipped {len(result.skipped)} bad image(s): "
              f"{'; '.join(result.skipped[:3])}", file=sys.stderr)
    if args.output:
        try:
            atomic_write_text(args.output, buf.getvalue())
        except OSError as exc:
            raise RunError(f"output '{args.output}' cannot be written: {exc.strerror}") from None
        print(f"Wrote {len(result.predictions)} predictions to {args.output} "
              f"(threshold {result.threshold:g})", file=sys.stderr)
    else:
        sys.stdout.write(buf.getvalue())
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``l1cnn`` console script."""
    _quiet_tensorflow()
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_TRAINING_FAILED
    except L1CNNError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())

