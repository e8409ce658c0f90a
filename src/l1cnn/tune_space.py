"""The search space and objectives of ``l1cnn tune``: parsed and checked without Optuna.

A space maps config keys to ranges (int or float, optionally log, optionally also exactly 0) or
lists of choices; it must hold the base (specified) configuration, which is enqueued as the
first trial. Imports no TensorFlow and no Optuna, so bad input is refused at once.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from l1cnn.config import SECTIONS, Config, replace
from l1cnn.errors import ConfigError

# objective name -> (Optuna direction, what it is)
OBJECTIVES = {
    "val_roc_auc": ("maximize", "validation ROC-AUC"),
    "val_loss": ("minimize", "validation log loss (the data part, without the L1 penalty)"),
    "sparsity": ("maximize", "fraction of exactly-zero Conv2D/Dense kernel weights"),
}
TUNABLE_SECTIONS = ("model", "train", "augment")
NOT_TUNABLE = {"train.seed", "train.epochs", "train.tensorboard"}
DEFAULT_SPACE = """
[l1_lambda]      # includes the specified 0.01; zero = true also tries no L1 at all
low = 1e-5
high = 0.1
log = true
zero = true

[dropout_rate]
low = 0.0
high = 0.7

[learning_rate]
low = 1e-4
high = 1e-2
log = true

[batch_size]
choices = [16, 32, 64, 128]
"""
# With sparsity as an objective the default space also chooses the L1 mode: only proximal L1
# (soft-thresholding) makes weights exactly zero.
SPARSITY_SPACE = """
[l1_mode]
choices = ["penalty", "proximal"]
"""


# --------------------------------------------------------------------------- search space


@dataclass(frozen=True)
class Param:
    """One searched config key: a range (int or float, optionally log) or a list of choices."""

    section: str
    name: str
    kind: str  # "int", "float" or "choice"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    zero: bool = False  # also try exactly 0 (a companion choice "<name>_zero")

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def zero_name(self) -> str:
        return f"{self.name}_zero"

    def suggest(self, trial: Any) -> Any:
        """This parameter's value for ``trial`` (drawn by the sampler, or enqueued)."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            value: Any = trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        else:
            value = trial.suggest_float(self.name, self.low, self.high, log=self.log)
        # Both are always drawn (no conditional space), so importances see every trial.
        if self.zero and trial.suggest_categorical(self.zero_name, [False, True]):
            return 0 if self.kind == "int" else 0.0
        return value

    def fixed(self, value: Any) -> dict[str, Any]:
        """The Optuna params that give ``value`` (for enqueueing the specified configuration)."""
        if self.zero:
            if value == 0:
                return {self.name: self.low, self.zero_name: True}
            return {self.name: value, self.zero_name: False}
        return {self.name: value}

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.name} in {list(self.choices)}"
        scale = ", log" if self.log else ""
        return f"{self.name} in [{self.low:g}, {self.high:g}]{scale}" + (
            " or 0" if self.zero else ""
        )


def _field_type(section: str, name: str) -> Any:
    hints = typing.get_type_hints(SECTIONS[section])
    tp = hints[name]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) else tp


def _resolve_key(key: str, where: str) -> tuple[str, str]:
    """``name`` or ``section.name`` of a tunable config key, else a ConfigError naming it."""
    names = {
        s: {f.name for f in dataclasses.fields(SECTIONS[s])} for s in SECTIONS
    }  # names are unique across sections
    if "." in key:
        section, name = key.split(".", 1)
        found = section in names and name in names[section]
    else:
        section = next((s for s in names if key in names[s]), "")
        name, found = key, bool(section)
    if not found:
        raise ConfigError(f"{where}: unknown parameter '{key}' (use a config key, e.g. l1_lambda)")
    if section not in TUNABLE_SECTIONS or f"{section}.{name}" in NOT_TUNABLE:
        raise ConfigError(
            f"{where}: '{key}' cannot be searched (data keys, seed, epochs and tensorboard are "
            "fixed by the base configuration)"
        )
    return section, name


