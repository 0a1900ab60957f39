"""When each image of a batch stops, decided on the device so that a step never waits for the host.

- Divergence: an image whose J is not finite keeps its last finite pixels and stops (its run fails,
  "diverged at step k"); the rest of its batch goes on.
- Convergence (`stop`): an image stops once its J fell by less than `rel_improvement` over its last
  `window` steps.

`Stops` holds that state per image as buffers of the module that owns it, so it moves with the
module; a checkpoint carries each image's share (`samples`), so a run resumed alone or in another
batch goes on exactly where it was.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from nst.config import TransferConfig

NEVER = -1  # diverged_at / stopped_at of an image that did not

#: The per-image buffers a checkpoint carries, besides the J history.
_SAVED = ("moving", "diverged_at", "diverged_value", "stopped_at", "stop_gain")


class DivergedError(RuntimeError):
    """A loss became NaN or infinite."""

    def __init__(self, step: int, value: float) -> None:
        super().__init__(f"diverged at step {step} (loss/total = {value})")
        self.step = step


class Stops(nn.Module):
    """Which images still move, and why the others stopped (buffers, one value per image)."""

    moving: Tensor
    diverged_at: Tensor
    diverged_value: Tensor
    stopped_at: Tensor
    stop_gain: Tensor
    history: Tensor
    windows: Tensor
    rel_improvement: Tensor

    def __init__(self, configs: Sequence[TransferConfig], device: torch.device) -> None:
        super().__init__()
        self.configs = list(configs)
        b, windows = len(self.configs), [c.stop.window for c in self.configs]
        self.register_buffer("moving", torch.ones(b, dtype=torch.bool, device=device), persistent=False)
        self.register_buffer("diverged_at", torch.full((b,), NEVER, device=device), persistent=False)
        self.register_buffer("diverged_value", torch.zeros(b, device=device), persistent=False)
        self.register_buffer("stopped_at", torch.full((b,), NEVER, device=device), persistent=False)
        self.register_buffer("stop_gain", torch.zeros(b, dtype=torch.float64, device=device), persistent=False)
        # J of the last max(window) + 1 steps, a ring per image, in float64 as Python's floats were.
        self.register_buffer("history", torch.zeros(max(windows) + 1, b, dtype=torch.float64, device=device),
                             persistent=False)
        self.register_buffer("windows", torch.tensor(windows, device=device), persistent=False)
        self.register_buffer("rel_improvement", torch.tensor([c.stop.rel_improvement for c in self.configs],
                                                             dtype=torch.float64, device=device), persistent=False)
        self.any_convergence = any(c.stop.rel_improvement for c in self.configs)
        self.seen = 0  # steps in the history since the current scale began

    def diverge(self, step: int, total: Tensor) -> Tensor:
        """Mark the images whose J is not finite at this step; returns which keep their update."""
        # 7 kernels, each launched every step (13 before): finite as |J| < inf (NaN and inf are not; torch's
        # isfinite takes 4), moving and not finite as one comparison of booleans, the records written in place.
        finite = total.abs() < math.inf
        newly = self.moving > finite
        self.diverged_at.masked_fill_(newly, step)
        torch.where(newly, total, self.diverged_value, out=self.diverged_value)
        keep = self.moving & finite
        self.moving.copy_(keep)
        return keep

    def converge(self, step: int, total: Tensor) -> None:
        """Stop the images whose J fell by less than rel_improvement over their last `window` steps."""
        if not self.any_convergence:
            return
        size = self.history.shape[0]
        self.history[self.seen % size] = total.double()
        self.seen += 1
        old = self.history.gather(0, ((self.seen - 1 - self.windows) % size).view(1, -1)).squeeze(0)
        new = total.double()
        gain = torch.where(old != 0, (old - new) / old.abs(), torch.zeros_like(old))
        ready = (self.windows < self.seen) & (self.rel_improvement > 0)
        converged = self.moving & ready & (gain < self.rel_improvement)
        self.stopped_at.copy_(torch.where(converged, step, self.stopped_at))
        self.stop_gain.copy_(torch.where(converged, gain, self.stop_gain))
        self.moving.copy_(self.moving & ~converged)

    def reasons(self) -> list[str | None]:
        """Why each image ended early (None: it did not); reads the device."""
        diverged, stopped = self.diverged_at.tolist(), self.stopped_at.tolist()
        values, gains = self.diverged_value.tolist(), self.stop_gain.tolist()
        reasons: list[str | None] = []
        for c, d, s, v, g in zip(self.configs, diverged, stopped, values, gains, strict=True):
            if d != NEVER:
                reasons.append(str(DivergedError(d, v)))
            elif s != NEVER:
                reasons.append(f"converged at step {s}: J fell {g:.2e} over the last {c.stop.window} steps "
                               f"(< rel_improvement {c.stop.rel_improvement:g})")
            else:
                reasons.append(None)
        return reasons

    def samples(self) -> list[dict[str, Any]]:
        """Each image's share of the state, as a checkpoint holds it."""
        values = [getattr(self, name).tolist() for name in _SAVED]
        histories = [h.clone() for h in self.history.T.cpu()]
        return [dict(zip(_SAVED, row, strict=True)) | {"history": h}
                for row, h in zip(zip(*values, strict=True), histories, strict=True)]

    def load(self, samples: Iterable[dict[str, Any]]) -> None:
        samples = list(samples)
        for name in _SAVED:
            getattr(self, name).copy_(torch.tensor([s[name] for s in samples]))
        self.history.copy_(torch.stack([s["history"] for s in samples], dim=1))
