"""`average`: an exponential moving average of each image's iterates, debiased by its weight (the sum
of the decays' complements so far, as Adam debiases its moments). The module keeps the average and
its weight as buffers, so a checkpoint holds them; these functions are the arithmetic."""

from __future__ import annotations

import torch
from torch import Tensor


def update(average: Tensor, weight: Tensor, image: Tensor, keep: Tensor, decay: float) -> None:
    """One step, in place: the images in `keep` (B,) move their averages; stopped images keep theirs."""
    mix = torch.where(keep, 1 - decay, 0.0).to(image.dtype)
    average.mul_(1 - mix.view(-1, 1, 1, 1)).add_(mix.view(-1, 1, 1, 1) * image)
    weight.mul_(1 - mix).add_(mix)


def averaged(average: Tensor, weight: Tensor, image: Tensor) -> Tensor:
    """The debiased averages; an image with no step averaged yet is its iterate."""
    weight = weight.view(-1, 1, 1, 1)
    return torch.where(weight > 0, average / weight.clamp_min(1e-12), image)
