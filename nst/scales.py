"""Coarse-to-fine: the image sizes (long side, px) a run optimizes at, smallest first.

Optimizing at a low resolution first settles the large structures cheaply; each later scale
starts from the previous result, upsampled (as in jcjohnson's multires recipe and crowsonkb's
style-transfer-pytorch).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

AUTO_MIN = 128  # the first scale of `scales: auto`


def pyramid(scales: tuple[int, ...] | str, size: int, min_size: int = AUTO_MIN) -> list[int]:
    """The sizes to run at, ending at `size`.

    () -> [size]; "auto" -> min_size, min_size*sqrt2, ... below size, then size; an explicit
    list -> itself, with `size` appended when it ends below it.
    """
    if scales == "auto":
        sizes, s = [], float(min_size)
        while round(s) < size:
            sizes.append(round(s))
            s *= math.sqrt(2)
        return [*sizes, size]
    if not scales:
        return [size]
    sizes = list(scales)
    if sizes[-1] > size:
        raise ValueError(f"scales end at {sizes[-1]} px, above the run's size {size}; the last scale is the size")
    return sizes if sizes[-1] == size else [*sizes, size]


def resize_long_side(image: Tensor, long_side: int) -> Tensor:
    """(B, C, H, W) resized so that max(H, W) == long_side, aspect kept (antialiased bicubic)."""
    h, w = image.shape[-2:]
    if max(h, w) == long_side:
        return image
    factor = long_side / max(h, w)
    target = (max(1, round(h * factor)), max(1, round(w * factor)))
    return resize(image, target)


def resize(image: Tensor, hw: tuple[int, int]) -> Tensor:
    if tuple(image.shape[-2:]) == hw:
        return image
    antialias = hw[0] < image.shape[-2]
    with torch.no_grad():
        return F.interpolate(image, size=hw, mode="bicubic", align_corners=False, antialias=antialias).clamp(0, 1)
