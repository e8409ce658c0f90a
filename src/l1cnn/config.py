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
LR_SCHEDULES = ("constant", "plateau", "cosine")
SAMPLING_CHOICES = ("none", "oversample")
STRATEGIES = ("none", "mirrored", "multi-worker")  # l1cnn.distribute
L1_MODES = ("penalty", "proximal")
PRECISIONS = ("float32", "mixed_bfloat16")
# Threshold rules: a number, or chosen on validation by l1cnn.evaluate.choose_threshold.
THRESHOLD_RULES = ("f1", "youden", "recall=X", "precision=X")
# Probability calibration fitted on the validation split ("none": the model's own probabilities).
CALIBRATION_METHODS = ("none", "temperature")


def parse_abstain_rule(rule: str, key: str = "train.abstain") -> float | None:
    """Parse ``"none"`` or ``"coverage=X"`` (X in (0, 1)): the conformal coverage, or None.

    Raises:
        ConfigError: naming ``key`` and the accepted form.
    """
    text = str(rule).strip().lower()
    if text == "none":
        return None
    kind, sep, target = text.partition("=")
    try:
        value = float(target) if sep and kind.strip() == "coverage" else float("nan")
    except ValueError:
        value = float("nan")
    if not 0.0 < value < 1.0:  # NaN fails too
        raise ConfigError(
            f"'{key}' must be none or coverage=X with X in (0, 1), e.g. coverage=0.95; got {rule!r}"
        )
    return value


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


def _opt(default: Any = None, help: str = "", **more: Any) -> Any:
    """A field with its command-line help as metadata (see l1cnn.options)."""
    return field(default=default, metadata={"help": help, **more})


@dataclass(frozen=True)
class DataConfig:
    """How images are read, resized and split."""

    image_size: int | None = _opt(
        help="resize images to this side length; auto: 64 for folders, arrays keep theirs",
        none="auto",
    )
    channels: int | None = _opt(
        help="1 (gray) or 3 (colour); auto: 1 when every image is grayscale", none="auto"
    )
    positive_class: str | None = _opt(
        help="class name that counts as positive; auto: the second in sorted order", none="auto"
    )
    val_fraction: float = _opt(0.15, "validation share when the data has no validation split")
    test_fraction: float = _opt(0.15, "test share when the data has no test split")
    skip_bad_images: bool = _opt(False, "skip unreadable images (with a count) instead of failing")
    cache: str | None = _opt(
        help="folder to keep decoded class-folder pixels in, so epochs and reruns skip decoding",
        none="none, decode every epoch",
        metavar="DIR",
    )
    keep_decoded_mb: float = _opt(
        256.0,
        "keep class-folder pixels decoded by the first pass in memory when all of them fit in "
        "this many MB, so epochs do not decode again (0: decode every epoch)",
        metavar="MB",
    )
    # ---- grouped splits and cross-validation folds (l1cnn.data, l1cnn.cv) ----
    groups: str | None = _opt(
        help="CSV of image id,group (id as in split.json): a group never spans two splits/folds",
        none="none",
        metavar="FILE",
    )
    group_pattern: str | None = _opt(
        help="regex on file names; its first group (else the match) is the image's group, "
        r"e.g. 'patient(\d+)'",
        none="none",
        metavar="REGEX",
    )
    folds: int | None = _opt(
        help="cross-validation: K stratified folds over train+val (the test split stays out)",
        none="none",
        metavar="K",
    )
    fold: int | None = _opt(
        help="cross-validation: train on the other folds and test on fold I (1..K)",
        none="none",
        metavar="I",
    )
    # ---- end grouped splits and folds ----


@dataclass(frozen=True)
class ModelConfig:
    """The network: by default exactly the specified architecture."""

    conv_filters: tuple[int, ...] = _opt((32, 64), "filters of each Conv2D layer")
    kernel_size: int = _opt(3, "Conv2D kernel size")
    pool_size: int = _opt(2, "MaxPooling2D size")
    dense_units: int = _opt(64, "units of the hidden Dense layer")
    dropout_rate: float = _opt(0.5, "rate of both Dropout layers")
    l1_lambda: float = _opt(0.01, "L1 strength on every Conv2D and Dense kernel")
    l1_mode: str = _opt(
        "penalty", "penalty (L1 term in the loss) or proximal (soft-threshold: exact zeros)"
    )
    precision: str = _opt(
        "float32",
        "float32, or mixed_bfloat16 (bfloat16 compute, float32 weights and output: 2-3x faster "
        "training at photo sizes on CPUs with AVX512-BF16 or AMX; results differ slightly)",
        choices=PRECISIONS,
    )


