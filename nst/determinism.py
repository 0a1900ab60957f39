"""Bit-identical results on a GPU: `deterministic()` switches torch to its deterministic kernels.

On the CPU a run is already bit-identical for a fixed number of threads. On a CUDA GPU some
kernels (cuDNN convolution algorithms that accumulate with atomics, cuBLAS with several
workspaces) may sum in another order from one call to the next; torch's deterministic mode picks
the kernels that do not, at a cost measured by `make bench` (BENCHMARKS-cuda.md, "Determinism").
The flags are process-wide, so they are set for one run and restored after it: a sweep whose
points differ in `deterministic` gets what each point asked for.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch

#: cuBLAS reproducibility needs a fixed workspace configuration (CUDA docs, "Results reproducibility").
CUBLAS_WORKSPACE = ":4096:8"


@contextmanager
def deterministic(enabled: bool = True) -> Iterator[None]:
    """Within the block, torch uses only deterministic algorithms (when `enabled`)."""
    if not enabled:
        yield
        return
    cudnn = torch.backends.cudnn
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             cudnn.deterministic, cudnn.benchmark)
    # Read by cuBLAS when torch creates its handle; left set, since the handle outlives the block.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(True)
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        cudnn.deterministic, cudnn.benchmark = saved[2], saved[3]
