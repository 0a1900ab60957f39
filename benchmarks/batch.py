"""`make bench-batch`: a sweep's points optimized one at a time against together as one batch.

- per image: the step time of a bare batched loop (the module's losses and per-image Adam, no
  Lightning, no MLflow) at B = 1, 3, 8, 64 images, divided by B;
- tracked against bare: the marginal s/step of a tracked batch (every metric of every run logged,
  snapshots, checkpoints) against the bare loop of the same batch;
- whole sweeps, tracked into fresh stores, `--batch 1` against `--batch auto`: the lr sweep (3
  points at 128 px) and a 64-point grid at 256 px (4 lr × 4 β × 4 seeds). The wall time, the
  optimization time (the fits), and the largest relative difference in final J between the two.
  The 64 points one at a time are timed on the first 8 and scaled by 8 (said in the table);
- on a GPU, the bare step captured in a CUDA graph (torch.cuda.graph) against the same step
  launched op by op, the lever for launch-bound steps (fp32 and bf16, 128 to 512 px);
- nst's own runs with `cuda_graph: true` against op by op: a tracked batch's step and the lr sweep.
Writes "Batches" and "CUDA graphs" (the last two) in BENCHMARKS.md (BENCHMARKS-cuda.md on a GPU:
`--device`). `--smoke`: toy sizes; `--graphs`: only "CUDA graphs".
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench import CONTENT, STYLE, Timing, _pair, _timing
from benchmarks.cluster import tracking_server
from benchmarks.device import add_device_argument, pick, sync
from benchmarks.markdown import Section
from benchmarks.stores import new_store
from nst.config import OptimizerConfig, TransferConfig
from nst.module import StyleTransfer
from nst.optim import make_optimizer
from nst.precision import resolve_precision
from nst.targets import build_backbone
from pipelines.config.grid import load_experiment
from pipelines.errors import UserError
from pipelines.execution.batches import auto_size
from pipelines.execution.run import FINISHED, RunSpec, execute_batch, quiet_lightning
from pipelines.execution.sweep import SweepResult, run_experiment
from pipelines.tracking.writers import WriterPool, auto_writer, writer_count

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Batches"
GRAPHS_HEADING = "## CUDA graphs"
WRITERS_HEADING = "## Writers"


def _configs(n: int, **keys: Any) -> list[TransferConfig]:
    """n points of a grid: each its own lr (and beta), as a sweep's batch would hold."""
    return [TransferConfig(optimizer=OptimizerConfig(lr=0.1 * (1 + i % 4)), beta=40.0 / (1 + i // 4 % 4), **keys)
            for i in range(n)]


def _module(configs: list[TransferConfig], size: int, device: torch.device) -> StyleTransfer:
    content, style = _pair(size)
    return StyleTransfer(content.to(device), style.to(device), configs,
                         backbone=build_backbone(configs[0]).to(device))


def bare_step(configs: list[TransferConfig], size: int, device: torch.device) -> Callable[[], torch.Tensor]:
    """One step of the bare batched loop (losses, backward, per-image Adam, clamp) as a function
    returning the batch's summed J; each call moves the same images on."""
    module = _module(configs, size, device)
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
    module = _module(configs, size, device)
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
        specs = _specs(configs, size, steps, device, cuda_graph=cuda_graph)
        results = execute_batch(specs, tracking_uri=server or new_store(tmp),
                                experiment=f"bench-{steps}", progress=False, writer=writer)
    _require(results, f"the tracked batch of {len(configs)} at {size} px")
    return results


def _specs(configs: list[TransferConfig], size: int, steps: int, device: torch.device, **keys: object
           ) -> list[RunSpec]:
    """One tracked run per config of `configs` (what varies in a batch), the rest from _run_config."""
    return [RunSpec(replace(_run_config(size, steps, device), alpha=c.alpha, beta=c.beta, optimizer=c.optimizer,
                            **keys)) for c in configs]


def _run_config(size: int, steps: int, device: torch.device):  # -> RunConfig
    from pipelines.config.runs import run_config

    return run_config({"content": str(CONTENT), "style": str(STYLE), "size": size, "iterations": steps,
                       "snapshots": [0, steps // 2], "checkpoint_every": 100, "device": device.type})


def _require(results: list, what: str) -> None:
    failed = [r for r in results if r.status != FINISHED]
    if failed:
        raise SystemExit(f"bench-batch: {what}: {len(failed)} run(s) ended {failed[0].status}, not timed: "
                         f"{failed[0].error}")


def sweep(path: Path, overrides: dict[str, object], batch: int | str,
          first: int | None = None) -> tuple[float, float, dict[str, float]]:
    """(wall s, optimization s, final J by point) of a sweep into a fresh store; `first`: only the
    first points of the file."""
    experiment = load_experiment(path, overrides)
    if first is not None:
        experiment = replace(experiment, points=experiment.points[:first])
    with tempfile.TemporaryDirectory() as tmp:
        uri = new_store(tmp)  # made before the clock starts, as a user's store is
        start = time.perf_counter()
        done: SweepResult = run_experiment(experiment, tracking_uri=uri, progress=False,
                                           say=lambda _: None, batch=batch)
        wall = time.perf_counter() - start
    _require([r for _, r in done.results], f"{path.name} (--batch {batch})")
    fits = {round(r.seconds, 6) for _, r in done.results}  # a batch's runs share their fit's time
    return wall, sum(fits), {p.key: r.losses["loss/total"] for p, r in done.results}


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench-batch", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="toy sizes, seconds; checks the code, not the speed")
    parser.add_argument("--graphs", action="store_true", help="only the CUDA graphs section (about 90 s on an H100)")
    parser.add_argument("--writers", action="store_true", help="only the Writers section (thread against process)")
    add_device_argument(parser)
    args = parser.parse_args(argv)
    device = pick(parser, args)
    quiet_lightning()
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its "creating tables" notes per store
    if args.graphs:
        graphs(device, args.smoke, args.out)
        return 0
    if args.writers:
        writers(device, args.smoke, args.out)
        return 0
    gpu, smoke = device.type == "cuda", args.smoke
    sizes = (32,) if smoke else (128, 256, 512) if gpu else (128, 256)
    batches = (1, 3) if smoke else (1, 3, 8, 64)
    section = Section(args.out, [HEADING, "",
             f"`make bench-batch` on {torch.cuda.get_device_name(device) if gpu else 'this CPU'}, default precision "
             f"({resolve_precision('auto', device.type)}). Per image: the bare loop's s/step at B images ÷ B.", "",
             "| size | " + " | ".join(f"B = {b}" for b in batches) + f" | B = {batches[-1]}: speed-up per image |",
             "|---|" + "---|" * (len(batches) + 1)])
    for size in sizes:
        per_image: dict[int, float] = {}
        for b in batches:
            if gpu or smoke or size <= 128 or b <= 8:  # 64 at 256 px: seconds a step on a CPU, for nothing
                steps = 2 if smoke else 10 if gpu or b < 8 else 3
                per_image[b] = batch_loop(_configs(b), size, steps, device).median / b
                print(size, b, per_image[b], flush=True)
        cells = [f"{per_image[b] * 1000:.2f} ms" if b in per_image else "—" for b in batches]
        ratio = f"{per_image[1] / per_image[batches[-1]]:.1f}×" if batches[-1] in per_image else "—"
        section.add(f"| {size} px | " + " | ".join(cells) + f" | {ratio} |")

    section.lines += [
        "", "Tracked against bare, per step of the whole batch (marginal: runs of N and 3N steps, differenced;",
        "every run's metrics of every step logged, snapshots, checkpoints every 100 steps), the runs written",
        "where this device writes them (`auto`: \"Writers\" below measures a thread against processes).", "",
        "| batch, store | bare loop | tracked | overhead | writer's CPU per step |",
        "|---|---|---|---|---|"]
    shapes = [(32, 3, 3)] if smoke else [(128, 3, 100), (256, 64, 100)] if gpu else [(128, 3, 10), (128, 8, 5)]
    for i, (size, b, steps) in enumerate(shapes):
        bare = batch_loop(_configs(b), size, steps, device).median
        stores: list[tuple[str, str | None]] = [("SQLite", None)]
        if i == len(shapes) - 1:  # the largest batch again, into a tracking server: its SQL work in other processes
            stores.append(("a tracking server (SQLite behind it)", "server"))
        for label, store in stores:
            try:
                with tracking_server(db="sqlite") if store else nullcontext() as url:
                    tracked, writer = tracked_batch(_configs(b), size, steps, device, server=url)
                row = (f"| {b} × {size} px, {label} | {bare * 1000:.1f} ms | {tracked * 1000:.1f} ms "
                       f"| {tracked / bare - 1:+.1%} | {writer * 1000:.1f} ms |")
            except UserError as exc:  # no server on this machine (mlflow-skinny alone): the row says so
                row = f"| {b} × {size} px, {label} | {bare * 1000:.1f} ms | not measured: {exc} | — | — |"
            section.add(row)

    lr_steps = 4 if smoke else 2000 if gpu else 200
    grid_size, grid_steps, first, n = (32, 3, 2, 2) if smoke else (256, 100, 8, 4) if gpu else (256, 3, 8, 4)
    section.lines += ["", "Whole sweeps into a fresh SQLite store, `--batch 1` against `--batch auto` "
              f"(auto here: {auto_size(_run_config(grid_size, 1, device), device.type)} at {grid_size} px, "
              f"{auto_size(_run_config(128, 1, device), device.type)} at 128 px).", "",
              "| sweep | one at a time: wall | optimization | batched: wall | optimization | faster (wall) "
              "| final J, largest difference |", "|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        lr_keys = {"iterations": lr_steps, "device": device.type, **({"size": 32} if smoke else {})}
        cases: list[tuple[str, Path, dict[str, object], int | None]] = [
            (f"lr_sweep, {lr_steps} steps", ROOT / "experiments" / "lr_sweep.yaml", lr_keys, None),
            (f"{n**3} points at {grid_size} px, {grid_steps} steps",
             grid_file(Path(tmp), grid_size, grid_steps, n), {"device": device.type}, first)]
        for label, path, overrides, subset in cases:
            one_wall, one_fit, one_j = sweep(path, overrides, 1, subset)
            wall, fit, j = sweep(path, overrides, "auto")
            scale = len(j) / len(one_j)
            note = f" (first {subset} × {scale:.0f})" if subset else ""
            gap = max(abs(j[k] / v - 1) for k, v in one_j.items())
            section.add(f"| {label} | {one_wall * scale:.1f} s{note} | {one_fit * scale:.1f} s | {wall:.1f} s "
                        f"| {fit:.1f} s | {one_wall * scale / wall:.1f}× | {gap:.1e} |")
    writers(device, smoke, args.out)
    graphs(device, smoke, args.out)
    from benchmarks.opening import opening  # it builds its runs with this module's helpers

    opening(device, smoke, args.out)
    return 0


def writers(device: torch.device, smoke: bool, out: Path) -> None:
    """The "Writers" section: a tracked batch's step with its runs written by a thread against by a process."""
    section = Section(out, [WRITERS_HEADING, "", f"`make bench-batch` (or `python -m benchmarks.batch --writers`) on "
             f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'this CPU'}, default precision "
             f"({resolve_precision('auto', device.type)}): a tracked batch's step (marginal: runs of N and 3N steps,",
             "differenced; every step's metrics into SQLite, snapshots, checkpoints every 100 steps) with its runs",
             "written by a thread beside the loop against by processes (pipelines.tracking.writer_process; one per",
             "16 runs, at most one per 4 cores: pipelines.tracking.writers). A writer",
             "thread's CPU is time it holds Python's interpreter lock, which a loop launching GPU kernels waits for;",
             "a writer process's runs on another core. This device's choice (pipelines.tracking.writers.auto_writer): "
             f"{', '.join(f'{n} runs: {auto_writer(device.type, n)}' for n in (3, 8, 64))}.",
             "", "| batch | bare loop | writer thread | writer processes | thread's CPU per step "
             "| processes' CPU per step |",
             "|---|---|---|---|---|---|"])
    gpu = device.type == "cuda"
    for size, b, steps in [(32, 3, 3)] if smoke else [(128, 3, 100), (256, 64, 100)] if gpu else [(128, 3, 10),
                                                                                                (128, 8, 5)]:
        bare = batch_loop(_configs(b), size, steps, device).median
        (thread, thread_cpu), (process, process_cpu) = (tracked_batch(_configs(b), size, steps, device, writer=w)
                                                        for w in ("thread", "process"))
        n = writer_count("process", b)
        section.add(f"| {b} × {size} px | {bare * 1000:.1f} ms | {thread * 1000:.1f} ms ({thread / bare - 1:+.1%}) "
                    f"| {process * 1000:.1f} ms ({process / bare - 1:+.1%}), {n} process{'es' if n > 1 else ''} "
                    f"| {thread_cpu * 1000:.1f} ms | {process_cpu * 1000:.1f} ms |")
    n, size, steps = (2, 32, 2) if smoke else (8, 32, 2)
    section.lines += [
        "", f"A sweep of {n} short runs one at a time ({steps} steps at {size} px each, into one SQLite store",
        "made beforehand), the wall of the whole: what each batch pays around its fit for its writer. A process",
        "takes about a second to start; a sweep keeps its processes from batch to batch (WriterPool).", "",
        "| runs | writer thread | a process per batch | the sweep's processes, kept |", "|---|---|---|---|"]
    walls = [one_at_a_time(n, size, steps, device, w, kept) for w, kept in
             (("thread", False), ("process", False), ("process", True))]
    section.add(f"| {n} | {walls[0]:.1f} s | {walls[1]:.1f} s | {walls[2]:.1f} s |")


def one_at_a_time(n: int, size: int, steps: int, device: torch.device, writer: str, kept: bool) -> float:
    """Wall seconds of `n` tracked runs, one batch each, written by `writer` (`kept`: processes kept from batch
    to batch, as a sweep run here keeps them)."""
    specs = _specs(_configs(n), size, steps, device)
    with tempfile.TemporaryDirectory() as tmp, WriterPool() if kept else nullcontext() as pool:
        uri = new_store(tmp)  # made first: its making is not the writers'
        start = time.perf_counter()
        for spec in specs:
            results = execute_batch([spec], tracking_uri=uri, experiment="one-at-a-time", progress=False,
                                    writer=writer, pool=pool)
            _require(results, f"a run one at a time ({writer})")
        return time.perf_counter() - start


def graphs(device: torch.device, smoke: bool, out: Path) -> None:
    """The "CUDA graphs" section: on a GPU the bare step captured against launched op by op; nst's own
    runs with `cuda_graph: true` against op by op (a tracked batch's step, the lr sweep batched)."""
    section = Section(out, [GRAPHS_HEADING, "", f"`make bench-batch` (or `python -m benchmarks.batch --graphs`) on "
             f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'this CPU'}, default precision "
             f"({resolve_precision('auto', device.type)})."])
    if device.type == "cuda":
        section.lines += [
            "", "The bare step captured in a CUDA graph (one launch per step) against launched op by op:", "",
            "| batch | op by op | CUDA graph | faster |", "|---|---|---|---|"]
        for size, b, precision in [(32, 3, "bf16")] if smoke else [(128, 3, "fp32"), (128, 3, "bf16"),
                                                                    (256, 8, "bf16"), (512, 8, "bf16")]:
            configs = _configs(b, precision=precision)
            try:
                plain = batch_loop(configs, size, 20, device).median
                graphed = graphed_loop(configs, size, 20, device).median
                row = (f"| {b} × {size} px, {precision} | {plain * 1000:.2f} ms | {graphed * 1000:.2f} ms "
                       f"| {plain / graphed:.2f}× |")
            except Exception as exc:  # noqa: BLE001 - a step that cannot be captured is a finding, not a crash
                row = (f"| {b} × {size} px, {precision} | — | capture failed: {type(exc).__name__}: "
                       f"{str(exc)[:120]} | — |")
            section.add(row)
    section.lines += [
        "", "nst's runs with `cuda_graph: true` (each step's losses and gradient replayed from one captured",
        "CUDA graph, nst.graphs) against op by op; on the CPU the setting changes nothing (the steps run",
        "op by op either way). A tracked step is marginal: runs of N and 3N steps, differenced.", "",
        "| what | op by op | `cuda_graph: true` | faster | final J, largest difference |",
        "|---|---|---|---|---|"]
    size, b, steps = (32, 3, 3) if smoke else (128, 3, 100) if device.type == "cuda" else (128, 3, 10)
    plain, graphed = (tracked_batch(_configs(b), size, steps, device, cuda_graph=g)[0] for g in (False, True))
    section.add(f"| tracked {b} × {size} px, per step | {plain * 1000:.1f} ms | {graphed * 1000:.1f} ms "
                f"| {plain / graphed:.2f}× | — |")
    lr_steps = 4 if smoke else 2000 if device.type == "cuda" else 50
    overrides = {"iterations": lr_steps, "device": device.type, **({"size": 32} if smoke else {})}
    path = ROOT / "experiments" / "lr_sweep.yaml"
    (wall, fit, j), (g_wall, g_fit, g_j) = (sweep(path, overrides | {"cuda_graph": g}, "auto") for g in (False, True))
    gap = max(abs(g_j[k] / v - 1) for k, v in j.items())
    section.add(f"| lr_sweep batched, {lr_steps} steps: optimization (wall) | {fit:.1f} s ({wall:.1f} s) "
                f"| {g_fit:.1f} s ({g_wall:.1f} s) | {fit / g_fit:.2f}× | {gap:.1e} |")


if __name__ == "__main__":
    raise SystemExit(main())
