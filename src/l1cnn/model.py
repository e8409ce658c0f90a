"""The network: ``build_model(ModelConfig, input_shape) -> keras.Model``; pure, no I/O.

Written with ``keras`` layers only, so it runs on any Keras 3 backend. Pixel scaling is the
first layer, so a saved model takes raw 0..255 pixels.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import keras
import numpy as np

from l1cnn.config import Config, ModelConfig
from l1cnn.errors import ConfigError

# |w| below this counts as "near zero": L1 pushed the weight there without making it exactly 0.
NEAR_ZERO = 1e-3


def smallest_input_size(config: ModelConfig) -> int:
    """The smallest image side the conv and pooling stack accepts."""
    return len(config.conv_filters) * (config.kernel_size - 1) + config.pool_size


def build_model(config: ModelConfig, input_shape: tuple[int, int, int]) -> keras.Model:
    """Build the (uncompiled) classifier for images of ``input_shape`` = (height, width, channels).

    Conv2D(32,3,relu) -> Conv2D(64,3,relu) -> MaxPool(2) -> Dropout -> Flatten -> Dense(64,relu)
    -> Dropout -> Dense(1,sigmoid) by default, with an L1 kernel regularizer on every Conv2D and
    Dense layer. In ``l1_mode="proximal"`` the layers carry no penalty; the training loop
    soft-thresholds their kernels instead (see ``l1cnn.train``). With ``precision =
    "mixed_bfloat16"`` every layer but the output computes in bfloat16 on float32 weights (Keras'
    mixed-precision policy, per layer, no global state); the output layer stays float32.
    """
    height, width, _channels = input_shape
    need = smallest_input_size(config)
    if min(height, width) < need:
        raise ConfigError(
            f"images of {height}x{width} are too small for this network (needs at least "
            f"{need}x{need}); raise data.image_size"
        )

    def regularizer() -> keras.regularizers.Regularizer | None:
        if config.l1_mode == "penalty" and config.l1_lambda > 0:
            return keras.regularizers.L1(config.l1_lambda)
        return None

    dtype = config.precision
    inputs = keras.Input(shape=input_shape, name="pixels")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale", dtype=dtype)(inputs)
    for i, filters in enumerate(config.conv_filters, start=1):
        x = keras.layers.Conv2D(
            filters,
            config.kernel_size,
            activation="relu",
            kernel_regularizer=regularizer(),
            name=f"conv{i}",
            dtype=dtype,
        )(x)
    x = keras.layers.MaxPooling2D(config.pool_size, name="pool", dtype=dtype)(x)
    x = keras.layers.Dropout(config.dropout_rate, name="dropout1", dtype=dtype)(x)
    x = keras.layers.Flatten(name="flatten", dtype=dtype)(x)
    x = keras.layers.Dense(
        config.dense_units,
        activation="relu",
        kernel_regularizer=regularizer(),
        name="dense",
        dtype=dtype,
    )(x)
    x = keras.layers.Dropout(config.dropout_rate, name="dropout2", dtype=dtype)(x)
    outputs = keras.layers.Dense(
        1, activation="sigmoid", kernel_regularizer=regularizer(), name="output", dtype="float32"
    )(x)
    return keras.Model(inputs, outputs, name="l1cnn")


def float32_twin(model: keras.Model, config: Config) -> keras.Model:
    """The same network and weights computing in float32, compiled like ``model``.

    A mixed-precision run trains in bfloat16 but saves, scores, explains and exports this twin
    (its weights are float32 already), so everything after training is the float32 model.
    """
    if config.model.precision == "float32":
        return model
    twin_config = dataclasses.replace(config.model, precision="float32")
    twin = compile_model(build_model(twin_config, tuple(model.input_shape[1:])), config)
    twin.set_weights(model.get_weights())
    return twin


def regularized_kernels(model: keras.Model) -> list[keras.Variable]:
    """The kernels L1 applies to: every Conv2D and Dense layer's kernel."""
    return [
        layer.kernel
        for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D | keras.layers.Dense)
    ]


def compile_model(model: keras.Model, config: Config) -> keras.Model:
    """Compile with the specified loss and optimizer (for our loop and ``model.fit`` users)."""
    model.compile(
        optimizer=keras.optimizers.RMSprop(learning_rate=config.train.learning_rate),
        loss=keras.losses.BinaryCrossentropy(),
        metrics=["accuracy"],
    )
    return model


@dataclass(frozen=True)
class KernelSparsity:
    """Counts of one regularized kernel's weights: all, exactly zero, and near zero."""

    layer: str
    weights: int
    zeros: int
    near_zero: int


def kernel_sparsity(model: keras.Model, near_zero: float = NEAR_ZERO) -> list[KernelSparsity]:
    """Per Conv2D/Dense layer, in model order: how many kernel weights are 0 and |w| < near_zero.

    The one count behind the study's sparsity columns, prune's record and the report.
    """
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D | keras.layers.Dense):
            w = keras.ops.convert_to_numpy(layer.kernel)
            out.append(
                KernelSparsity(
                    layer.name,
                    int(w.size),
                    int(np.sum(w == 0)),
                    int(np.sum(np.abs(w) < near_zero)),
                )
            )
    return out


class TemperatureSigmoid(keras.layers.Layer):
    """``sigmoid((h @ kernel + bias) / T)`` with the kernel and bias of the model's output layer.

    Temperature scaling inside the graph, on the exact logit (not one recovered from a rounded
    probability), so every export of the wrapped model gives the calibrated probability.
    """

    def __init__(self, output_layer: keras.layers.Dense, temperature: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.output_layer = output_layer
        self.temperature = float(temperature)

    def call(self, h):  # noqa: ANN001, ANN201 (Keras tensors)
        # The output layer computes in float32 even in a mixed-precision model: so does this.
        h = keras.ops.cast(h, self.output_layer.kernel.dtype)
        z = keras.ops.matmul(h, self.output_layer.kernel)
        if self.output_layer.use_bias:
            z = z + self.output_layer.bias
        return keras.ops.sigmoid(z / self.temperature)


def with_temperature(model: keras.Model, temperature: float) -> keras.Model:
    """The same network with its logit divided by ``temperature`` (shares the weights).

    ``temperature == 1`` returns ``model`` itself. The model must end in a one-unit sigmoid
    ``Dense`` (as :func:`build_model`'s does); the wrapper is for inference and export only
    and is never saved as a run's model.
    """
    if temperature == 1.0:
        return model
    last = model.layers[-1]
    if not (
        isinstance(last, keras.layers.Dense)
        and last.units == 1
        and keras.activations.serialize(last.activation) == "sigmoid"
    ):
        raise ConfigError(
            "temperature scaling needs a model that ends in a one-unit sigmoid Dense layer"
        )
    outputs = TemperatureSigmoid(last, temperature, name="temperature")(last.input)
    return keras.Model(model.input, outputs, name=f"{model.name}_calibrated")


def with_seeded_dropout(model: keras.Model, seed: int) -> keras.Model:
    """A copy of ``model`` sharing its weights, whose Dropout layers draw from ``seed``.

    For Monte Carlo dropout: called with ``training=True`` a fresh copy gives the same masks
    for the same seed, whatever the global random state. Apply it after
    :func:`with_temperature`, not before.
    """
    counter = iter(range(1_000_000))

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, keras.layers.Dropout):
            return keras.layers.Dropout(
                layer.rate, seed=seed + next(counter), name=layer.name, dtype=layer.dtype_policy
            )
        return layer  # the same layer object: weights shared

    return keras.models.clone_model(model, clone_function=clone)
