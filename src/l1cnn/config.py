"""Frozen configuration dataclasses: defaults, then a TOML file, then ``key=value`` overrides.

Every value the model, data pipeline and training loop use lives here, so a run folder's
``config.toml`` is enough to reproduce it. Unknown keys, wrong types and out-of-range values are
refused with the key's name.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from l1cnn.errors import ConfigError

CLASS_WEIGHT_CHOICES = ("none", "balanced")
L1_MODES = ("penalty", "proximal")
# Threshold rules: a number, or chosen on validation by l1cnn.evaluate.choose_threshold.
THRESHOLD_RULES = ("f1", "youden", "recall=X", "precision=X")


def parse_threshold_rule(rule: str) -> tuple[str, float | None]:
    """Parse a decision-threshold rule without touching data, so a bad rule fails before training.

    Args:
        rule: ``"0.5"`` (any number in [0, 1]), ``"f1"``, ``"youden"``, ``"recall=0.95"`` or
            ``"precision=0.9"`` (targets in (0, 1]).

    Returns:
        ``(kind, value)``: ``("fixed", 0.5)``, ``("f1", None)``, ``("youden", None)``,
        ``("recall", 0.95)`` or ``("precision", 0.9)``.

    Raises:
        ConfigError: naming ``train.threshold`` and the accepted forms.
    """
    text = str(rule).strip().lower()
    accepted = f"a number in [0, 1] or one of {', '.join(THRESHOLD_RULES)}"
    if text in ("f1", "youden"):
        return text, None
    kind, sep, target = text.partition("=")
    if sep and kind.strip() in ("recall", "precision"):
        try:
            value = float(target)
        except ValueError:
            value = float("nan")
        if not 0.0 < value <= 1.0:  # NaN fails too
            raise ConfigError(
                f"config key 'train.threshold' rule {rule!r} needs a target in (0, 1], "
                f"e.g. {kind.strip()}=0.95"
            )
        return kind.strip(), value
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise ConfigError(f"config key 'train.threshold' must be {accepted}, got {rule!r}")
    return "fixed", value


@dataclass(frozen=True)
class DataConfig:
    """How images are read, resized and split."""

    image_size: int | None = None  # None: 64 for image folders, the arrays' own size for .npz
    channels: int | None = None  # None: 1 when every image is grayscale, else 3
    positive_class: str | None = None  # None: the second class name in sorted order
    val_fraction: float = 0.15  # used only when the source has no validation split
    test_fraction: float = 0.15  # used only when the source has no test split
    skip_bad_images: bool = False  # skip unreadable images (with a count) instead of failing
    cache: str | None = None  # folder for decoded class-folder pixels (None: decode every epoch)


@dataclass(frozen=True)
class ModelConfig:
    """The network: by default exactly the specified architecture."""

    conv_filters: tuple[int, ...] = (32, 64)
    kernel_size: int = 3
    pool_size: int = 2
    dense_units: int = 64
    dropout_rate: float = 0.5
    l1_lambda: float = 0.01
    l1_mode: str = (
        "penalty"  # "penalty": L1 term in the loss; "proximal": soft-threshold after steps
    )


@dataclass(frozen=True)
class TrainConfig:
    """Optimization, early stopping and reproducibility."""

    learning_rate: float = 0.001
    batch_size: int = 32
    epochs: int = 100
    early_stopping: bool = True
    patience: int = 5
    restore_best_weights: bool = True
    class_weight: str = "none"  # "none" (as specified) or "balanced"
    seed: int = 42
    threshold: str = "0.5"  # decision threshold rule, chosen on the validation split
    tensorboard: bool = field(
        default=True,
        metadata={"help": "write TensorBoard event files into the run folder's tensorboard/"},
    )


@dataclass(frozen=True)
class Config:
    """Everything a run needs besides the data path."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


