"""Training-time augmentation with Keras preprocessing layers, in the tf.data pipeline only.

The layers never enter the model, so a saved or exported model is the one specified. Each
epoch builds fresh layers seeded by (seed, epoch) and applies them batch by batch in order, so
epoch k sees the same augmented images in a resumed run as in an uninterrupted one.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from l1cnn import runs
from l1cnn.config import AugmentConfig

SAMPLES_FILE = "augment_samples.png"  # the grid of augmented training images, for the report
_STREAM = 2  # keeps these seeds apart from the shuffle's and the oversampling's


def enabled(config: AugmentConfig) -> bool:
    """Whether any augmentation is on."""
    return bool(
        config.horizontal_flip
        or config.vertical_flip
        or config.rotation
        or config.zoom
        or config.translation
        or config.contrast
        or config.brightness
    )


def epoch_seed(seed: int, epoch: int) -> int:
    """The layers' base seed in ``epoch``: a function of (seed, epoch) alone."""
    return int(np.random.SeedSequence([seed, epoch, _STREAM]).generate_state(1)[0] % (2**31 - 64))


def make_layers(config: AugmentConfig, seed: int) -> list[Any]:
    """The configured Keras preprocessing layers, each with its own seed (pixels in 0..255)."""
    import keras

    layers_ = keras.layers
    out: list[Any] = []
    mode = {
        (True, False): "horizontal",
        (False, True): "vertical",
        (True, True): "horizontal_and_vertical",
    }.get((config.horizontal_flip, config.vertical_flip))
    if mode:
        out.append(layers_.RandomFlip(mode, seed=seed))
    if config.rotation:
        out.append(layers_.RandomRotation(config.rotation, fill_mode="reflect", seed=seed + 1))
    if config.zoom:
        out.append(layers_.RandomZoom(config.zoom, fill_mode="reflect", seed=seed + 2))
    if config.translation:
        out.append(
            layers_.RandomTranslation(
                config.translation, config.translation, fill_mode="reflect", seed=seed + 3
            )
        )
    if config.contrast:
        out.append(layers_.RandomContrast(config.contrast, value_range=(0, 255), seed=seed + 4))
    if config.brightness:
        out.append(layers_.RandomBrightness(config.brightness, value_range=(0, 255), seed=seed + 5))
    return out


def augment_dataset(dataset: Any, config: AugmentConfig, seed: int, epoch: int) -> Any:
    """``dataset`` of (pixels, label, weight) batches with the pixels augmented for ``epoch``.

    One map call at a time (no parallel calls): the layers' random state advances batch by
    batch in order, which is what makes the epoch reproducible.
    """
    import tensorflow as tf

    if not enabled(config):
        return dataset
    layers_ = make_layers(config, epoch_seed(seed, epoch))

    def apply(x: Any, y: Any, w: Any) -> tuple[Any, Any, Any]:
        for layer in layers_:
            x = layer(x, training=True)
        return tf.clip_by_value(x, 0.0, 255.0), y, w

    return dataset.map(apply).prefetch(tf.data.AUTOTUNE)


def write_samples_grid(
    run_dir: str | Path, images: np.ndarray, config: AugmentConfig, seed: int, n: int = 6
) -> Path | None:
    """Draw ``n`` training images and four augmented versions of each into ``augment_samples.png``.

    Args:
        run_dir: the run folder.
        images: training pixels (N, H, W, C), 0..255.
        config: the augmentation settings.
        seed: the run's seed (the versions are those of epochs 1-4's first batch position).
        n: how many images (rows).

    Returns:
        The path written, or None when augmentation is off.
    """
    if not enabled(config):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    originals = np.asarray(images[:n], dtype=np.float32)
    versions = [originals]
    for epoch in range(1, 5):
        x = originals
        for layer in make_layers(config, epoch_seed(seed, epoch)):
            x = layer(x, training=True)
        versions.append(np.clip(np.asarray(x), 0, 255))
    rows, cols = len(originals), len(versions)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows), squeeze=False)
    for r in range(rows):
        for c in range(cols):
            img = versions[c][r].astype(np.uint8)
            ax = axes[r][c]
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("original" if c == 0 else f"augmented {c}", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    path = Path(run_dir) / SAMPLES_FILE
    runs.atomic_write_bytes(path, buf.getvalue())
    return path
