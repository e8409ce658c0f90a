"""The ``l1cnn`` command: parses arguments, calls the library, prints results.

Only this module prints results or exits; every library error becomes one ``error: ...`` line
with exit status 2 (1 when training itself failed), never a traceback. Each command has its
parser builder beside its ``cmd_*`` function. The library is imported inside each ``cmd_*``,
after every check that needs no model, so ``--help`` and bad input answer without TensorFlow.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import l1cnn.commands.cv  # noqa: F401  (loads commands.cv for BUILDERS)
from l1cnn import commands
from l1cnn.cli_args import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_TRAINING_FAILED,
    Subparsers,
    add_config_options,
    add_run_argument,
    check_data,
    config_from_args,
    counts_line,
    fmt,
    metrics_line,
    warn_skipped,
)
from l1cnn.config import (
    ExportOptions,
    PruneOptions,
    ServeLimits,
    parse_threshold_rule,
)
from l1cnn.errors import ConfigError, DataError, L1CNNError, RunError, TrainingError
from l1cnn.options import add_options, flag, options_from_args
from l1cnn.runs import check_is_run
from l1cnn.serve_security import ServeSecurity
from l1cnn.version import __version__


class _Parser(argparse.ArgumentParser):
    """argparse with the house's one-line ``error: ...`` for a bad command line (exit 2)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see `{self.prog} --help`)\n")

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> argparse.Namespace:
        """Like argparse's, but an unknown option is blamed on the subcommand that got it."""
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            command = getattr(parsed, "command", None)
            prog = f"{self.prog} {command}" if command else self.prog
            _Parser(prog=prog).error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed


def add_train(sub: Subparsers) -> None:
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
    p.add_argument(
        "--resume",
        metavar="RUN",
        help="continue the unfinished run RUN from its last finished epoch, with its "
        "own data and config (a finished run is left as it is)",
    )
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/<data>-<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_options(p, "override any config key, e.g. --set l1_lambda=0.001 (repeatable)")
    p.set_defaults(handler=cmd_train)


