"""What a step must move and compute, whatever its kernels: the floor under its time.

Counted over one step of the bare batched loop (benchmarks.loops.bare_step) by two of torch's dispatch
modes: FlopCounterMode (torch's own count of the convolutions' and matrix products' FLOPs, forward
and backward) and `Traffic` below, which takes every operator that runs a kernel (views and
allocations run none) to read each of its tensors once and write each of its outputs once. Launched op
by op, no kernel does better than that: the floor is those bytes at the device's copy bandwidth plus
those FLOPs at its matmul peak, both measured here. A step far above its floor is bound by something
else (launches, the kernels' choice); a target below the floor needs fewer bytes (fused kernels, no
copies), not better kernels.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode, bmm_flop

from benchmarks.device import sync
from benchmarks.loops import bare_step, point_configs

#: Operators that allocate or read back but launch no kernel over the data (views are told by their schema).
NO_KERNEL = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "_unsafe_view",
             "_local_scalar_dense", "lift_fresh", "set_"}


class Traffic(TorchDispatchMode):
    """Kernels launched and bytes their tensors hold, in and out, per operator name."""

    def __init__(self) -> None:
        super().__init__()
        self.kernels: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if not func.is_view and name not in NO_KERNEL:
            self.kernels[name] += 1
            self.bytes[name] += sum(t.numel() * t.element_size() for t in tree_leaves((args, kwargs, out))
                                    if isinstance(t, torch.Tensor))
        return out


def _bmm_flops(a_shape: Any, b_shape: Any, *_: Any, **__: Any) -> int:
    """bmm's FLOPs whatever its overload: torch 2.11's formula takes a third positional argument for the
    output's shape, and so fails on `bmm(a, b, out_dtype=...)` (the bf16 Gram on a GPU, nst.losses),
    whose third is the dtype."""
    return bmm_flop(a_shape, b_shape)


@dataclass(frozen=True)
class Floor:
    """One step's kernels, the bytes they read and write, and its FLOPs."""

    kernels: int
    bytes: int
    flops: int
    heaviest: list[tuple[str, int]]  # (operator, bytes) most first

    def seconds(self, bandwidth: float, peak: float) -> tuple[float, float]:
        """(s moving its bytes at `bandwidth` B/s, s of its FLOPs at `peak` FLOP/s)."""
        return self.bytes / bandwidth, self.flops / peak


def step_floor(b: int, size: int, device: torch.device) -> Floor:
    """The floor of the bare batched step of b points at `size` px (after one step: the optimizer's state
    is made at the first)."""
    step = bare_step(point_configs(b), size, device)
    step()
    traffic = Traffic()
    with FlopCounterMode(display=False, custom_mapping={torch.ops.aten.bmm: _bmm_flops}) as flops, traffic:
        step()
    return Floor(sum(traffic.kernels.values()), sum(traffic.bytes.values()), flops.get_total_flops(),
                 traffic.bytes.most_common())


def copy_bandwidth(device: torch.device, repeats: int = 5) -> float:
    """B/s of the device copying a large tensor (each byte read once and written once)."""
    n = (1 << 30) if device.type == "cuda" else (1 << 27)
    source = torch.ones(n // 4, device=device)
    target = torch.empty_like(source)
    target.copy_(source)
    samples = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        target.copy_(source)
        sync(device)
        samples.append(time.perf_counter() - start)
    return 2 * n / min(samples)
