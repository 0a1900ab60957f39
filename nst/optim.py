"""What moves the pixels of a batch of images, each image with its own optimizer settings.

A batch is one image tensor (B, 3, H, W), one sample per run of a sweep, and every sample keeps
the update it would get alone:

- `SampleAdam` / `SampleSGD`: torch's own Adam / SGD update applied to each sample's slice with that
  sample's learning rate (and momentum), bit for bit what `torch.optim.Adam` and `torch.optim.SGD`
  do on that device. Adam: torch's multi-tensor update over all the samples at once, each one's
  learning rate in its step size (one launch per operation on a GPU). SGD: torch's functional API,
  one call per distinct (learning rate, momentum). Their state is kept per sample, shaped as a batch
  of one's, so a sample's share of a checkpoint is exactly the checkpoint of that run alone.
- `SampleSchedules`: each sample's learning-rate schedule (constant, cosine, exponential) is one of
  torch's own schedulers, stepped on the host: the learning rates are plain numbers, known before
  a step, so nothing waits for the device to learn them.
- L-BFGS is torch's, and runs one image at a time: it treats all its parameters as one vector (its
  curvature pairs, step lengths and dot products would mix the samples of a batch).
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import CosineAnnealingLR, ExponentialLR, LRScheduler
from torch.optim.sgd import sgd

from nst.config import LBFGS_ALONE, OptimizerConfig


def _groups(keys: Sequence[Any]) -> dict[Any, list[int]]:
    """Sample indices by their settings: one optimizer call per distinct setting."""
    out: dict[Any, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        out[key].append(i)
    return out


class _SampleOptimizer(torch.optim.Optimizer):
    """Per-sample state lists over one (B, ...) parameter; `param_groups[0]["lrs"]` holds each
    sample's learning rate (set from SampleSchedules before every step)."""

    def __init__(self, image: nn.Parameter, lrs: Sequence[float], **defaults: Any) -> None:
        super().__init__([image], {"lrs": list(lrs), **defaults})

    @property
    def image(self) -> Tensor:
        return self.param_groups[0]["params"][0]

    def _views(self, indices: list[int]) -> tuple[list[Tensor], list[Tensor]]:
        """Each sample's slice of the image and of its gradient, as a batch of one."""
        image, grad = self.image.detach(), self.image.grad
        assert grad is not None
        return [image[i : i + 1] for i in indices], [grad[i : i + 1] for i in indices]

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.image.grad is not None:
            with torch.no_grad():
                self._update()
        return loss

    def _update(self) -> None:
        raise NotImplementedError


class SampleAdam(_SampleOptimizer):
    """torch.optim.Adam (betas 0.9, 0.999, eps 1e-8, no weight decay) with a learning rate per sample."""

    def __init__(self, image: nn.Parameter, lrs: Sequence[float], betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        super().__init__(image, lrs, betas=betas, eps=eps)

    def _update(self) -> None:
        group = self.param_groups[0]
        state = self.state[self.image]
        params, grads = self._views(list(range(len(group["lrs"]))))
        if not state:  # as torch.optim.Adam initializes each parameter's state, once per sample
            state["step"] = [torch.tensor(0.0) for _ in params]
            state["exp_avg"] = [torch.zeros_like(v, memory_format=torch.preserve_format) for v in params]
            state["exp_avg_sq"] = [torch.zeros_like(v, memory_format=torch.preserve_format) for v in params]
        beta1, beta2 = group["betas"]
        steps, exp_avgs, exp_avg_sqs = state["step"], state["exp_avg"], state["exp_avg_sq"]
        # torch.optim.Adam's multi-tensor update (torch.optim.adam._multi_tensor_adam, not capturable, no
        # weight decay, amsgrad or maximize) over every sample at once, each sample's learning rate in its
        # step size: one launch per operation on a GPU whatever the learning rates (one call per distinct
        # learning rate before: 7 launches each), and on the CPU the same per-sample operations as
        # torch.optim.Adam's single-tensor update there (foreach's fallback), bit for bit on both.
        torch._foreach_add_(steps, torch.tensor(1.0), alpha=1.0)  # the steps live on the CPU, as torch's do
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
        bias_correction1 = [1 - beta1 ** step.item() for step in steps]
        bias_correction2 = [1 - beta2 ** step.item() for step in steps]
        step_sizes = [(lr / bc) * -1 for lr, bc in zip(group["lrs"], bias_correction1, strict=True)]
        denominators = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denominators, [bc**0.5 for bc in bias_correction2])
        torch._foreach_add_(denominators, group["eps"])
        torch._foreach_addcdiv_(params, exp_avgs, denominators, step_sizes)


