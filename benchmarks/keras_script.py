"""The plain-Keras script a user would write by hand, which `l1cnn train` is measured against.

Loads the X-ray arrays, trains the specified network with ``model.fit`` for a fixed number of
epochs (RMSprop 1e-3, batch 32, L1 on every kernel), evaluates the test split and saves the
model: the same work as ``l1cnn train DATA --epochs N --early-stopping false``, without the
report, explanation, checks and records.

    python benchmarks/keras_script.py DATA.npz --epochs 8 --l1-lambda 0.001 --out model.keras
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--l1-lambda", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default="model.keras")
    args = parser.parse_args()

    import keras
    import numpy as np

    keras.utils.set_random_seed(args.seed)
    with np.load(args.data) as npz:
        x = {
            s: npz[f"{s}_images"].astype("float32")[..., None] / 255.0
            for s in ("train", "val", "test")
        }
        y = {s: npz[f"{s}_labels"].reshape(-1).astype("float32") for s in ("train", "val", "test")}
    reg = keras.regularizers.L1(args.l1_lambda)
    model = keras.Sequential(
        [
            keras.Input(x["train"].shape[1:]),
            keras.layers.Conv2D(32, 3, activation="relu", kernel_regularizer=reg),
            keras.layers.Conv2D(64, 3, activation="relu", kernel_regularizer=reg),
            keras.layers.MaxPooling2D(2),
            keras.layers.Dropout(0.5),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu", kernel_regularizer=reg),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(1, activation="sigmoid", kernel_regularizer=reg),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.RMSprop(0.001),
        loss="binary_crossentropy",
        metrics=["accuracy", keras.metrics.AUC(name="roc_auc")],
    )
    model.fit(
        x["train"],
        y["train"],
        batch_size=32,
        epochs=args.epochs,
        validation_data=(x["val"], y["val"]),
        verbose=0,
    )
    loss, accuracy, roc_auc = model.evaluate(x["test"], y["test"], batch_size=256, verbose=0)
    model.save(args.out)
    print(f"test loss {loss:.4f} accuracy {accuracy:.4f} roc_auc {roc_auc:.4f}")


if __name__ == "__main__":
    main()
