"""The built and compiled model matches the specification, value by value."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from l1cnn import build_model
from l1cnn.config import Config, ModelConfig
from l1cnn.errors import ConfigError
from l1cnn.loop import make_early_stopping
from l1cnn.losses import data_loss, l1_penalty
from l1cnn.model import compile_model, regularized_kernels


def _layers(model: keras.Model, cls: type) -> list:
    return [layer for layer in model.layers if type(layer) is cls]


def test_architecture_matches_specification() -> None:
    config = Config()
    model = compile_model(build_model(config.model, (28, 28, 1)), config)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == [
        "InputLayer",
        "Rescaling",
        "Conv2D",
        "Conv2D",
        "MaxPooling2D",
        "Dropout",
        "Flatten",
        "Dense",
        "Dropout",
        "Dense",
    ]
    conv1, conv2 = _layers(model, keras.layers.Conv2D)
    assert (conv1.filters, conv1.kernel_size, conv1.activation.__name__) == (32, (3, 3), "relu")
    assert (conv2.filters, conv2.kernel_size, conv2.activation.__name__) == (64, (3, 3), "relu")
    pool = _layers(model, keras.layers.MaxPooling2D)[0]
    assert pool.pool_size == (2, 2)
    assert [d.rate for d in _layers(model, keras.layers.Dropout)] == [0.5, 0.5]
    dense, out = _layers(model, keras.layers.Dense)
    assert (dense.units, dense.activation.__name__) == (64, "relu")
    assert (out.units, out.activation.__name__) == (1, "sigmoid")
    rescale = _layers(model, keras.layers.Rescaling)[0]
    assert rescale.scale == pytest.approx(1 / 255)
    for layer in (conv1, conv2, dense, out):
        reg = layer.kernel_regularizer
        assert isinstance(reg, keras.regularizers.L1)
        assert float(reg.l1) == pytest.approx(0.01)
    assert model.output_shape == (None, 1)


def test_compiled_loss_optimizer_and_early_stopping() -> None:
    config = Config()
    model = compile_model(build_model(config.model, (28, 28, 1)), config)
    assert isinstance(model.optimizer, keras.optimizers.RMSprop)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.001)
    assert isinstance(model.loss, keras.losses.BinaryCrossentropy)
    stopper = make_early_stopping(config)
    assert stopper is not None
    assert (stopper.monitor, stopper.patience, stopper.restore_best_weights) == (
        "val_loss",
        5,
        True,
    )
    assert (config.train.batch_size, config.train.epochs) == (32, 100)


def test_no_early_stopping_when_disabled() -> None:
    config = Config(train=Config().train.__class__(early_stopping=False))
    assert make_early_stopping(config) is None


def test_model_takes_raw_pixels() -> None:
    model = build_model(ModelConfig(conv_filters=(4, 8), dense_units=8), (12, 12, 3))
    probs = model(np.full((2, 12, 12, 3), 255, np.float32)).numpy()
    assert probs.shape == (2, 1) and np.all((probs > 0) & (probs < 1))


def test_our_l1_penalty_equals_keras_regularizer_losses() -> None:
    model = build_model(
        ModelConfig(conv_filters=(4, 8), dense_units=8, l1_lambda=0.01), (12, 12, 1)
    )
    ours = float(l1_penalty(regularized_kernels(model), 0.01))
    assert ours == pytest.approx(float(sum(model.losses)), rel=1e-5)
    assert len(regularized_kernels(model)) == 4


def test_proximal_mode_has_no_penalty_in_layers() -> None:
    model = build_model(ModelConfig(l1_mode="proximal"), (12, 12, 1))
    assert all(
        layer.kernel_regularizer is None
        for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D | keras.layers.Dense)
    )


def test_data_loss_matches_keras_bce() -> None:
    y = np.array([0, 1, 1, 0], np.float32)
    p = np.array([0.1, 0.8, 0.6, 0.3], np.float32)
    expected = float(keras.losses.BinaryCrossentropy()(y[:, None], p[:, None]))
    assert float(data_loss(y, p)) == pytest.approx(expected, rel=1e-5)
    weighted = float(data_loss(y, p, np.array([2, 0, 0, 0], np.float32)))
    assert weighted == pytest.approx(2 * -np.log(0.9) / 4, rel=1e-4)


def test_too_small_images_refused() -> None:
    with pytest.raises(ConfigError, match="too small for this network"):
        build_model(ModelConfig(), (5, 5, 1))


def test_soft_threshold_zeros_are_positive() -> None:
    from l1cnn.losses import soft_threshold

    model = build_model(ModelConfig(conv_filters=(4, 8), dense_units=8), (12, 12, 1))
    kernels = regularized_kernels(model)
    soft_threshold(kernels, 0.05)
    values = np.concatenate([np.asarray(k.numpy()).ravel() for k in kernels])
    zeros = values[values == 0]
    assert zeros.size > 10 and not np.any(np.signbit(zeros))  # +0.0, never -0.0
