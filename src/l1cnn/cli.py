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

from l1cnn.cli_args import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_TRAINING_FAILED,
    Subparsers,
    abstain_arg,
    abstain_line,
    add_abstain_option,
    add_config_options,
    add_mlflow_options,
    add_run_argument,
    check_data,
    config_from_args,
    counts_line,
    fmt,
    metrics_line,
    mlflow_target,
    warn_skipped,
)
from l1cnn.commands import calibrate, cv, tune
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
    add_mlflow_options(p)
    _add_cluster_options(p)
    add_config_options(p, "override any config key, e.g. --set l1_lambda=0.001 (repeatable)")
    p.set_defaults(handler=cmd_train)


def _add_cluster_options(p: argparse.ArgumentParser) -> None:
    """How a ``--strategy multi-worker`` process joins its cluster (docs/distributed.md)."""
    g = p.add_argument_group("multi-worker training (--strategy multi-worker)")
    g.add_argument(
        "--workers",
        metavar="HOST:PORT,...",
        help="every worker's address, chief first; builds TF_CONFIG (else TF_CONFIG is read)",
    )
    g.add_argument(
        "--worker-index", type=int, metavar="I", help="this worker's place in --workers (0: chief)"
    )
    g.add_argument(
        "--collective-timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="a lost worker stops the others within about S seconds (default: 60)",
    )
    g.add_argument(
        "--join-timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="how long to wait for every worker to start (default: 600)",
    )


def _cluster_options(args: argparse.Namespace, strategy: str, out: str | None) -> Any:
    """The ClusterOptions of the command line; a multi-process run needs a shared --out."""
    from l1cnn.distribute import ClusterOptions, parse_workers

    workers = parse_workers(args.workers) if args.workers else ()
    if args.collective_timeout <= 0 or args.join_timeout <= 0:
        raise ConfigError("--collective-timeout and --join-timeout must be > 0 seconds")
    many = len(workers) > 1 or (not workers and "TF_CONFIG" in os.environ)
    if strategy == "multi-worker":  # TensorFlow's C++ logs each aborted collective on a fault:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # ours is the one line (0: see them)
    if strategy == "multi-worker" and many and out is None:
        raise ConfigError(
            "multi-worker training needs --out RUN, a folder every worker can read "
            "(the chief writes it; --resume reads it on every worker)"
        )
    return ClusterOptions(workers, args.worker_index, args.collective_timeout, args.join_timeout)


