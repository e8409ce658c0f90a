"""Figures for every page: matplotlib's object API (``Figure``, Agg when saved), never pyplot.

No global state: each figure is its own object, saved to PNG bytes and dropped. matplotlib is
imported inside the functions that draw, so importing ``l1cnn.reporting`` does not import it.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 110
NEG_COLOR, POS_COLOR, VAL_COLOR, TRAIN_COLOR = "#4C78A8", "#E45756", "#F58518", "#4C78A8"
COLORS = ["#4C78A8", "#E45756", "#54A24B", "#F58518", "#B279A2", "#72B7B2", "#9D755D", "#FF9DA6"]
TILE = 120  # pixels per image side in the mosaics (nearest-neighbour upscaling)
LABEL_ROWS = 34  # pixels of caption space above each mosaic row
GAP = 6  # pixels between mosaic tiles


@dataclass
class Plot:
    """One figure: file name, title, one-sentence caption, PNG bytes."""

    name: str
    title: str
    caption: str
    png: bytes = field(repr=False)


def new_figure(
    width: float = 5.2, height: float = 3.8, layout: str | None = "constrained"
) -> Figure:
    """A fresh figure of ``width`` x ``height`` inches, owned by nobody but the caller."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout=layout)


def png_bytes(fig: Figure, dpi: int = DPI) -> bytes:
    """The figure as PNG bytes on a white background."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    return buf.getvalue()


def style_axes(ax: Any) -> None:
    """The house style: light grid behind the data, no top and right spines."""
    ax.grid(True, color="#e6e6e6", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def integer_ticks(ax: Any) -> None:
    """Whole numbers only on the x axis (epochs)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def colormap(name: str) -> Any:
    """A registered matplotlib colormap by name (no pyplot)."""
    from matplotlib import colormaps

    return colormaps[name]


def rgb(image: np.ndarray) -> np.ndarray:
    """Raw pixels (H, W, 1 or 3) as float RGB in [0, 1]."""
    image = np.clip(np.asarray(image, dtype=np.float64), 0, 255) / 255.0
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def heat_overlay(image_rgb: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """Blend a [0, 1] map over an RGB image with the inferno colormap."""
    colored = colormap("inferno")(np.clip(heat, 0, 1))[..., :3]
    return 0.5 * image_rgb + 0.5 * colored


def _mosaic(tiles: list[np.ndarray], cols: int, factor: int) -> np.ndarray:
    """Tiles (RGB, same size) upscaled and laid out in rows, with caption space above each."""
    h, w = tiles[0].shape[:2]
    side_h, side_w = h * factor, w * factor
    rows = math.ceil(len(tiles) / cols)
    out = np.ones((rows * (side_h + LABEL_ROWS + GAP), cols * (side_w + GAP) - GAP, 3))
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        big = np.repeat(np.repeat(tile, factor, axis=0), factor, axis=1)
        top, left = r * (side_h + LABEL_ROWS + GAP) + LABEL_ROWS, c * (side_w + GAP)
        out[top : top + side_h, left : left + side_w] = big
    return out


def mosaic_figure(tiles: list[np.ndarray], cols: int, labels: list[tuple[str, str]]) -> Figure:
    """One imshow of the whole mosaic (far faster than one axes per image), labels on top.

    Args:
        tiles: RGB images of one size.
        cols: tiles per row.
        labels: (text, color) above each tile, in tile order.
    """
    from matplotlib.figure import Figure

    h, w = tiles[0].shape[:2]
    factor = max(1, TILE // max(h, w))
    grid = _mosaic(tiles, cols, factor)
    fig = Figure(figsize=(grid.shape[1] / DPI, grid.shape[0] / DPI), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(grid, interpolation="nearest")
    ax.axis("off")
    for k, (text, color) in enumerate(labels):
        r, c = divmod(k, cols)
        x = c * (w * factor + GAP) + w * factor / 2
        y = r * (h * factor + LABEL_ROWS + GAP) + LABEL_ROWS - 3
        ax.text(x, y, text, ha="center", va="bottom", fontsize=8.5, color=color, linespacing=1.1)
    return fig


def message_figure(text: str, width: float = 4, height: float = 1) -> Figure:
    """A small figure that only says ``text`` (in place of an empty plot)."""
    fig = new_figure(width, height)
    ax = fig.subplots()
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center")
    return fig
