"""A step's losses and gradient captured once in a CUDA graph, then replayed: one launch per step.

On a GPU a small step is bound by launching its kernels one by one from Python, about 200 of them
(the VGG forward and backward, the Gram matrices, the losses, the update). Measured on an H100, the bare step
of 3 images at 128 px cost 5.9 ms launched op by op and 2.0 ms replayed from one graph; at 8 × 512
px, where the arithmetic dominates, 1.03× (BENCHMARKS-cuda.md, "CUDA graphs").

The graph holds the forward pass, the losses and the backward pass: 158 of a tracked step's 200
kernels (3 images, counted on the CPU as benchmarks.floor counts them; the other 42: the per-image
Adam's, the clamp's, the stop masks' and the metrics buffer's). The update stays outside, as
torch.optim's own eager code: each image's learning rate and schedule change from step to step,
which a graph would freeze.

What a replay relies on, and what the module keeps true (nst.module):
- every tensor the step reads has one address from one replay to the next: the image (updated in
  place), the targets and weights (buffers), `stops.moving` (updated in place);
- the step's outputs, the losses and the image's gradient, are the tensors the capture made; each
  replay overwrites them, so a reader copies what it keeps (BatchLog stacks each step's losses);
- nothing in it waits for the host (no `.item()`, no shapes that depend on values): L-BFGS (its
  first step reads the gradient back) and `style_loss: w2` (a batched eigensolver that checks its
  result on the host) run op by op;
- a new image (a pyramid's next scale, a checkpoint of another scale) or a move to another device
  captures again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")
WARMUP = 3  # eager calls before the capture, as torch's docs ask: lazy initialization happens there


def why_not_captured(device: torch.device, optimizer: str, style_loss: str) -> str | None:
    """None when a step of this kind can be captured on `device`, else why it runs op by op."""
    if device.type != "cuda":
        return "CUDA graphs need a CUDA device"
    if optimizer == "lbfgs":
        return "L-BFGS reads its first gradient back on the host"
    if style_loss == "w2":
        return "style_loss w2's eigensolver checks its result on the host"
    return None


class CapturedStep(Generic[T]):
    """`compute()` (losses and their backward into `image.grad`) captured on the current CUDA device;
    calling the object replays it and returns the capture's outputs, overwritten in place."""

    def __init__(self, compute: Callable[[], T], image: Tensor, warmup: int = WARMUP) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # off the default stream, as a capture requires
            for _ in range(warmup):
                image.grad = None
                compute()
        torch.cuda.current_stream().wait_stream(side)
        # No gradient before the capture: the captured backward then writes the gradient (rather than
        # adding to one), so a replay needs no zero_grad and leaves the new gradient in `self.grad`.
        image.grad = None
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: other threads (the metrics writer) may call CUDA meanwhile; only this one must not.
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.outputs = compute()
        self.image, self.grad = image, image.grad

    def __call__(self) -> T:
        self.graph.replay()
        self.image.grad = self.grad  # the optimizer reads it there; nothing may have set it to None
        return self.outputs