def _param(key: str, table: Any, where: str) -> Param:
    section, name = _resolve_key(key, where)
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: [{key}] must be a table with low/high or choices")
    unknown = set(table) - {"low", "high", "log", "choices", "zero"}
    if unknown:
        raise ConfigError(
            f"{where}: [{key}] has unknown setting(s) {sorted(unknown)} "
            "(low, high, log, zero or choices)"
        )
    tp = _field_type(section, name)
    if "choices" in table:
        choices = table["choices"]
        if set(table) - {"choices"}:
            raise ConfigError(f"{where}: [{key}] takes either choices or low/high, not both")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: [{key}] choices must be a non-empty list")
        if any(not isinstance(c, bool | int | float | str) for c in choices):
            raise ConfigError(f"{where}: [{key}] choices must be numbers, booleans or strings")
        return Param(section, name, "choice", choices=tuple(choices))
    if tp not in (int, float):
        raise ConfigError(f"{where}: [{key}] is not numeric; give choices = [...]")
    if "low" not in table or "high" not in table:
        raise ConfigError(f"{where}: [{key}] needs low and high (or choices)")
    low, high = table["low"], table["high"]
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in (low, high)):
        raise ConfigError(f"{where}: [{key}] low and high must be numbers")
    if not low < high:
        raise ConfigError(
            f"{where}: [{key}] has an empty range: low {low} is not below high {high}"
        )
    log = bool(table.get("log", False))
    if log and low <= 0:
        raise ConfigError(f"{where}: [{key}] has log = true, so low must be > 0 (got {low})")
    kind = "int" if tp is int else "float"
    if kind == "int" and (low != int(low) or high != int(high)):
        raise ConfigError(f"{where}: [{key}] is an integer key; low and high must be integers")
    return Param(section, name, kind, float(low), float(high), log, zero=bool(table.get("zero")))


def parse_space(text: str, where: str) -> list[Param]:
    """The parameters of a space file's TOML text (``where`` names it in errors)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: not valid TOML: {exc}") from None
    if not raw:
        raise ConfigError(f"{where}: no parameters (one [key] table per searched config key)")
    params = [_param(key, table, where) for key, table in raw.items()]
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: a parameter is given twice ({names})")
    return params


def default_space(base: Config, objectives: list[str]) -> list[Param]:
    """The default space, widened where needed so it holds the base (specified) configuration."""
    params = parse_space(
        DEFAULT_SPACE + (SPARSITY_SPACE if "sparsity" in objectives else ""), "default space"
    )
    out = []
    for p in params:
        value = getattr(getattr(base, p.section), p.name)
        if p.kind == "choice" and value not in p.choices:
            p = dataclasses.replace(p, choices=(*p.choices, value))
        elif p.kind != "choice" and value != 0:
            p = dataclasses.replace(p, low=min(p.low, value), high=max(p.high, value))
        out.append(p)
    return out


def load_space(path: str | Path | None, base: Config, objectives: list[str]) -> list[Param]:
    """The space of ``path`` (a TOML file), or the default space; checked against ``base``."""
    if path is None:
        params = default_space(base, objectives)
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"space file '{path}' cannot be read: {exc.strerror}") from None
        params = parse_space(text, f"space file '{path}'")
    for p in params:
        _check_holds_base(p, base)
        for value in (p.low, p.high) if p.kind != "choice" else p.choices:
            trial_config(base, {p.key: value})  # a value the config refuses: refused now
    return params


def _check_holds_base(p: Param, base: Config) -> None:
    value = getattr(getattr(base, p.section), p.name)
    if p.kind == "choice":
        ok = value in p.choices
    else:
        ok = (p.zero and value == 0) or p.low <= value <= p.high
    if not ok:
        raise ConfigError(
            f"the search space must hold the specified configuration (trial 0): "
            f"{p.key} = {value!r} is outside {p.describe()}"
        )


def trial_config(base: Config, values: dict[str, Any]) -> Config:
    sections: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        section, name = key.split(".")
        sections.setdefault(section, {})[name] = value
    return replace(base, **sections)


def specified_params(space: list[Param], base: Config) -> dict[str, Any]:
    """The Optuna params of the base configuration (enqueued as the first trial)."""
    out: dict[str, Any] = {}
    for p in space:
        out |= p.fixed(getattr(getattr(base, p.section), p.name))
    return out


# ------------------------------------------------------------------------------ objectives


def parse_objectives(text: str) -> list[str]:
    """``val_roc_auc``, ``val_loss``, or one of them with ``sparsity`` (``a,b``)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown or not names:
        raise ConfigError(
            f"unknown objective {', '.join(unknown) or repr(text)}: choose from "
            f"{', '.join(OBJECTIVES)} (two: val_roc_auc,sparsity)"
        )
    if len(names) == 1 and names[0] == "sparsity":
        raise ConfigError("sparsity alone is a degenerate objective; use val_roc_auc,sparsity")
    if len(names) > 2 or (len(names) == 2 and (names[1] != "sparsity" or names[0] == "sparsity")):
        raise ConfigError(
            "two objectives are a validation metric then sparsity, e.g. val_roc_auc,sparsity"
        )
    return names
