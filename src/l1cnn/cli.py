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
from l1cnn.config import KEY_HELP, load_config, option_help
from l1cnn.errors import ConfigError, L1CNNError, RunError, TrainingError

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


# Keys whose unset value is not "decided automatically", and keys whose value is a path.
NONE_MEANS = {"cache": "none, decode every epoch"}
METAVARS = {"cache": "DIR"}


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per config key, defaulting to "not given" so the config file can set it."""
    parser.add_argument("--config", metavar="FILE", help="TOML config file (see configs/)")
    parser.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        dest="overrides",
        help="override any config key, e.g. --set l1_lambda=0.001 (repeatable)",
    )
    groups = {}
    for section, name, default, type_name in option_help():
        if section not in groups:
            groups[section] = parser.add_argument_group(f"[{section}] config keys")
        shown = (
            NONE_MEANS.get(name, "auto")
            if default is None
            else (",".join(map(str, default)) if isinstance(default, tuple) else default)
        )
        metavar = "N,N,..." if type_name.startswith("tuple") else type_name.split(" ")[0].upper()
        metavar = METAVARS.get(name, metavar)
        kwargs: dict[str, Any] = {
            "dest": f"cfg__{section}__{name}",
            "default": argparse.SUPPRESS,
            "metavar": metavar,
            "help": f"{KEY_HELP.get(name, '')} (default: {shown})".strip(),
        }
        if type_name == "bool":
            kwargs.update(nargs="?", const="true", metavar="true|false")
        groups[section].add_argument(_flag(name), **kwargs)


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
        "train",
        help="train on DATA and write a run folder",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Train the specified network on DATA: 'digits' (bundled), a .npz file "
            "(train_images/train_labels... or x/y), or a folder of two class folders "
            "(optionally inside train/ val/ test/).\n"
            "Config precedence: defaults < --config FILE < --set KEY=VALUE < --KEY VALUE."
        ),
    )
    p.add_argument(
        "data",
        metavar="DATA",
        nargs="?",
        help="'digits', a .npz file, or a folder of class folders",
    )
    # Resume a killed or interrupted run.
    p.add_argument(
        "--resume",
        metavar="RUN",
        help="continue the unfinished run RUN from its last finished epoch, with its "
        "own data and config (a finished run is left as it is)",
    )
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/<data>-<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_config_options(p)

    p = sub.add_parser("evaluate", help="metrics of a saved run on its test split or other data")
    p.add_argument("run", metavar="RUN", help="run folder")
    p.add_argument(
        "--data",
        metavar="DATA",
        help="evaluate on this data instead (its test split if it has one, else all)",
    )
    p.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="with --data: skip unreadable images with a warning instead of failing",
    )
    p.add_argument(
        "--threshold",
        metavar="RULE",
        help="a number, or f1, youden, recall=X, precision=X: re-chosen on the run's "
        "validation predictions (default: the run's threshold)",
    )
    p.add_argument(
        "--save",
        action="store_true",
        help="make the --threshold the run's own (metrics.json, report; predict uses it)",
    )
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")

    p = sub.add_parser("predict", help="predict image files, folders or .npz arrays")
    p.add_argument("run", metavar="RUN", help="run folder, or a folder written by l1cnn export")
    p.add_argument(
        "inputs",
        metavar="IMAGE_OR_FOLDER",
        nargs="+",
        help="image files, folders (recursive) or .npz files",
    )
    p.add_argument("--output", metavar="CSV", help="write the CSV here (default: stdout)")
    p.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="skip unreadable images with a warning instead of failing",
    )
    p.add_argument(
        "--threshold", type=float, metavar="P", help="decision threshold (default: the run's)"
    )

    # Export, prune, serve
    p = sub.add_parser("export", help="export a run (SavedModel, ONNX, LiteRT) and check parity")
    p.add_argument("run", metavar="RUN", help="run folder")
    p.add_argument(
        "--format",
        required=True,
        choices=["savedmodel", "onnx", "litert"],
        help="savedmodel (TF Serving), onnx (onnxruntime) or litert (TFLite)",
    )
    p.add_argument(
        "--quantize",
        choices=["float16", "int8"],
        help="LiteRT post-training quantization (int8 calibrates on training images)",
    )
    p.add_argument("--out", metavar="DIR", help="export folder (default: RUN/export-FORMAT)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export folder")

    p = sub.add_parser("prune", help="zero the smallest weights of a run and write a new run")
    p.add_argument("run", metavar="RUN", help="run folder")
    how = p.add_mutually_exclusive_group()
    how.add_argument(
        "--sparsity",
        type=float,
        metavar="F",
        help="fraction of each layer's kernel weights to zero, e.g. 0.9",
    )
    how.add_argument(
        "--threshold",
        type=float,
        metavar="T",
        help="zero every kernel weight with |w| < T, e.g. 1e-3",
    )
    p.add_argument(
        "--fine-tune-epochs",
        type=int,
        default=0,
        metavar="N",
        help="fine-tune N epochs with the zeros held fixed (default 0)",
    )
    p.add_argument("--out", metavar="DIR", help="new run folder (default: RUN-pruned-s0.9)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("serve", help="serve a run over HTTP: JSON API and a page to try images")
    p.add_argument("run", metavar="RUN", help="run folder")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument(
        "--max-request-bytes",
        type=int,
        default=8 * 1024 * 1024,
        metavar="N",
        help="largest request body accepted (default 8 MiB; larger: 413)",
    )
    p.add_argument(
        "--max-image-pixels",
        type=int,
        default=4096 * 4096,
        metavar="N",
        help="largest uploaded image, width*height (default 4096*4096; larger: 413)",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=64,
        metavar="N",
        help="most images per request (default 64; more: 413)",
    )

    # Study
    p = sub.add_parser(
        "study",
        help="train a grid of configurations over seeds and compare them",
        description=(
            "Train every configuration of a preset over several seeds (each trial an ordinary "
            "run folder in OUT/trials/) and write results.csv, summary.md, study.html and "
            "plots. Rerunning the same command skips finished trials. --set/--config apply to "
            "every trial."
        ),
    )
    p.add_argument(
        "data", metavar="DATA", help="'digits', a .npz file, or a folder of class folders"
    )
    p.add_argument(
        "--preset",
        default="ablation",
        metavar="NAME_OR_TOML",
        help="ablation, l1-sweep, dropout-sweep, all, or a TOML file of [[trial]] "
        "tables (default: ablation)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=5,
        metavar="N",
        help="seeds per configuration: train.seed, train.seed+1, ... (default: 5)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="trials trained at once, each in its own process (default: 1)",
    )
    p.add_argument(
        "--epochs-without-early-stopping",
        type=int,
        default=40,
        metavar="N",
        help="epochs of trials with early stopping off (default: 40)",
    )
    p.add_argument("--out", metavar="DIR", help="study folder (default: runs/study-<preset>)")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing; write the report from the finished trials",
    )
    p.add_argument("--config", metavar="FILE", help="TOML config file of the specified model")
    p.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        dest="overrides",
        help="override a config key for every trial (repeatable)",
    )

    # Report, compare
    p = sub.add_parser("report", help="(re)write a run's plots, report.html and report.md")
    p.add_argument("run", metavar="RUN", help="run folder")
    p.add_argument(
        "--explain",
        action="store_true",
        help="recompute explain.npz (weights, wrong images, saliency) from the model "
        "even if present",
    )
    p = sub.add_parser("compare", help="one HTML page comparing runs side by side")
    p.add_argument("runs", metavar="RUN", nargs="+", help="two or more run folders")
    p.add_argument(
        "--out",
        metavar="FILE",
        default="compare.html",
        help="HTML file to write (default: compare.html)",
    )
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


def _warn_skipped(skipped: list[str]) -> None:
    """One warning line with the count of bad images skipped."""
    if skipped:
        print(
            f"warning: skipped {len(skipped)} bad image(s): {'; '.join(skipped[:3])}"
            + (f"; and {len(skipped) - 3} more" if len(skipped) > 3 else ""),
            file=sys.stderr,
        )


def _resume(args: argparse.Namespace) -> Any:
    """``train --resume RUN``: the TrainResult, or None when RUN had finished."""
    from l1cnn.train import resume

    extra = [_flag(k.split("__")[2]) for k in vars(args) if k.startswith("cfg__")]
    extra += [
        name
        for name, given in (
            ("DATA", args.data),
            ("--config", args.config),
            ("--set", args.overrides),
            ("--out", args.out),
            ("--overwrite", args.overwrite),
        )
        if given
    ]
    if extra:
        raise ConfigError(
            f"--resume continues a run with its own data and config; drop {', '.join(extra)}"
        )
    result = resume(args.resume, verbose=not args.quiet, command=["l1cnn", *sys.argv[1:]])
    if result is None:
        from l1cnn.runs import RUN_FILE, read_json

        info = read_json(Path(args.resume) / RUN_FILE)
        print(
            f"Run {args.resume} has already finished (status {info.get('status')}, "
            f"{info.get('epochs_run')} epochs); nothing to resume."
        )
    return result


def cmd_train(args: argparse.Namespace) -> int:
    if args.resume is not None:
        result = _resume(args)
        if result is None:
            return 0
        config = result.config
    else:
        if args.data is None:
            raise ConfigError("train needs DATA ('digits', a .npz file or a folder), or --resume")
        config = _config_from_args(args)
        from l1cnn.train import train

        result = train(
            args.data,
            config,
            out=args.out,
            overwrite=args.overwrite,
            verbose=not args.quiet,
            command=["l1cnn", *sys.argv[1:]],
        )
    data, metrics = result.data, result.metrics
    _warn_skipped(data.get("skipped_images", []))
    negative, positive = data["class_names"]
    how = "" if config.data.positive_class else ", the second in sorted order"
    stop = {
        "early_stopped": f"early stopping after epoch {result.epochs_run}",
        "completed": f"all {result.epochs_run} epochs",
        "interrupted": f"interrupted after {result.epochs_run} epochs",
        "collapsed": f"stopped after epoch {result.epochs_run}: the model collapsed",
    }[result.status]
    print()
    print(f"Run:      {result.run_dir}")
    print(
        f"Data:     {data['source']}  images {'x'.join(map(str, data['image_shape']))}  "
        f"classes {negative} (0) / {positive} (1, positive{how})"
    )
    print(f"Splits:   {_counts_line(data['counts'])}")
    print(
        f"Training: {stop}; best epoch {result.best_epoch}; {result.wall_time_s:.1f} s; "
        f"seed {result.config.train.seed}"
    )
    print(
        f"Test:     {_metrics_line(metrics['test'])}  (threshold {metrics['threshold']['value']:g})"
    )
    diagnosis = metrics["diagnosis"]
    if diagnosis["collapsed"]:
        print(f"WARNING:  {'; '.join(diagnosis['reasons'])}.")
        print(f"          {diagnosis['advice']}")
    elif result.status == "collapsed":  # the best epoch's weights came back less collapsed
        print(f"WARNING:  {result.message}.")
    report = Path(result.run_dir) / "report.html"
    if report.exists():
        print(f"Report:   {report}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from l1cnn.config import parse_threshold_rule
    from l1cnn.predict import evaluate_run
    from l1cnn.rethreshold import rechoose_threshold, save_threshold

    choice = None
    if args.save and args.threshold is None:
        raise ConfigError("--save needs --threshold RULE (the threshold to make the run's own)")
    if args.threshold is not None:  # A rule, re-chosen on the run's validation split
        command = ["l1cnn", "evaluate", args.run, "--threshold", args.threshold, "--save"]
        choice = (
            save_threshold(args.run, args.threshold, command)["threshold"]
            if args.save
            else rechoose_threshold(args.run, args.threshold)
        )
    metrics = evaluate_run(
        args.run,
        data=args.data,
        threshold=None if choice is None else choice["value"],
        skip_bad_images=args.skip_bad_images,
    )
    _warn_skipped(metrics.get("skipped_images", []))
    if choice is not None:
        metrics["threshold_choice"] = choice
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    cm = metrics["confusion_matrix"]
    print(
        f"Evaluated {args.run} on {metrics['source']} ({metrics['evaluated_on']}, "
        f"{metrics['n']} images, {metrics['n_positive']} positive)"
    )
    print(f"  {_metrics_line(metrics)}  (threshold {metrics['threshold']:g})")
    print(f"  confusion: tn {cm['tn']}  fp {cm['fp']}  fn {cm['fn']}  tp {cm['tp']}")
    if choice is not None:
        fixed = parse_threshold_rule(choice["rule"])[0] == "fixed"
        print(
            f"  threshold {choice['value']:g}"
            + (
                " as given; "
                if fixed
                else f" from rule {choice['rule']} on the run's validation predictions; "
            )
            + (
                "saved as the run's threshold (predict uses it; report rewritten)"
                if args.save
                else "not saved (add --save to make it the run's)"
            )
        )
        if choice.get("note"):
            print(f"  note: {choice['note']}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from l1cnn.predict import predict
    from l1cnn.runs import atomic_write_text

    if args.output:
        out = Path(args.output)
        if not out.parent.exists() or not os.access(out.parent, os.W_OK):
            raise RunError(f"output '{out}' cannot be written (folder missing or read-only)")
    from l1cnn.export import is_export_folder, predict_export

    if is_export_folder(args.run):  # An export folder predicts like its run
        predict = predict_export  # noqa: F811
    result = predict(
        args.run, args.inputs, skip_bad_images=args.skip_bad_images, threshold=args.threshold
    )
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "probability", "predicted_class"])
    for row in result.predictions:
        writer.writerow([row.id, f"{row.probability:.6f}", row.predicted_class])
    if result.skipped:
        print(
            f"warning: skipped {len(result.skipped)} bad image(s): {'; '.join(result.skipped[:3])}",
            file=sys.stderr,
        )
    if args.output:
        try:
            atomic_write_text(args.output, buf.getvalue())
        except OSError as exc:
            raise RunError(f"output '{args.output}' cannot be written: {exc.strerror}") from None
        print(
            f"Wrote {len(result.predictions)} predictions to {args.output} "
            f"(threshold {result.threshold:g})",
            file=sys.stderr,
        )
    else:
        sys.stdout.write(buf.getvalue())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from l1cnn.export import ExportOptions, export_run

    options = ExportOptions(args.format, args.quantize)
    record = export_run(args.run, options, out=args.out, overwrite=args.overwrite)
    parity = record["parity"]
    print(f"Exported: {record['path']}  ({options.name}, {record['size_bytes']:,} bytes)")
    print(f"Parity on {parity['data']}, {parity['n']} images:")
    print(
        f"  max |p_export - p_keras| {parity['max_abs_diff']:.3g}  "
        f"(mean {parity['mean_abs_diff']:.3g})  "
        f"class agreement {parity['class_agreement']:.4f}"
    )
    print(
        f"  ROC-AUC keras {_fmt(parity['roc_auc_keras'])}  export {_fmt(parity['roc_auc_export'])}"
    )
    verdict = ("passed" if parity["passed"] else "FAILED") if parity["tolerance"] else "reported"
    print(f"  tolerance {parity['tolerance'] or 'none (quantized)'}: {verdict}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    from l1cnn.prune import PruneOptions, prune_run

    options = PruneOptions(args.sparsity, args.threshold, args.fine_tune_epochs)
    result = prune_run(
        args.run,
        options,
        out=args.out,
        overwrite=args.overwrite,
        verbose=not args.quiet,
        command=["l1cnn", *sys.argv[1:]],
    )
    rec = result.record
    total, dense = rec["sparsity"]["total"], rec["dense_sparsity"]["total"]
    print(f"Run:      {result.run_dir}  (pruned from {rec['source_run']})")
    print(
        f"Zeros:    sparsity {total['sparsity']:.3f} ({total['zeros']:,} of "
        f"{total['weights']:,} kernel weights; before {dense['sparsity']:.3f})"
    )
    print(
        "          "
        + "  ".join(
            f"{name} {v['sparsity']:.3f}" for name, v in rec["sparsity"].items() if name != "total"
        )
    )
    before, after, change = rec["test_before"], rec["test_after"], rec["test_change"]
    print(
        f"Test:     accuracy {_fmt(before['accuracy'])} -> {_fmt(after['accuracy'])} "
        f"({change['accuracy']:+.4f})  ROC-AUC {_fmt(before['roc_auc'])} -> "
        f"{_fmt(after['roc_auc'])} ({change['roc_auc']:+.4f})"
    )
    sizes = rec["model_file"]
    print(
        f"Size:     model file gzip {sizes['dense']['gzip_bytes']:,} -> "
        f"{sizes['pruned']['gzip_bytes']:,} bytes ({sizes['gzip_ratio']:.2f}x of dense)"
    )
    report = Path(result.run_dir) / "report.html"
    if report.exists():
        print(f"Report:   {report}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import importlib.util

    if not all(importlib.util.find_spec(m) for m in ("fastapi", "uvicorn", "multipart")):
        raise RunError(
            "l1cnn serve needs fastapi, uvicorn and python-multipart: pip install 'l1cnn[deploy]'"
        )
    from l1cnn.runs import load_run
    from l1cnn.serve import ServeLimits, check_can_listen, is_loopback, serve

    limits = ServeLimits(args.max_request_bytes, args.max_image_pixels, args.max_batch)
    check_can_listen(args.host, args.port)
    run = load_run(args.run)
    if not is_loopback(args.host):
        print(
            f"warning: binding {args.host} makes the model reachable from other machines",
            file=sys.stderr,
        )
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"Serving {run.path} at http://{shown}:{args.port}/ (Ctrl-C to stop)", flush=True)
    try:
        serve(run, args.host, args.port, limits)
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown
        pass
    print("Stopped.", flush=True)
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from l1cnn.study import format_eta, run_study

    config = load_config(args.config, args.overrides)
    name = Path(args.preset).stem if args.preset.endswith(".toml") else args.preset
    out = Path(args.out) if args.out else Path("runs") / f"study-{name}"

    def progress(p: dict[str, Any]) -> None:
        if p["trial"] is None:
            print(
                f"study: {p['done']}/{p['total']} trials already finished; training "
                f"{p['total'] - p['done']} in {out}",
                file=sys.stderr,
                flush=True,
            )
            return
        print(
            f"study: {p['done']}/{p['total']} trials done ({p['trial']} seed {p['seed']}: "
            f"{p['status']}, {p['seconds']:.0f} s); about {format_eta(p['eta_s'])} left",
            file=sys.stderr,
            flush=True,
        )

    result = run_study(
        args.data,
        config,
        out,
        preset=args.preset,
        n_seeds=args.seeds,
        jobs=args.jobs,
        fixed_epochs=args.epochs_without_early_stopping,
        on_progress=progress,
        train_missing=not args.report_only,
        command=["l1cnn", *sys.argv[1:]],
    )
    print(f"Study:    {out}  (reference: {result.reference})")
    print(
        f"Trials:   {len(result.rows)} of {result.planned} finished: {len(result.trained)} "
        f"trained now, {len(result.skipped)} kept from before"
        + (f"; failed: {', '.join(result.failed)}" if result.failed else "")
    )
    print(f"Results:  {out / 'results.csv'}")
    print(f"Summary:  {out / 'summary.md'}  and  {out / 'study.html'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from l1cnn.report import EXPLAIN_FILE, write_report
    from l1cnn.runs import check_is_run

    run = check_is_run(args.run)
    if args.explain or not (run / EXPLAIN_FILE).exists():
        from l1cnn.errors import DataError
        from l1cnn.explain import explain_run  # loads the model and re-checks the data

        try:
            explain_run(run)
        except DataError as exc:  # data moved or changed: the rest of the report still stands
            what = (
                "keeps the old one"
                if (run / EXPLAIN_FILE).exists()
                else "leaves out weights, wrong images and saliency"
            )
            print(
                f"warning: explain.npz not recomputed ({exc}); the report {what}", file=sys.stderr
            )
    print(f"Report:   {write_report(run)}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from l1cnn.report import write_comparison

    print(f"Compare:  {write_comparison(args.runs, args.out)}")
    return 0


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "export": cmd_export,
    "prune": cmd_prune,
    "serve": cmd_serve,
    "study": cmd_study,
    "report": cmd_report,
    "compare": cmd_compare,
}


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