@dataclass(frozen=True)
class TrainConfig:
    """Optimization, early stopping and reproducibility."""

    learning_rate: float = _opt(0.001, "RMSprop learning rate")
    batch_size: int = _opt(32, "images per training step")
    epochs: int = _opt(100, "maximum number of epochs")
    early_stopping: bool = _opt(
        True, "stop when val_loss stops improving (else train all epochs, keep last)"
    )
    patience: int = _opt(5, "epochs without val_loss improvement before stopping")
    restore_best_weights: bool = _opt(True, "keep the weights of the best epoch")
    class_weight: str = _opt(
        "none", "none, or balanced (weights the loss by inverse class frequency)"
    )
    seed: int = _opt(42, "seed for the split, initial weights, shuffling and dropout")
    threshold: str = _opt(
        "0.5", "0.5 (any number), f1, youden, recall=X or precision=X; chosen on validation"
    )
    min_delta: float = _opt(0.0, "smallest val_loss decrease that counts as improvement (as Keras)")
    lr_schedule: str = _opt(
        "constant",
        "constant (as specified), plateau (halve after 2 epochs without val_loss improvement) "
        "or cosine (per epoch, down towards 0)",
    )
    sampling: str = _opt("none", "none (as specified) or oversample (repeat the minority class)")
    stop_on_collapse: bool = _opt(
        True,
        "stop after `patience` epochs in a row of constant or chance-level validation "
        "predictions (status collapsed)",
    )
    tensorboard: bool = _opt(
        True, "write TensorBoard event files into the run folder's tensorboard/"
    )
    calibration: str = _opt(
        "none",
        "none (the model's own probabilities), or temperature (one scalar fitted on the "
        "validation log loss; predict, evaluate, serve and exports use it)",
        choices=CALIBRATION_METHODS,
    )
    abstain: str = _opt(
        "none",
        "none, or coverage=X: refer to a human each image whose split-conformal label set "
        "(calibrated on validation) is not one class",
        metavar="none|coverage=X",
    )
    # -- distributed training (l1cnn.distribute); batch_size stays the global batch
    strategy: str = _opt(
        "none",
        "none (one process, as specified), mirrored (every local GPU or logical device) or "
        "multi-worker (several processes/machines: TF_CONFIG or --workers)",
    )


@dataclass(frozen=True)
class AugmentConfig:
    """Random changes to training batches only (all off: the specified model)."""

    horizontal_flip: bool = _opt(False, "flip training images left-right at random")
    vertical_flip: bool = _opt(False, "flip training images upside down at random")
    rotation: float = _opt(0.0, "rotate by up to this fraction of a full turn, in [0, 0.5]")
    zoom: float = _opt(0.0, "zoom in or out by up to this fraction, in [0, 1)")
    translation: float = _opt(0.0, "shift by up to this fraction of the size, in [0, 1)")
    contrast: float = _opt(0.0, "change contrast by up to this factor, in [0, 1)")
    brightness: float = _opt(0.0, "add up to this fraction of 255 to brightness, in [0, 1]")


