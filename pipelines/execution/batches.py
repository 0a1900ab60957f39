"""Which points of a sweep optimize together as one batch, and how many at once.

Points share a batch when they differ only in what each image of a batch may have its own of
(nst.config.PER_SAMPLE: lr, schedule, alpha, beta, gamma, seed, init, stop, style layer weights;
and what each run logs: snapshots) and resume from the same step (`resume_steps`). Everything else
decides the shapes, the targets or the network (images, size, layers, optimizer, precision, scales,
device, checkpointing...) and splits batches. L-BFGS runs one image at a time (nst.optim says why).

`--batch N` caps a batch at N images; `auto` (the default) chooses by device:
- a GPU: as many as half its free memory holds, by the peak memory per pixel measured at 2048 px
  (BENCHMARKS-cuda.md, "Memory"), at most 64 (a batch that runs out of memory all the same runs
  again in halves: pipelines.execution.executors);
- the CPU: about four 128 px images' worth of pixels (4 × 128², so 16 at 64 px, 4 at 128, 1 from
  256). A CPU step is compute-bound: measured here per image, a batch runs 1.9× faster at 64 px
  (13 images), 1.1-1.2× at 128 px (2-4 images), and no faster at 256 px (0.98-1.11× the time of one
  image alone at 2-8 images; BENCHMARKS.md, "Batches").
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from nst.config import PER_SAMPLE, PER_SAMPLE_OPTIMIZER
from pipelines.config.runs import RunConfig, to_dict
from pipelines.errors import UserError
from pipelines.execution.inputs import resolve_device

T = TypeVar("T")
AUTO = "auto"
GPU_MAX = 64  # images per batch on a GPU under `auto`
CPU_PIXELS = 4 * 128 * 128  # pixels per batch on the CPU under `auto` (module docstring)
GPU_BYTES_PER_PIXEL = 9.0 * 2**30 / (2048 * 1748)  # peak GPU memory of one 2048 px image (fp32), per pixel


def batch_key(config: RunConfig) -> str:
    """What two runs must share to optimize as one batch, as a string: the config without what is
    per image (nst.config.shared_settings says the same; this is its fast form for big grids)."""
    plain, default = to_dict(config), _default()
    for name in (*PER_SAMPLE, "snapshots", "max_size"):  # what each run logs, and a guard, are per run too
        plain[name] = default[name]
    plain["optimizer"] = {**plain["optimizer"], **{k: default["optimizer"][k] for k in PER_SAMPLE_OPTIMIZER}}
    plain["layers"]["style"] = sorted(plain["layers"]["style"])  # which layers, not their weights
    return json.dumps(plain, sort_keys=True)


@functools.cache
def _default() -> dict:
    return to_dict(RunConfig(content="-", style="-"))


def parse_batch(text: str) -> int | str:
    """`--batch auto|N`."""
    if text == AUTO:
        return AUTO
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise UserError(f"--batch {text}: give auto or a whole number >= 1 (1 runs the points one at a time)")


def auto_size(config: RunConfig, device: str) -> int:
    """`--batch auto`'s cap for runs of this config on this device (module docstring)."""
    if device != "cuda":
        return max(1, CPU_PIXELS // config.size**2)
    free, _ = torch.cuda.mem_get_info()
    per_image = GPU_BYTES_PER_PIXEL * config.size**2  # the square bounds the image, whatever its aspect
    return max(1, min(GPU_MAX, int(0.5 * free / per_image)))


def here(config: RunConfig) -> int:
    """`--batch auto`'s cap for a batch run in this process: auto_size on the device the config's
    `device` is here."""
    return auto_size(config, resolve_device(config.device))


def plan(items: Sequence[T], config_of: Callable[[T], RunConfig], resume_step_of: Callable[[T], int],
         size: int | str, cap: Callable[[RunConfig], int] = here) -> list[list[T]]:
    """The items (points) in batches: those that can share one, in the order of their first item,
    at most `size` per batch (`auto`: `cap` of the batch's config; `here` unless the batches run
    elsewhere, pipelines.execution.ray_executor.batch_cap)."""
    groups: dict[object, list[T]] = {}
    for i, item in enumerate(items):
        config = config_of(item)
        alone = config.optimizer.name == "lbfgs"
        key = ("alone", i) if alone else (batch_key(config), resume_step_of(item))
        groups.setdefault(key, []).append(item)
    batches: list[list[T]] = []
    for members in groups.values():
        config = config_of(members[0])
        most = cap(config) if size == AUTO else int(size)
        batches += [members[i : i + most] for i in range(0, len(members), most)]
    return batches


def resume_steps(configs: Sequence[RunConfig], held: Sequence[set[int]]) -> list[int]:
    """The step each interrupted run resumes from, given the steps of the checkpoints it holds
    (pipelines.tracking.checkpoint_store keeps each run's last two). A batch's runs save their
    checkpoints in rounds, each after the round before (checkpoint_store.Checkpoints), so a batch
    killed between two saves leaves its runs at most one checkpoint apart: among the runs that
    could share a batch, those holding the earliest latest step resume from it together, exactly
    as they ran; the rest, from their own latest, by the same rule."""
    steps = [max(h, default=0) for h in held]
    by_key: dict[str, list[int]] = {}
    for i, config in enumerate(configs):
        if held[i]:
            by_key.setdefault(batch_key(config), []).append(i)
    for waiting in by_key.values():
        while waiting:
            meet = min(steps[i] for i in waiting)
            for i in [i for i in waiting if meet in held[i]]:
                steps[i] = meet
                waiting.remove(i)
    return steps
