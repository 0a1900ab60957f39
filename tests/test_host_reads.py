"""Nothing waits for the host every step: a tracked batch keeps its losses on the device and reads
them back in chunks, and decides divergence and convergence there. Counted, not timed: the device
reads of tracked batches of 100 and 300 steps, differenced, are far fewer than one a step.

On the GPU lane every synchronizing CUDA call is counted (torch.cuda.set_sync_debug_mode: a copy to the
host, `.item()`, `nonzero`...). On the CPU, where nothing waits for a device, the calls that would:
a tensor's `item`, `tolist`, `cpu`, `numpy`, `bool`, `float`, `int`, except optimizers (torch's, and
nst.optim's per-image Adam) reading their step counters, which they keep on the host so that reading
them waits for nothing.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import nst.optim
from pipelines.config.runs import run_config
from pipelines.execution.run import FINISHED, RunSpec, execute_batch
from tests.lane import ON_GPU

IMAGES = Path(__file__).resolve().parents[1] / "experiments" / "images"
READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")
# Their step counters are host tensors: torch's optimizers, and nst's per-image Adam that does as torch.optim.Adam.
OPTIMIZERS = (str(Path(torch.optim.__file__).parent), str(Path(nst.optim.__file__)))


def _batch(steps: int, store: str) -> None:
    """A tracked batch of two runs (snapshots at 0, checkpoints every 100 steps), both FINISHED."""
    specs = [RunSpec(run_config({"content": str(IMAGES / "grace_hopper.jpg"), "style": str(IMAGES / "starry_night.jpg"),
                                 "size": 32, "iterations": steps, "snapshots": [0],
                                 "optimizer": {"name": "adam", "lr": lr}})) for lr in (0.5, 1.0)]
    results = execute_batch(specs, tracking_uri=store, experiment=f"reads-{steps}", progress=False)
    assert [r.status for r in results] == [FINISHED, FINISHED], [r.error for r in results]


def _synchronizations(steps: int, store: str) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            _batch(steps, store)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def _reads_on_the_cpu(steps: int, store: str) -> int:
    count = 0

    def counted(read: Callable[..., Any]) -> Callable[..., Any]:
        def call(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            nonlocal count
            if not sys._getframe(1).f_code.co_filename.startswith(OPTIMIZERS):
                count += 1
            return read(self, *args, **kwargs)
        return call

    with pytest.MonkeyPatch.context() as patch:
        for name in READS:
            patch.setattr(torch.Tensor, name, counted(getattr(torch.Tensor, name)))
        _batch(steps, store)
    return count


def test_a_tracked_step_never_waits_for_the_host(make_store, tmp_path) -> None:
    reads = _synchronizations if ON_GPU else _reads_on_the_cpu
    short, long = (reads(steps, make_store(tmp_path / str(steps))) for steps in (100, 300))
    # Chunks of 50 steps, two checkpoints: a few dozen reads. One read a step would be 200 more.
    assert long - short < 100, f"{long - short} device reads in 200 steps ({short} in 100, {long} in 300)"
