"""Which optimizer and lr schedule move the image: Adam, SGD or L-BFGS, constant, cosine or exponential.

Returned in the shape Lightning's `configure_optimizers` takes, so a new scale of the pyramid
can build a fresh pair over its larger image the same way.
"""

from __future__ import annotations

import torch
from torch import nn

from nst.config import OptimizerConfig


def make_optimizers(o: OptimizerConfig, image: nn.Parameter, iterations: int) -> torch.optim.Optimizer | dict:
    """The optimizer over `image` and, unless the schedule is constant, its per-step scheduler
    (a cosine schedule spans `iterations`, one scale's steps: each scale starts a new one)."""
    params = [image]
    if o.name == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(params, lr=o.lr)
    elif o.name == "sgd":
        optimizer = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum)
    else:
        # No early stop (tolerances 0): a run lasts exactly `iterations` steps.
        optimizer = torch.optim.LBFGS(
            params, lr=o.lr, max_iter=1, history_size=100, tolerance_grad=0.0, tolerance_change=0.0
        )
    if o.schedule == "constant":
        return optimizer
    if o.schedule == "cosine":
        scheduler: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=iterations
        )
    else:
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=o.gamma)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
