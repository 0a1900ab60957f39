"""The loops the batch benchmarks time (benchmarks.batch, .graphs, .writers, .opening, .startup,
.step_profile): a grid's points as configs, the bare batched loop (no Lightning, no MLflow) and its
step, the same step replayed from a CUDA graph, tracked batches and whole sweeps into fresh stores.
A tracked batch or sweep whose runs did not all FINISH stops the bench with the first run's error."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import torch

from benchmarks.bench import CONTENT, STYLE, Timing, _pair, _timing
from benchmarks.device import sync
from benchmarks.stores import new_store
from nst.config import OptimizerConfig, TransferConfig
from nst.module import StyleTransfer
from nst.optim import make_optimizer
from nst.targets import build_backbone
from pipelines.config.grid import load_experiment
from pipelines.execution.run import FINISHED, RunSpec, execute_batch
from pipelines.execution.sweep import SweepResult, run_experiment

ROOT = Path(__file__).resolve().parents[1]


def point_configs(n: int, **keys: Any) -> list[TransferConfig]:
    """n points of a grid: each its own lr (and beta), as a sweep's batch would hold."""
    return [TransferConfig(optimizer=OptimizerConfig(lr=0.1 * (1 + i % 4)), beta=40.0 / (1 + i // 4 % 4), **keys)
            for i in range(n)]


def batch_module(configs: list[TransferConfig], size: int, device: torch.device) -> StyleTransfer:
    content, style = _pair(size)
    return StyleTransfer(content.to(device), style.to(device), configs,
                         backbone=build_backbone(configs[0]).to(device))


def bare_step(configs: list[TransferConfig], size: int, device: torch.device,
              memory_format: torch.memory_format | None = None) -> Callable[[], torch.Tensor]:
    """One step of the bare batched loop (losses, backward, per-image Adam, clamp) as a function
    returning the batch's summed J; each call moves the same images on. `memory_format`: the images',
    targets' and VGG's (torch.channels_last: NHWC images too); None: nst's own layouts (NHWC weights,
    NCHW images), what its runs step. (Converting to torch.contiguous_format would undo the VGG's NHWC
    weights: from 9af61a2 until this was fixed, every bare loop timed NCHW weights, 1.1-1.3× slower on
    this CPU, while the tracked runs it was compared with kept NHWC.)"""
    module = batch_module(configs, size, device)
    if memory_format is not None:
        module = module.to(memory_format=memory_format)
    optimizer = make_optimizer([c.optimizer for c in configs], module.image)

    def step() -> torch.Tensor:
        optimizer.zero_grad()
        loss = module.losses()["loss/total"].sum()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            module.image.clamp_(0, 255)
        return loss.detach()

    return step


def batch_loop(configs: list[TransferConfig], size: int, steps: int, device: torch.device,
               warmup: int = 2) -> Timing:
    """s/step of the bare batched loop (bare_step)."""
    step = bare_step(configs, size, device)
    samples = []
    for i in range(warmup + steps):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        if i >= warmup:
            samples.append(time.perf_counter() - start)
    return _timing(samples)


def graphed_loop(configs: list[TransferConfig], size: int, steps: int, device: torch.device) -> Timing:
    """The same step replayed from a CUDA graph: one launch per step instead of one per kernel.
    Adam with one lr, on the device (capturable)."""
    module = batch_module(configs, size, device)
    optimizer = torch.optim.Adam([module.image], lr=torch.tensor(0.1, device=device), capturable=True)

    def step() -> None:
        module.losses()["loss/total"].sum().backward()
        optimizer.step()
        with torch.no_grad():
            module.image.clamp_(0, 255)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
        for _ in range(3):
            optimizer.zero_grad(set_to_none=False)
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)  # the captured backward writes the gradient, so replays need no zeroing
    with torch.cuda.graph(graph):
        step()
    samples = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        graph.replay()
        sync(device)
        samples.append(time.perf_counter() - start)
    return _timing(samples)


def tracked_batch(configs: list[TransferConfig], size: int, steps: int, device: torch.device,
                  server: str | None = None, cuda_graph: bool = False, writer: str = "auto") -> tuple[float, float]:
    """(marginal s/step of a tracked batch: runs of `steps` and 3x`steps`, differenced; CPU seconds per
    step of its writer (`writer`: a thread, a process, or this device's choice), all runs' rows, in the
    longer run), into fresh SQLite stores or `server`."""
    seconds, cpu = [], 0.0
    # Into a server, a first batch more: its first requests (a new experiment, cold workers) are slow.
    for n in (steps, steps, 3 * steps) if server else (steps, 3 * steps):
        results = tracked_fit(configs, size, n, device, server, cuda_graph, writer)
        seconds.append(results[0].seconds)
        cpu = sum(r.writer_seconds for r in results) / n
    return (seconds[-1] - seconds[-2]) / (2 * steps), cpu


def tracked_fit(configs: list[TransferConfig], size: int, steps: int, device: torch.device,
                server: str | None = None, cuda_graph: bool = False, writer: str = "auto") -> list:  # [RunResult]
    """One tracked batch of `steps` steps (snapshots at 0 and halfway, checkpoints every 100 steps) into
    a fresh SQLite store or `server`; every run FINISHED, or the bench stops with the error."""
    with tempfile.TemporaryDirectory() as tmp:
        specs = run_specs(configs, size, steps, device, cuda_graph=cuda_graph)
        results = execute_batch(specs, tracking_uri=server or new_store(tmp),
                                experiment=f"bench-{steps}", progress=False, writer=writer)
    require_all(results, f"the tracked batch of {len(configs)} at {size} px")
    return results


def run_specs(configs: list[TransferConfig], size: int, steps: int, device: torch.device, **keys: object
           ) -> list[RunSpec]:
    """One tracked run per config of `configs` (what varies in a batch), the rest from run_config_for."""
    return [RunSpec(replace(run_config_for(size, steps, device), alpha=c.alpha, beta=c.beta, optimizer=c.optimizer,
                            **keys)) for c in configs]


def run_config_for(size: int, steps: int, device: torch.device):  # -> RunConfig
    from pipelines.config.runs import run_config

    return run_config({"content": str(CONTENT), "style": str(STYLE), "size": size, "iterations": steps,
                       "snapshots": [0, steps // 2], "checkpoint_every": 100, "device": device.type})


def require_all(results: list, what: str) -> None:
    failed = [r for r in results if r.status != FINISHED]
    if failed:
        raise SystemExit(f"bench: {what}: {len(failed)} run(s) ended {failed[0].status}, not timed: "
                         f"{failed[0].error}")


class Swept(NamedTuple):
    wall: float  # seconds, the whole sweep
    fit: float  # seconds of optimization, its batches' fits summed
    j: dict[str, float]  # final J by point
    fit_times: dict[str, float]  # of `fit`, the loops' tracking work by part (pipelines.tracking.fit_times)


def sweep(path: Path, overrides: dict[str, object], batch: int | str, first: int | None = None) -> Swept:
    """A sweep into a fresh store, timed; `first`: only the first points of the file."""
    experiment = load_experiment(path, overrides)
    if first is not None:
        experiment = replace(experiment, points=experiment.points[:first])
    with tempfile.TemporaryDirectory() as tmp:
        uri = new_store(tmp)  # made before the clock starts, as a user's store is
        start = time.perf_counter()
        done: SweepResult = run_experiment(experiment, tracking_uri=uri, progress=False,
                                           say=lambda _: None, batch=batch)
        wall = time.perf_counter() - start
    require_all([r for _, r in done.results], f"{path.name} (--batch {batch})")
    fits = {round(r.seconds, 6): r.fit_times for _, r in done.results}  # a batch's runs share their fit's
    parts: dict[str, float] = {}
    for times in fits.values():
        for part, seconds in times.items():
            parts[part] = parts.get(part, 0.0) + seconds
    return Swept(wall, sum(fits), {p.key: r.losses["loss/total"] for p, r in done.results}, parts)


def grid_file(folder: Path, size: int, steps: int, n: int = 4) -> Path:
    """n lr x n beta x n seeds points (64 for n = 4)."""
    path = folder / "grid.yaml"
    lrs, betas = [0.1, 0.3, 1.0, 3.0][:n], [40, 4, 0.4, 0.04][:n]
    path.write_text(f"""
name: grid{n**3}
description: {n**3} points ({n} lr x {n} beta x {n} seeds) for bench-batch
base: {{preset: seed, content: {CONTENT}, style: {STYLE}, size: {size}, iterations: {steps}, snapshots: [0]}}
grid: {{optimizer.lr: {lrs}, beta: {betas}}}
seeds: {list(range(n))}
""")
    return path
