"""What every subcommand's parser and handler share: exit codes, config options, checks, lines.

Kept apart from cli.py so that command modules (l1cnn.commands.*) can use it without importing
the CLI that imports them. Imports nothing heavy: --help must not load TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from pathlib import Path
from typing import Any

from l1cnn.config import SECTIONS, load_config, parse_abstain_rule
from l1cnn.errors import ConfigError, DataError
from l1cnn.options import add_options, base_type, field_types

EXIT_BAD_INPUT = 2
EXIT_TRAINING_FAILED = 1
EXIT_INTERRUPTED = 130
METRIC_NAMES = ("accuracy", "precision", "recall", "f1", "roc_auc", "pr_auc", "loss")
DIGITS = "digits"  # the bundled data set's name (l1cnn.data.DIGITS)

Subparsers = Any  # argparse's _SubParsersAction


def cfg_dest(section: str) -> Any:
    return lambda name: f"cfg__{section}__{name}"


def add_config_options(parser: argparse.ArgumentParser, set_help: str) -> None:
    """--config, --set and one option per config key, left out unless given (a file may set it)."""
    parser.add_argument("--config", metavar="FILE", help="TOML config file (see configs/)")
    parser.add_argument(
        "--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides", help=set_help
    )
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(f"[{section}] config keys")
        add_options(group, cls, dest=cfg_dest(section), as_text=True)


def config_from_args(args: argparse.Namespace) -> Any:
    """The Config of --config, then --set, then the --KEY options (as TOML text overrides)."""
    overrides = list(args.overrides)
    for key, value in vars(args).items():
        if not key.startswith("cfg__"):
            continue
        _, section, name = key.split("__")
        tp = base_type(field_types(SECTIONS[section])[name])
        if typing.get_origin(tp) is tuple and not str(value).startswith("["):
            value = f"[{value}]"
        elif tp is str:
            value = json.dumps(str(value))  # TOML basic string
        overrides.append(f"{section}.{name}={value}")
    return load_config(args.config, overrides)


def check_data(data: str | None) -> None:
    """Refuse a missing DATA path before the data module (and TensorFlow) is imported."""
    if data is not None and data != DIGITS and not Path(data).exists():
        raise DataError(f"data path '{Path(data)}' does not exist")


def add_run_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run folder")


def fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def metrics_line(metrics: dict[str, Any]) -> str:
    return "  ".join(f"{name} {fmt(metrics.get(name))}" for name in METRIC_NAMES)


def counts_line(counts: dict[str, dict[str, int]]) -> str:
    return " | ".join(
        f"{split} {sum(c.values())} (" + ", ".join(f"{k} {v}" for k, v in c.items()) + ")"
        for split, c in counts.items()
    )


def warn_skipped(skipped: list[str]) -> None:
    """One warning line with the count of bad images skipped."""
    if skipped:
        print(
            f"warning: skipped {len(skipped)} bad image(s): {'; '.join(skipped[:3])}"
            + (f"; and {len(skipped) - 3} more" if len(skipped) > 3 else ""),
            file=sys.stderr,
        )


def add_mlflow_options(p: argparse.ArgumentParser) -> None:
    """--mlflow URI and --mlflow-experiment NAME (issue 16; see l1cnn.tracking)."""
    p.add_argument(
        "--mlflow",
        metavar="URI",
        help="also log to MLflow at URI, e.g. sqlite:///mlflow.db or http://host:5000 "
        "(default: $MLFLOW_TRACKING_URI; 'off' turns it off; needs l1cnn[mlflow]); if MLflow "
        "fails, one warning and the run goes on",
    )
    p.add_argument(
        "--mlflow-experiment",
        metavar="NAME",
        help="MLflow experiment (default: $MLFLOW_EXPERIMENT_NAME, else l1cnn)",
    )


def mlflow_target(args: argparse.Namespace) -> Any:
    """The MlflowTarget of --mlflow / $MLFLOW_TRACKING_URI, or None (imports no mlflow)."""
    from l1cnn.tracking import resolve_target

    return resolve_target(args.mlflow, args.mlflow_experiment)


def add_abstain_option(p: argparse.ArgumentParser) -> None:
    """``--abstain coverage=X`` (predict, evaluate, serve): refer images to a human."""
    p.add_argument(
        "--abstain",
        metavar="coverage=X",
        help="refer images to a human: split-conformal label sets calibrated on the run's "
        "validation split contain the true class with probability >= X (X in (0, 1)); an "
        "image whose set is not one class is 'refer' (default: the run's train.abstain)",
    )


def abstain_arg(text: str | None) -> float | None:
    """``--abstain coverage=X`` -> X (refused outside (0, 1)); None when not given."""
    if text is None:
        return None
    coverage = parse_abstain_rule(text, key="--abstain")
    if coverage is None:
        raise ConfigError("--abstain needs coverage=X with X in (0, 1), e.g. coverage=0.95")
    return coverage


def abstain_line(report: dict[str, Any]) -> str:
    """``evaluate``'s line for ``metrics["abstain"]``: coverage, referred, accuracy on the rest."""

    def ci(key: str) -> str:
        interval = report.get(f"{key}_ci")
        return f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""

    acc = report["accuracy_decided"]
    return (
        f"  abstain (conformal, target coverage {report['target_coverage']:g}): coverage "
        f"{report['coverage']:.3f}{ci('coverage')}, referred {report['referred']:.3f}"
        f"{ci('referred')}, accuracy on the {report['n_decided']} not referred "
        + (f"{acc:.3f}{ci('accuracy_decided')}" if acc is not None else "n/a")
        + " (95% Wilson intervals)"
    )