def _resume(args: argparse.Namespace) -> Any:
    """``train --resume RUN``: the TrainResult, or None when RUN had finished."""
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
    from l1cnn.runs import CONFIG_FILE, read_run_config

    has_config = (Path(args.resume) / CONFIG_FILE).is_file()  # else resume() says what is wrong
    strategy = read_run_config(args.resume).train.strategy if has_config else "none"
    cluster = _cluster_options(args, strategy, args.resume)  # before TensorFlow is imported
    target = mlflow_target(args)
    from l1cnn.train import resume

    result = resume(args.resume, not args.quiet, args.command_line, mlflow=target, cluster=cluster)
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
        cluster = _cluster_options(args, config.train.strategy, args.out)  # before TensorFlow
        target = mlflow_target(args)
        from l1cnn.train import train

        result = train(
            args.data,
            config,
            out=args.out,
            overwrite=args.overwrite,
            verbose=not args.quiet,
            command=args.command_line,
            mlflow=target,
            cluster=cluster,
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
    add_abstain_option(p)
    p.set_defaults(handler=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    choice = None
    if args.save and args.threshold is None:
        raise ConfigError("--save needs --threshold RULE (the threshold to make the run's own)")
    check_is_run(args.run)
    if args.threshold is not None:
        parse_threshold_rule(args.threshold)
    abstain = abstain_arg(args.abstain)
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
        abstain=abstain,
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
    if "abstain" in metrics:
        print(abstain_line(metrics["abstain"]))
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
    add_abstain_option(p)
    p.add_argument(
        "--mc-samples",
        type=int,
        metavar="N",
        help="N forward passes with dropout on (Monte Carlo dropout; run folders only): "
        "probability is their mean, probability_std their standard deviation",
    )
    p.add_argument(
        "--mc-seed",
        type=int,
        metavar="S",
        help="seed of the dropout masks for --mc-samples (default: the run's train.seed)",
    )
    p.add_argument(
        "--shard",
        type=_shard,
        metavar="K/N",
        help="predict only the K-th of N contiguous slices of the inputs (1 <= K <= N), so N "
        "machines each write a CSV whose rows, in shard order, are one machine's",
    )
    p.set_defaults(handler=cmd_predict)


def _shard(text: str) -> tuple[int, int]:
    """``K/N`` -> (K, N) with 1 <= K <= N (argparse turns the ValueError into one line)."""
    k, sep, n = text.partition("/")
    if not sep or not k.strip().isdigit() or not n.strip().isdigit():
        raise argparse.ArgumentTypeError(f"--shard wants K/N, e.g. 2/4, got {text!r}")
    pair = int(k), int(n)
    if not 1 <= pair[0] <= pair[1]:
        raise argparse.ArgumentTypeError(f"--shard K/N needs 1 <= K <= N, got {text!r}")
    return pair


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
    abstain = abstain_arg(args.abstain)
    if args.mc_samples is not None and args.mc_samples < 1:
        raise ConfigError(f"--mc-samples must be >= 1, got {args.mc_samples}")
    from l1cnn.exported import is_export_folder, predict_export
    from l1cnn.runs import atomic_write_text

    extra: dict[str, Any] = {"abstain": abstain, "mc_samples": args.mc_samples}
    if is_export_folder(args.run):  # an ONNX or LiteRT export runs without TensorFlow
        predict = predict_export
    else:
        from l1cnn.predict import predict

        extra["mc_seed"] = args.mc_seed
    result = predict(
        args.run,
        args.inputs,
        skip_bad_images=args.skip_bad_images,
        threshold=args.threshold,
        **extra,
        shard=args.shard,
    )
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    mc, refer = result.mc_samples is not None, result.coverage is not None
    writer.writerow(
        ["path", "probability", "predicted_class"]
        + (["probability_std"] if mc else [])
        + (["decision", "label_set"] if refer else [])
    )
    for row in result.predictions:
        writer.writerow(
            [row.id, f"{row.probability:.6f}", row.predicted_class]
            + ([f"{row.std:.6f}"] if mc else [])
            + ([row.decision, "|".join(row.label_set or [])] if refer else [])
        )
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
    add_abstain_option(p)
    p.set_defaults(handler=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    import importlib.util

    needed = ("fastapi", "uvicorn", "multipart", "prometheus_client")
    if not all(importlib.util.find_spec(m) for m in needed):
        raise RunError(
            "l1cnn serve needs fastapi, uvicorn, python-multipart and prometheus-client: "
            "pip install 'l1cnn[deploy]'"
        )
    limits = options_from_args(ServeLimits, args)
    abstain = abstain_arg(args.abstain)
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
    predictor = predictor_for(args.run, abstain)  # loads the model: a bad one stops here
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
    add_mlflow_options(p)  # the study as a parent run, each finished trial a child run
    add_config_options(p, "override a config key for every trial (repeatable)")
    p.set_defaults(handler=cmd_study)


def cmd_study(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    check_data(args.data)
    target = mlflow_target(args)
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
    if target is not None and result.rows:
        _log_study(target, out, result, args)
    return 0


def _log_study(target: Any, out: Path, result: Any, args: argparse.Namespace) -> None:
    """The study as an MLflow parent run, its finished trials as child runs."""
    from l1cnn.tracking import log_runs

    trials = {f"{r['configuration']}/seed-{r['seed']}": out / r["run_dir"] for r in result.rows}
    params = {
        "data": args.data,
        "preset": args.preset,
        "seeds": args.seeds,
        "epochs_without_early_stopping": args.epochs_without_early_stopping,
        "reference": result.reference,
    }
    files = [out / name for name in ("results.csv", "summary.md", "study.html")]
    parent = log_runs(target, out.name, trials, params, artifacts=files)
    if parent is not None:
        print(f"MLflow:   run {parent} ({len(trials)} trials) in '{target.experiment}'")


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
    calibrate.add,
    tune.add,
    cv.add,
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
