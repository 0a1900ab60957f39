"""Coarse-to-fine: images resized to the sizes a run optimizes at (nst.sizes), smallest first.

Optimizing at a low resolution first settles the large structures cheaply; each later scale
starts from the previous result, upsampled (as in jcjohnson's multires recipe and crowsonkb's
style-transfer-pytorch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def resize_long_side(image: Tensor, long_side: int) -> Tensor:
    """(B, C, H, W) resized so that max(H, W) == long_side, aspect kept (antialiased bicubic)."""
    h, w = image.shape[-2:]
    if max(h, w) == long_side:
        return image
    factor = long_side / max(h, w)
    target = (max(1, round(h * factor)), max(1, round(w * factor)))
    return resize(image, target)


def resize(image: Tensor, hw: tuple[int, ...]) -> Tensor:
    """(B, C, H, W) resized to `hw` = (H, W) (antialiased bicubic when it shrinks), clamped to 0-1."""
    if tuple(image.shape[-2:]) == hw:
        return image
    antialias = hw[0] < image.shape[-2]
    with torch.no_grad():
        return F.interpolate(image, size=hw, mode="bicubic", align_corners=False, antialias=antialias).clamp(0, 1)
