"""Class-balanced sampling of the training split: the minority class drawn again, per epoch.

An alternative to ``train.class_weight = "balanced"`` (which weights the loss instead): with
``train.sampling = "oversample"`` every epoch sees all training images plus minority-class
images drawn with replacement until both classes are equally many, so batches are balanced on
average. The draw depends on (seed, epoch) alone, like the shuffle, so a resumed run sees the
same images in epoch k as an uninterrupted one.
"""

from __future__ import annotations

import numpy as np

_STREAM = 1  # keeps these draws apart from any other (seed, epoch) stream


def oversample_index(labels: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """Indices into ``labels``: every image once, then minority images until classes balance.

    Args:
        labels: 0/1 labels of the training split.
        seed: the run's seed.
        epoch: the epoch number (1-based).

    Returns:
        Positions (int64); just ``arange(n)`` when the classes are already equal or one is empty.
    """
    labels = np.asarray(labels).reshape(-1)
    every = np.arange(len(labels), dtype=np.int64)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels != 1)
    minority, majority = (pos, neg) if len(pos) < len(neg) else (neg, pos)
    if len(minority) == 0 or len(minority) == len(majority):
        return every
    rng = np.random.default_rng([seed, epoch, _STREAM])
    extra = rng.choice(minority, size=len(majority) - len(minority), replace=True)
    return np.concatenate([every, extra.astype(np.int64)])