@dataclass(frozen=True)
class Config:
    """Everything a run needs besides the data path."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


# Options of the export, prune and serve commands: plain values here, so the command line can
# show and check them without importing TensorFlow, Keras or FastAPI.
EXPORT_FORMATS = ("savedmodel", "onnx", "litert")
QUANTIZE_MODES = ("float16", "int8")


@dataclass(frozen=True)
class ExportOptions:
    """What to export: the format and, for LiteRT, an optional post-training quantization."""

    format: str = _opt(
        "savedmodel",
        "savedmodel (TF Serving), onnx (onnxruntime) or litert (TFLite)",
        choices=EXPORT_FORMATS,
    )
    quantize: str | None = _opt(
        help="LiteRT post-training quantization (int8 calibrates on training images)",
        choices=QUANTIZE_MODES,
    )

    def __post_init__(self) -> None:
        if self.format not in EXPORT_FORMATS:
            raise ConfigError(
                f"export format must be one of {', '.join(EXPORT_FORMATS)}, got '{self.format}'"
            )
        if self.quantize is not None and self.quantize not in QUANTIZE_MODES:
            raise ConfigError(
                f"--quantize must be one of {', '.join(QUANTIZE_MODES)}, got '{self.quantize}'"
            )
        if self.quantize is not None and self.format != "litert":
            raise ConfigError(f"--quantize works with --format litert only, not {self.format}")

    @property
    def name(self) -> str:
        """Short name used for the default folder, e.g. ``litert-int8``."""
        return self.format + (f"-{self.quantize}" if self.quantize else "")


@dataclass(frozen=True)
class PruneOptions:
    """How to prune: a fraction per layer (``sparsity``) or a weight size (``min_magnitude``)."""

    sparsity: float | None = _opt(
        help="fraction of each layer's kernel weights to zero, e.g. 0.9", metavar="F"
    )
    min_magnitude: float | None = _opt(
        help="zero every kernel weight with |w| < M, e.g. 1e-3", metavar="M"
    )
    fine_tune_epochs: int = _opt(0, "fine-tune N epochs with the zeros held fixed", metavar="N")

    def __post_init__(self) -> None:
        if (self.sparsity is None) == (self.min_magnitude is None):
            raise ConfigError("give exactly one of --sparsity or --min-magnitude")
        if self.sparsity is not None and not 0 <= self.sparsity < 1:
            raise ConfigError(f"--sparsity must be in [0, 1), got {self.sparsity}")
        if self.min_magnitude is not None and not self.min_magnitude > 0:
            raise ConfigError(f"--min-magnitude must be > 0, got {self.min_magnitude}")
        if self.fine_tune_epochs < 0:
            raise ConfigError(f"--fine-tune-epochs must be >= 0, got {self.fine_tune_epochs}")

    @property
    def name(self) -> str:
        """Short name for the default run folder, e.g. ``s0.9`` or ``m0.001``."""
        if self.sparsity is not None:
            return f"s{self.sparsity:g}"
        return f"m{self.min_magnitude:g}"


@dataclass(frozen=True)
class ServeLimits:
    """What one request may hold; anything beyond is refused with 413."""

    max_request_bytes: int = _opt(
        8 * 1024 * 1024, "largest request body accepted (larger: 413)", metavar="N"
    )
    max_image_pixels: int = _opt(
        4096 * 4096,
        "largest uploaded image, width*height, before resizing (larger: 413)",
        metavar="N",
    )
    max_batch: int = _opt(
        64, "most images (uploaded files or JSON instances) per request (more: 413)", metavar="N"
    )

    def __post_init__(self) -> None:
        for name, value in dataclasses.asdict(self).items():
            if value < 1:
                raise ConfigError(f"serve limit {name} must be >= 1, got {value}")


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "augment": AugmentConfig,
}


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
    need(d.keep_decoded_mb >= 0, "data.keep_decoded_mb", "must be >= 0", d.keep_decoded_mb)
    need(0 < d.test_fraction < 1, "data.test_fraction", "must be in (0, 1)", d.test_fraction)
    need(
        d.val_fraction + d.test_fraction < 0.9,
        "data.test_fraction",
        "plus data.val_fraction must leave at least 10% for training",
        d.val_fraction + d.test_fraction,
    )
    _check_grouping(d)
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
    need(m.precision in PRECISIONS, "model.precision", f"must be one of {PRECISIONS}", m.precision)
    need(t.learning_rate > 0, "train.learning_rate", "must be > 0", t.learning_rate)
    need(t.batch_size >= 1, "train.batch_size", "must be >= 1", t.batch_size)
    need(t.epochs >= 1, "train.epochs", "must be >= 1", t.epochs)
    need(t.patience >= 0, "train.patience", "must be >= 0", t.patience)
    need(t.min_delta >= 0, "train.min_delta", "must be >= 0", t.min_delta)
    need(
        t.lr_schedule in LR_SCHEDULES,
        "train.lr_schedule",
        f"must be one of {LR_SCHEDULES}",
        t.lr_schedule,
    )
    need(
        t.sampling in SAMPLING_CHOICES,
        "train.sampling",
        f"must be one of {SAMPLING_CHOICES}",
        t.sampling,
    )
    need(
        t.class_weight in CLASS_WEIGHT_CHOICES,
        "train.class_weight",
        f"must be one of {CLASS_WEIGHT_CHOICES}",
        t.class_weight,
    )
    need(t.seed >= 0, "train.seed", "must be >= 0", t.seed)
    need(t.strategy in STRATEGIES, "train.strategy", f"must be one of {STRATEGIES}", t.strategy)
    parse_threshold_rule(t.threshold)  # raises ConfigError for a malformed rule
    need(
        t.calibration in CALIBRATION_METHODS,
        "train.calibration",
        f"must be one of {CALIBRATION_METHODS}",
        t.calibration,
    )
    parse_abstain_rule(t.abstain)
    a = config.augment
    need(0 <= a.rotation <= 0.5, "augment.rotation", "must be in [0, 0.5]", a.rotation)
    for key in ("zoom", "translation", "contrast"):
        value = getattr(a, key)
        need(0 <= value < 1, f"augment.{key}", "must be in [0, 1)", value)
    need(0 <= a.brightness <= 1, "augment.brightness", "must be in [0, 1]", a.brightness)


def _check_grouping(d: DataConfig) -> None:
    """Refuse contradictory grouping or fold keys (l1cnn.data checks them against the data)."""
    import re

    if d.groups is not None and d.group_pattern is not None:
        raise ConfigError("give data.groups or data.group_pattern, not both")
    if d.group_pattern is not None:
        try:
            re.compile(d.group_pattern)
        except re.error as exc:
            raise ConfigError(
                f"config key 'data.group_pattern' is not a valid regular expression: {exc}"
            ) from None
    if d.folds is not None and d.folds < 2:
        raise ConfigError(f"config key 'data.folds' (--folds) must be >= 2, got {d.folds}")
    if d.fold is not None and d.folds is None:
        raise ConfigError("config key 'data.fold' needs data.folds (the number of folds)")
    if d.folds is not None and d.fold is not None and not 1 <= d.fold <= d.folds:
        raise ConfigError(f"config key 'data.fold' must be in 1..{d.folds}, got {d.fold}")


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