class SampleSGD(_SampleOptimizer):
    """torch.optim.SGD (no dampening, weight decay or Nesterov) with a learning rate and momentum per sample."""

    def __init__(self, image: nn.Parameter, lrs: Sequence[float], momenta: Sequence[float]) -> None:
        super().__init__(image, lrs, momenta=list(momenta))

    def _update(self) -> None:
        group = self.param_groups[0]
        state = self.state[self.image]
        buffers: list[Tensor | None] = state.setdefault("momentum_buffer", [None] * len(group["lrs"]))
        for (lr, momentum), indices in _groups(list(zip(group["lrs"], group["momenta"], strict=True))).items():
            params, grads = self._views(indices)
            mine = [buffers[i] for i in indices]
            sgd(params, grads, mine, weight_decay=0.0, momentum=momentum, lr=lr, dampening=0.0,
                                nesterov=False, maximize=False)
            for i, buffer in zip(indices, mine, strict=True):  # sgd() creates the buffers at its first step
                buffers[i] = buffer


class SampleSchedules:
    """Each sample's learning rate, step by step, from torch's own scheduler for its schedule."""

    def __init__(self, configs: Sequence[OptimizerConfig], iterations: int) -> None:
        self.schedulers: list[LRScheduler | None] = []
        self.base = [c.lr for c in configs]
        for c in configs:
            if c.schedule == "constant":
                self.schedulers.append(None)
                continue
            # A stand-in optimizer: the scheduler only reads and writes its param group's lr.
            holder = torch.optim.SGD([torch.zeros(0, requires_grad=True)], lr=c.lr)
            if c.schedule == "cosine":  # spans one scale's steps: each scale starts a new one
                self.schedulers.append(CosineAnnealingLR(holder, T_max=iterations))
            else:
                self.schedulers.append(ExponentialLR(holder, gamma=c.gamma))

    @property
    def lrs(self) -> list[float]:
        """The learning rates of the coming step."""
        return [float(s.get_last_lr()[0]) if s is not None else lr
                for s, lr in zip(self.schedulers, self.base, strict=True)]

    def step(self) -> None:
        with warnings.catch_warnings():
            # The stand-in optimizers never step; torch warns about exactly that.
            warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*optimizer.step.*")
            for scheduler in self.schedulers:
                if scheduler is not None:
                    scheduler.step()

    def state_dicts(self) -> list[dict[str, Any] | None]:
        return [s.state_dict() if s is not None else None for s in self.schedulers]

    def load_state_dicts(self, states: Iterable[dict[str, Any] | None]) -> None:
        for scheduler, state in zip(self.schedulers, states, strict=True):
            if scheduler is not None and state is not None:
                scheduler.load_state_dict(state)


def make_optimizer(configs: Sequence[OptimizerConfig], image: nn.Parameter) -> torch.optim.Optimizer:
    """The optimizer over a batch's image (L-BFGS: a batch of one, no line search)."""
    name = configs[0].name
    lrs = [c.lr for c in configs]
    if name == "adam":
        return SampleAdam(image, lrs)
    if name == "sgd":
        return SampleSGD(image, lrs, [c.momentum for c in configs])
    if len(configs) != 1:
        raise ValueError(LBFGS_ALONE)
    # No early stop (tolerances 0): a run lasts exactly `iterations` steps.
    return torch.optim.LBFGS([image], lr=lrs[0], max_iter=1, history_size=100, tolerance_grad=0.0,
                             tolerance_change=0.0)
