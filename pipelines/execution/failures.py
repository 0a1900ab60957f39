"""What a failed run says: one line naming the cause and the way out, for the `nst.error` tag,
the sweep's table and the terminal.

Out of memory names the size, the precision and the memory the device has; a CUDA error says that
the GPU is lost to this process and how to pick up where the sweep stopped. Anything else is the
exception's type and message, as before.
"""

from __future__ import annotations

import gc

import torch

from nst.precision import resolve_precision
from nst.stopping import DivergedError
from pipelines.config.runs import RunConfig

GIB = 2**30
#: How describe_failure's out-of-memory lines begin (the GPU's, the CPU's): a smaller batch may fit
#: where this one did not (pipelines.execution.executors splits it).
OUT_OF_MEMORY = ("out of GPU memory", "out of memory")


def _cpu_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, RuntimeError | MemoryError) and (
        isinstance(exc, MemoryError) or "can't allocate memory" in str(exc))


def _gpu_memory(device: torch.device) -> str:
    try:
        free, total = torch.cuda.mem_get_info(device)
        name = torch.cuda.get_device_name(device)
    except (RuntimeError, ValueError, AssertionError):  # no GPU here (a forced fault), or its context is gone
        return "the GPU"
    return f"{name} ({total / GIB:.0f} GiB, {free / GIB:.1f} GiB free after the failure)"


def _ways_out(config: RunConfig, precision: str, where: str) -> str:
    # No smaller batch among them: a batch that runs out of memory runs again as smaller ones by itself
    # (pipelines.execution.executors), so a run that ends FAILED on it did not fit alone.
    ways = []
    if precision == "fp32":
        ways.append("precision: bf16")
    ways.append(f"a smaller size (e.g. size={max(16, round(config.size * 0.7))})")
    ways.append(f"fewer runs on this {where} at once (with Ray: a larger num_gpus or memory per batch)")
    return ", ".join(ways)


def describe_failure(exc: BaseException, config: RunConfig, device: str, batch: int = 1) -> str:
    """The error of a run (or of the batch it ran in) in one line; memory and device errors name
    what to do about them."""
    precision = resolve_precision(config.precision, device)
    what = f"{config.size} px ({precision}{f', a batch of {batch} images' if batch > 1 else ''})"
    if isinstance(exc, torch.OutOfMemoryError):
        return (f"{OUT_OF_MEMORY[0]} at {what} on {_gpu_memory(torch.device(device))}; "
                f"try {_ways_out(config, precision, 'GPU')}")
    if _cpu_out_of_memory(exc):
        return f"{OUT_OF_MEMORY[1]} at {what} on the CPU; try {_ways_out(config, precision, 'machine')}"
    if isinstance(exc, torch.AcceleratorError) or "CUDA error" in str(exc):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return (f"{first} — the GPU is unusable in this process: run the same command again "
                "(finished runs are skipped, this one resumes from its last checkpoint)")
    if isinstance(exc, DivergedError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"[:5000]


def out_of_memory(error: str | None) -> bool:
    """Whether a run ended on describe_failure's out of memory (of the GPU or of the machine)."""
    return error is not None and error.startswith(OUT_OF_MEMORY)


def release_memory(device: str) -> None:
    """Give a finished or failed run's GPU memory back before the next run: Lightning's objects hold
    each other in cycles that only the cyclic collector frees, and an out-of-memory run leaves
    cached blocks the next run may need."""
    if device != "cuda":
        return
    gc.collect()
    try:
        torch.cuda.empty_cache()
    except RuntimeError:  # a broken context: the next run says so itself
        pass