KEY_HELP = {
    "image_size": "resize images to this side length; auto: 64 for folders, arrays keep theirs",
    "channels": "1 (gray) or 3 (colour); auto: 1 when every image is grayscale",
    "positive_class": "class name that counts as positive; auto: the second in sorted order",
    "val_fraction": "validation share when the data has no validation split",
    "test_fraction": "test share when the data has no test split",
    "skip_bad_images": "skip unreadable images (with a count) instead of failing",
    "cache": "folder to keep decoded class-folder pixels in, so epochs and reruns skip decoding",
    "conv_filters": "filters of each Conv2D layer",
    "kernel_size": "Conv2D kernel size",
    "pool_size": "MaxPooling2D size",
    "dense_units": "units of the hidden Dense layer",
    "dropout_rate": "rate of both Dropout layers",
    "l1_lambda": "L1 strength on every Conv2D and Dense kernel",
    "l1_mode": "penalty (L1 term in the loss) or proximal (soft-threshold: exact zeros)",
    "learning_rate": "RMSprop learning rate",
    "batch_size": "images per training step",
    "epochs": "maximum number of epochs",
    "early_stopping": "stop when val_loss stops improving (else train all epochs, keep last)",
    "patience": "epochs without val_loss improvement before stopping",
    "restore_best_weights": "keep the weights of the best epoch",
    "class_weight": "none, or balanced (weights the loss by inverse class frequency)",
    "seed": "seed for the split, initial weights, shuffling and dropout",
    "threshold": "0.5 (any number), f1, youden, recall=X or precision=X; chosen on validation",
    "tensorboard": "write TensorBoard event files into the run folder's tensorboard/",
}

SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _section_of(key: str) -> tuple[str, str]:
    """Resolve ``name`` or ``section.name`` to (section, name); names are unique across sections."""
    if "." in key:
        section, name = key.split(".", 1)
        if section not in SECTIONS or name not in _field_types(SECTIONS[section]):
            raise ConfigError(f"unknown config key '{key}' (see `l1cnn train --help` for keys)")
        return section, name
    for section, cls in SECTIONS.items():
        if key in _field_types(cls):
            return section, key
    raise ConfigError(f"unknown config key '{key}' (see `l1cnn train --help` for keys)")


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; return it in the field's own type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                pass
        raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, list | tuple) or not value:
            raise ConfigError(f"config key '{key}' must be a non-empty list, got {value!r}")
        return tuple(_coerce(key, item, item_type) for item in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)  # lets `--set threshold=0.5` work
    raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}")


def _check_ranges(config: Config) -> None:
    """Refuse values that would fail later or make no sense, naming the key."""
    d, m, t = config.data, config.model, config.train

    def need(ok: bool, key: str, what: str, value: Any) -> None:
        if not ok:
            raise ConfigError(f"config key '{key}' {what}, got {value!r}")

    need(d.image_size is None or d.image_size >= 1, "data.image_size", "must be >= 1", d.image_size)
    need(d.channels in (None, 1, 3), "data.channels", "must be 1 or 3", d.channels)
    need(0 < d.val_fraction < 1, "data.val_fraction", "must be in (0, 1)", d.val_fraction)
    need(0 < d.test_fraction < 1, "data.test_fraction", "must be in (0, 1)", d.test_fraction)
    need(
        d.val_fraction + d.test_fraction < 0.9,
        "data.test_fraction",
        "plus data.val_fraction must leave at least 10% for training",
        d.val_fraction + d.test_fraction,
    )
    need(
        all(f >= 1 for f in m.conv_filters),
        "model.conv_filters",
        "must all be >= 1",
        m.conv_filters,
    )
    need(m.kernel_size >= 1, "model.kernel_size", "must be >= 1", m.kernel_size)
    need(m.pool_size >= 1, "model.pool_size", "must be >= 1", m.pool_size)
    need(m.dense_units >= 1, "model.dense_units", "must be >= 1", m.dense_units)
    need(0 <= m.dropout_rate < 1, "model.dropout_rate", "must be in [0, 1)", m.dropout_rate)
    need(m.l1_lambda >= 0, "model.l1_lambda", "must be >= 0", m.l1_lambda)
    need(m.l1_mode in L1_MODES, "model.l1_mode", f"must be one of {L1_MODES}", m.l1_mode)
    need(t.learning_rate > 0, "train.learning_rate", "must be > 0", t.learning_rate)
    need(t.batch_size >= 1, "train.batch_size", "must be >= 1", t.batch_size)
    need(t.epochs >= 1, "train.epochs", "must be >= 1", t.epochs)
    need(t.patience >= 0, "train.patience", "must be >= 0", t.patience)
    need(
        t.class_weight in CLASS_WEIGHT_CHOICES,
        "train.class_weight",
        f"must be one of {CLASS_WEIGHT_CHOICES}",
        t.class_weight,
    )
    need(t.seed >= 0, "train.seed", "must be >= 0", t.seed)
    parse_threshold_rule(t.threshold)  # raises ConfigError for a malformed rule


