"""Config: defaults as specified, TOML and overrides, refusal of bad keys, types and ranges."""

from __future__ import annotations

from pathlib import Path

import pytest

from l1cnn.config import Config, config_from_dict, dumps_config, load_config, option_help
from l1cnn.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_specified_model() -> None:
    c = Config()
    assert c.model.conv_filters == (32, 64)
    assert c.model.kernel_size == 3 and c.model.pool_size == 2 and c.model.dense_units == 64
    assert c.model.dropout_rate == 0.5 and c.model.l1_lambda == 0.01
    assert c.train.learning_rate == 0.001 and c.train.batch_size == 32 and c.train.epochs == 100
    assert c.train.patience == 5 and c.train.early_stopping and c.train.restore_best_weights
    assert c.train.class_weight == "none"


def test_default_toml_equals_dataclass_defaults() -> None:
    assert load_config(ROOT / "configs" / "default.toml") == Config()


def test_smoke_toml_loads() -> None:
    assert load_config(ROOT / "configs" / "smoke.toml").train.epochs <= 2


def test_overrides_bare_and_dotted_keys() -> None:
    c = load_config(
        None,
        [
            "l1_lambda=0.001",
            "train.batch_size=8",
            "conv_filters=[4, 8]",
            "positive_class=dog",
            "threshold=0.3",
        ],
    )
    assert c.model.l1_lambda == 0.001 and c.train.batch_size == 8
    assert c.model.conv_filters == (4, 8)
    assert c.data.positive_class == "dog" and c.train.threshold == "0.3"


def test_int_accepted_for_float() -> None:
    assert load_config(None, ["l1_lambda=0"]).model.l1_lambda == 0.0


def test_round_trip_through_toml(tmp_path: Path) -> None:
    c = load_config(None, ["l1_lambda=0.002", "image_size=32", "seed=3"])
    path = tmp_path / "c.toml"
    path.write_text(dumps_config(c))
    assert load_config(path) == c


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("dropout_rate=1.5", "model.dropout_rate' must be in [0, 1)"),
        ("l1_lambda=-0.1", "model.l1_lambda' must be >= 0"),
        ("image_size=0", "data.image_size' must be >= 1"),
        ("channels=2", "data.channels' must be 1 or 3"),
        ("batch_size=0", "train.batch_size' must be >= 1"),
        ("learning_rate=0", "train.learning_rate' must be > 0"),
        ("class_weight=heavy", "train.class_weight' must be one of"),
        ("epochs=ten", "train.epochs' must be int"),
        ("early_stopping=3", "train.early_stopping' must be bool"),
        ("dropout_rate=true", "model.dropout_rate' must be float"),
        ("conv_filters=5", "model.conv_filters' must be a non-empty list"),
        ("nonsense=1", "unknown config key 'nonsense'"),
        ("model.batch_size=3", "unknown config key 'model.batch_size'"),
        ("no_equals_sign", "must look like key=value"),
    ],
)
def test_bad_overrides_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as info:
        load_config(None, [override])
    assert message in str(info.value)


def test_bad_toml_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nl1_lambda = ")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[model]\nl1_lambdaa = 0.1\n")
    with pytest.raises(ConfigError, match="unknown config key 'model.l1_lambdaa'"):
        load_config(unknown)
    section = tmp_path / "section.toml"
    section.write_text("[optimizer]\nname = 'adam'\n")
    with pytest.raises(ConfigError, match="unknown config section 'optimizer'"):
        load_config(section)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_fractions_must_leave_training_data() -> None:
    with pytest.raises(ConfigError, match="at least 10% for training"):
        config_from_dict({"data": {"val_fraction": 0.5, "test_fraction": 0.45}})


def test_option_help_lists_every_key() -> None:
    keys = {name for _, name, _, _ in option_help()}
    assert {
        "l1_lambda",
        "dropout_rate",
        "learning_rate",
        "batch_size",
        "epochs",
        "patience",
        "image_size",
        "channels",
        "positive_class",
        "class_weight",
        "seed",
    } <= keys
