"""The epoch loop runs several steps per call; that must not change what training computes."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_images, tiny_config

from l1cnn import loop
from l1cnn.data import Split, make_tf_dataset
from l1cnn.model import build_model, compile_model

N = 72  # 4 batches of 16 and one of 8


def _model(mode: str) -> keras.Model:
    config = tiny_config(model={"l1_mode": mode})
    keras.utils.set_random_seed(5)
    return compile_model(build_model(config.model, (12, 12, 1)), config)


def _split() -> Split:
    x, y = make_images(N, seed=2)
    return Split(x, y, [str(i) for i in range(N)])


def _epoch_step_by_step(model: keras.Model, settings: loop.StepSettings, ds) -> np.ndarray:
    """The loop as it was before steps were batched: one call per step, floats summed."""
    step = loop.make_train_step(model, model.optimizer, settings)
    sums = np.zeros(5)
    for x, y, w in ds:
        loss, fit_loss, penalty, correct = step(x, y, w)
        b = int(y.shape[0])
        sums += [float(loss) * b, float(fit_loss) * b, float(penalty) * b, float(correct), b]
    return sums


@pytest.mark.parametrize("mode", ["penalty", "proximal"])
@pytest.mark.parametrize("per_call", [1, 3, 16])
def test_steps_per_call_train_exactly_like_one_step_per_call(mode: str, per_call: int) -> None:
    settings = loop.StepSettings(0.01, mode, 0.001)
    results = []
    for chunked in (False, True):
        model = _model(mode)
        for epoch in (1, 2):
            ds = make_tf_dataset(_split(), 16, shuffle=True, seed=epoch)
            if not chunked:
                sums = _epoch_step_by_step(model, settings, ds)
                continue
            run = loop.make_train_steps(model, model.optimizer, settings)
            iterator = iter(ds)
            total = tf.zeros([loop.N_SUMS], tf.float64)
            calls = 0
            while True:
                total, ran = run(iterator, tf.constant(per_call), total)
                calls += 1
                if int(ran) < per_call:
                    break
            sums = total.numpy()
            assert calls == 5 // per_call + 1
        results.append((sums, model.get_weights()))
    (sums_a, weights_a), (sums_b, weights_b) = results
    assert sums_b[4] == N
    np.testing.assert_array_equal(sums_a, sums_b)  # bit-identical epoch sums
    for a, b in zip(weights_a, weights_b, strict=True):
        np.testing.assert_array_equal(a, b)


def test_fit_with_few_steps_per_call_and_unknown_cardinality(monkeypatch) -> None:
    # Chunks that do not divide the epoch, and a dataset whose length tf.data cannot tell.
    settings = loop.StepSettings(0.01, "penalty", 0.001)
    split = _split()
    histories = []
    for per_call, unknown in ((16, False), (2, False), (2, True)):
        monkeypatch.setattr(loop, "STEPS_PER_CALL", per_call)
        model = _model("penalty")

        def train_ds(epoch: int, unknown: bool = unknown):
            ds = make_tf_dataset(split, 16, shuffle=True, seed=epoch)
            return ds.filter(lambda x, y, w: True) if unknown else ds

        result = loop.fit(
            model,
            loop.FitData(train_ds, make_tf_dataset(split, 64), split.labels),
            settings,
            epochs=2,
            early_stopping=None,
        )
        assert result.status == "completed"
        histories.append([{k: v for k, v in h.items() if k != "seconds"} for h in result.history])
    assert histories[0] == histories[1] == histories[2]