def config_from_dict(raw: dict[str, Any], base: Config | None = None) -> Config:
    """Build a validated Config from nested ``{section: {key: value}}`` on top of ``base``."""
    base = base or Config()
    sections = {name: dataclasses.asdict(getattr(base, name)) for name in SECTIONS}
    for section, values in raw.items():
        if section not in SECTIONS:
            raise ConfigError(f"unknown config section '{section}' (expected {list(SECTIONS)})")
        if not isinstance(values, dict):
            raise ConfigError(f"config section '{section}' must be a table")
        types_ = _field_types(SECTIONS[section])
        for key, value in values.items():
            if key not in types_:
                raise ConfigError(f"unknown config key '{section}.{key}'")
            sections[section][key] = _coerce(f"{section}.{key}", value, types_[key])
    config = Config(**{name: SECTIONS[name](**vals) for name, vals in sections.items()})
    _check_ranges(config)
    return config


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parse ``key=value`` (value in TOML syntax, bare words taken as strings)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value")
    key, raw = (part.strip() for part in text.split("=", 1))
    section, name = _section_of(key)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return section, name, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of nested ``raw`` with ``key=value`` overrides applied."""
    merged = {section: dict(values) for section, values in raw.items() if isinstance(values, dict)}
    merged.update({s: v for s, v in raw.items() if not isinstance(v, dict)})
    for text in overrides:
        section, name, value = parse_override(text)
        merged.setdefault(section, {})[name] = value
    return merged


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file, refusing missing files and syntax errors with the file's name."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file '{path}' is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config file '{path}' cannot be read: {exc.strerror}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the TOML file at ``path`` (if any), then ``overrides``."""
    raw = read_toml(path) if path is not None else {}
    return config_from_dict(apply_overrides(raw, overrides or []))


def config_to_dict(config: Config) -> dict[str, Any]:
    """Nested plain dict of ``config``; ``None`` values (meaning "automatic") are left out."""
    out: dict[str, Any] = {}
    for name in SECTIONS:
        values = dataclasses.asdict(getattr(config, name))
        out[name] = {
            k: list(v) if isinstance(v, tuple) else v for k, v in values.items() if v is not None
        }
    return out


def dumps_config(config: Config) -> str:
    """The config as TOML text."""
    return tomli_w.dumps(config_to_dict(config))


def replace(config: Config, **sections: dict[str, Any]) -> Config:
    """A copy of ``config`` with some fields changed: ``replace(c, model={"l1_lambda": 0})``."""
    return config_from_dict(sections, base=config)


def option_help() -> list[tuple[str, str, Any, str]]:
    """(section, key, default, type name) for every key: used to document keys in ``--help``."""
    rows = []
    for section, cls in SECTIONS.items():
        defaults = cls()
        for name, tp in _field_types(cls).items():
            rows.append((section, name, getattr(defaults, name), _type_name(tp)))
    return rows