def _resume(args: argparse.Namespace) -> Any:
    """``train --resume RUN``: the TrainResult, or None when RUN had finished."""
    from l1cnn.train import resume

    extra = [flag(k.split("__")[2]) for k in vars(args) if k.startswith("cfg__")]
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
    result = resume(args.resume, verbose=not args.quiet, command=args.command_line)
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
        config = config_from_args(args)
        check_data(args.data)
        from l1cnn.train import train

        result = train(
            args.data,
            config,
            out=args.out,
            overwrite=args.overwrite,
            verbose=not args.quiet,
            command=args.command_line,
        )
    data, metrics = result.data, result.metrics
    warn_skipped(data.get("skipped_images", []))
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
    print(f"Splits:   {counts_line(data['counts'])}")
    print(
        f"Training: {stop}; best epoch {result.best_epoch}; {result.wall_time_s:.1f} s; "
        f"seed {result.config.train.seed}"
    )
    print(
        f"Test:     {metrics_line(metrics['test'])}  (threshold {metrics['threshold']['value']:g})"
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


def add_evaluate(sub: Subparsers) -> None:
    p = sub.add_parser("evaluate", help="metrics of a saved run on its test split or other data")
    add_run_argument(p)
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
    p.set_defaults(handler=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    choice = None
    if args.save and args.threshold is None:
        raise ConfigError("--save needs --threshold RULE (the threshold to make the run's own)")
    check_is_run(args.run)
    if args.threshold is not None:
        parse_threshold_rule(args.threshold)
    check_data(args.data)
    from l1cnn.predict import evaluate_run
    from l1cnn.rethreshold import rechoose_threshold, save_threshold

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
    warn_skipped(metrics.get("skipped_images", []))
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
    print(f"  {metrics_line(metrics)}  (threshold {metrics['threshold']:g})")
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


def add_predict(sub: Subparsers) -> None:
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
    p.set_defaults(handler=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    if args.output:
        out = Path(args.output)
        if not out.parent.exists() or not os.access(out.parent, os.W_OK):
            raise RunError(f"output '{out}' cannot be written (folder missing or read-only)")
    if not Path(args.run).exists():
        check_is_run(args.run)  # says it does not exist
    for item in args.inputs:
        if not Path(item).exists():
            raise DataError(f"input '{Path(item)}' does not exist")
    from l1cnn.exported import is_export_folder, predict_export
    from l1cnn.runs import atomic_write_text

    if is_export_folder(args.run):  # an ONNX or LiteRT export runs without TensorFlow
        predict = predict_export
    else:
        from l1cnn.predict import predict
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


def add_export(sub: Subparsers) -> None:
    p = sub.add_parser("export", help="export a run (SavedModel, ONNX, LiteRT) and check parity")
    add_run_argument(p)
    add_options(p, ExportOptions, required=["format"])
    p.add_argument("--out", metavar="DIR", help="export folder (default: RUN/export-FORMAT)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export folder")
    p.set_defaults(handler=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    options = options_from_args(ExportOptions, args)
    check_is_run(args.run)
    from l1cnn.export import export_run

    record = export_run(args.run, options, out=args.out, overwrite=args.overwrite)
    parity = record["parity"]
    print(f"Exported: {record['path']}  ({options.name}, {record['size_bytes']:,} bytes)")
    print(f"Parity on {parity['data']}, {parity['n']} images:")
    print(
        f"  max |p_export - p_keras| {parity['max_abs_diff']:.3g}  "
        f"(mean {parity['mean_abs_diff']:.3g})  "
        f"class agreement {parity['class_agreement']:.4f}"
    )
    print(f"  ROC-AUC keras {fmt(parity['roc_auc_keras'])}  export {fmt(parity['roc_auc_export'])}")
    verdict = ("passed" if parity["passed"] else "FAILED") if parity["tolerance"] else "reported"
    print(f"  tolerance {parity['tolerance'] or 'none (quantized)'}: {verdict}")
    return 0


def add_prune(sub: Subparsers) -> None:
    p = sub.add_parser("prune", help="zero the smallest weights of a run and write a new run")
    add_run_argument(p)
    add_options(p.add_mutually_exclusive_group(), PruneOptions, exclude=["fine_tune_epochs"])
    add_options(p, PruneOptions, exclude=["sparsity", "min_magnitude"])
    p.add_argument("--out", metavar="DIR", help="new run folder (default: RUN-pruned-s0.9)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=cmd_prune)


def cmd_prune(args: argparse.Namespace) -> int:
    options = options_from_args(PruneOptions, args)
    check_is_run(args.run)
    from l1cnn.prune import prune_run

    result = prune_run(
        args.run,
        options,
        out=args.out,
        overwrite=args.overwrite,
        verbose=not args.quiet,
        command=args.command_line,
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
        f"Test:     accuracy {fmt(before['accuracy'])} -> {fmt(after['accuracy'])} "
        f"({change['accuracy']:+.4f})  ROC-AUC {fmt(before['roc_auc'])} -> "
        f"{fmt(after['roc_auc'])} ({change['roc_auc']:+.4f})"
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


def add_serve(sub: Subparsers) -> None:
    p = sub.add_parser("serve", help="serve a run over HTTP: JSON API and a page to try images")
    p.add_argument(
        "run",
        metavar="RUN",
        help="run folder, or an export folder (ONNX and LiteRT exports need no TensorFlow)",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    add_options(p, ServeLimits)
    add_options(p, ServeSecurity)
    p.set_defaults(handler=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    import importlib.util

    if not all(importlib.util.find_spec(m) for m in ("fastapi", "uvicorn", "multipart")):
        raise RunError(
            "l1cnn serve needs fastapi, uvicorn and python-multipart: pip install 'l1cnn[deploy]'"
        )
    limits = options_from_args(ServeLimits, args)
    from l1cnn.exported import is_export_folder

    if not is_export_folder(args.run):  # an ONNX or LiteRT export serves without TensorFlow
        check_is_run(args.run)
    from l1cnn.serve import check_can_listen, is_loopback, predictor_for, serve
    from l1cnn.serve_security import check_tls_files, resolve_token

    security = options_from_args(ServeSecurity, args)
    loopback = is_loopback(args.host)
    # Everything that can refuse runs before any socket is bound (check_can_listen binds one).
    token, warnings = resolve_token(security, args.host, loopback)
    check_tls_files(security)
    check_can_listen(args.host, args.port)
    predictor = predictor_for(args.run)  # loads the model: a bad one stops here
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if not loopback:
        print(f"Reachable from other machines at {args.host}", file=sys.stderr)
    if token is not None:  # where the token is, never the token itself
        print(f"Token:    {token.source}; clients send Authorization: Bearer <token>")
    rate = security.rate(loopback)
    print(f"Limit:    {f'{rate} requests per minute per client' if rate else 'no rate limit'}")
    shown = f"[{args.host}]" if ":" in args.host else args.host
    scheme = "https" if security.tls_cert else "http"
    print(
        f"Serving {Path(args.run)} at {scheme}://{shown}:{args.port}/ (Ctrl-C to stop)", flush=True
    )
    try:
        serve(predictor, args.host, args.port, limits, security, token.value if token else None)
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown
        pass
    print("Stopped.", flush=True)
    return 0


def add_study(sub: Subparsers) -> None:
    p = sub.add_parser(
        "study",
        help="train a grid of configurations over seeds and compare them",
        description=(
            "Train every configuration of a preset over several seeds (each trial an ordinary "
            "run folder in OUT/trials/) and write results.csv, summary.md, study.html and "
            "plots. Rerunning the same command skips finished trials. --config, --set and the "
            "config key options apply to every trial."
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
    for name, default, what in (
        ("--seeds", 5, "seeds per configuration: train.seed, train.seed+1, ..."),
        ("--jobs", 1, "trials trained at once, each in its own process"),
        ("--epochs-without-early-stopping", 40, "epochs of trials with early stopping off"),
    ):
        p.add_argument(
            name, type=int, default=default, metavar="N", help=f"{what} (default: {default})"
        )
    p.add_argument("--out", metavar="DIR", help="study folder (default: runs/study-<preset>)")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing; write the report from the finished trials",
    )
    add_config_options(p, "override a config key for every trial (repeatable)")
    p.set_defaults(handler=cmd_study)


def cmd_study(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    check_data(args.data)
    from l1cnn.study import format_eta, run_study

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
        command=args.command_line,
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


def add_report(sub: Subparsers) -> None:
    p = sub.add_parser("report", help="(re)write a run's plots, report.html and report.md")
    add_run_argument(p)
    p.add_argument(
        "--explain",
        action="store_true",
        help="recompute explain.npz (weights, wrong images, saliency) from the model "
        "even if present",
    )
    p.set_defaults(handler=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    run = check_is_run(args.run)
    from l1cnn.reporting import EXPLAIN_FILE, write_report

    if args.explain or not (run / EXPLAIN_FILE).exists():
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


def add_compare(sub: Subparsers) -> None:
    p = sub.add_parser("compare", help="one HTML page comparing runs side by side")
    p.add_argument("runs", metavar="RUN", nargs="+", help="two or more run folders")
    p.add_argument(
        "--out",
        metavar="FILE",
        default="compare.html",
        help="HTML file to write (default: compare.html)",
    )
    p.set_defaults(handler=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    from l1cnn.reporting import write_comparison

    print(f"Compare:  {write_comparison(args.runs, args.out)}")
    return 0


BUILDERS = (
    add_train,
    add_evaluate,
    add_predict,
    add_export,
    add_prune,
    add_serve,
    add_study,
    add_report,
    add_compare,
    commands.cv.add,
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = _Parser(
        prog="l1cnn",
        description="Train, evaluate and use a small L1-regularized CNN for two-class images.",
    )
    parser.add_argument("--version", action="version", version=f"l1cnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in BUILDERS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``l1cnn`` console script; ``argv`` defaults to ``sys.argv[1:]``."""
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    args = build_parser().parse_args(argv)
    args.command_line = ["l1cnn", *argv]  # recorded in what the command writes
    try:
        return args.handler(args)
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
