"""`make bench-batch`'s "Writers" (alone: `python -m benchmarks.batch --writers`): a tracked batch's
step with its runs written by a thread beside the loop against by processes, how fast 1, 2, 3 writer
processes write the lr sweep's rows, and a sweep of short runs one at a time with a thread, a process per
batch, and the sweep's kept processes."""

from __future__ import annotations

import tempfile
import time
from contextlib import ExitStack, nullcontext
from pathlib import Path

import torch
from mlflow import MlflowClient

from benchmarks.device import device_name
from benchmarks.loops import batch_loop, point_configs, require_all, run_specs, tracked_batch
from benchmarks.markdown import Section
from benchmarks.stores import new_store
from nst.config import LayersConfig
from nst.precision import resolve_precision
from pipelines.execution.run import execute_batch
from pipelines.tracking.run_writer import write_rows
from pipelines.tracking.writer_process import WriterProcess, settled
from pipelines.tracking.writers import WriterPool, auto_writer, connect, writer_count

HEADING = "## Writers"
#: What each of the lr sweep's runs logs at every step: its losses (a term per style layer: the seed's
#: layers, which the sweep keeps) and its learning rate.
SWEEP_METRICS = ("loss/total", "loss/content", "loss/style", "loss/tv", "lr",
                 *(f"loss/style/{layer}" for layer in LayersConfig().style))


def writers(device: torch.device, smoke: bool, out: Path) -> None:
    """The "Writers" section: a tracked batch's step with its runs written by a thread against by a process."""
    section = Section(out, [HEADING, "", f"`make bench-batch` (or `python -m benchmarks.batch --writers`) on "
             f"{device_name(device)}, default precision "
             f"({resolve_precision('auto', device.type)}): a tracked batch's step (marginal: runs of N and 3N steps,",
             "differenced; every step's metrics into SQLite, snapshots, checkpoints every 100 steps) with its runs",
             "written by a thread beside the loop against by processes (pipelines.tracking.writer_process; one per",
             "run, at most one per 4 cores: pipelines.tracking.writers). A writer",
             "thread's CPU is time it holds Python's interpreter lock, which a loop launching GPU kernels waits for;",
             "a writer process's runs on another core. This device's choice (pipelines.tracking.writers.auto_writer): "
             f"{', '.join(f'{n} runs: {auto_writer(device.type, n)}' for n in (3, 8, 64))}.",
             "", "| batch | bare loop | writer thread | writer processes | thread's CPU per step "
             "| processes' CPU per step |",
             "|---|---|---|---|---|---|"])
    gpu = device.type == "cuda"
    for size, b, steps in [(32, 3, 3)] if smoke else [(128, 3, 100), (256, 64, 100)] if gpu else [(128, 3, 10),
                                                                                                (128, 8, 5)]:
        bare = batch_loop(point_configs(b), size, steps, device).median
        (thread, thread_cpu), (process, process_cpu) = (tracked_batch(point_configs(b), size, steps, device, writer=w)
                                                        for w in ("thread", "process"))
        n = writer_count("process", b)
        section.add(f"| {b} × {size} px | {bare * 1000:.1f} ms | {thread * 1000:.1f} ms ({thread / bare - 1:+.1%}) "
                    f"| {process * 1000:.1f} ms ({process / bare - 1:+.1%}), {n} process{'es' if n > 1 else ''} "
                    f"| {thread_cpu * 1000:.1f} ms | {process_cpu * 1000:.1f} ms |")
    drain(section, 2 if smoke else 2000)
    n, size, steps = (2, 32, 2) if smoke else (8, 32, 2)
    section.lines += [
        "", f"A sweep of {n} short runs one at a time ({steps} steps at {size} px each, into one SQLite store",
        "made beforehand), the wall of the whole: what each batch pays around its fit for its writer. A process",
        "takes about a second to start; a sweep keeps its processes from batch to batch (WriterPool).", "",
        "| runs | writer thread | a process per batch | the sweep's processes, kept |", "|---|---|---|---|"]
    walls = [one_at_a_time(n, size, steps, device, w, kept) for w, kept in
             (("thread", False), ("process", False), ("process", True))]
    section.add(f"| {n} | {walls[0]:.1f} s | {walls[1]:.1f} s | {walls[2]:.1f} s |")


def drain(section: Section, steps: int, runs: int = 3, lump: int = 100) -> None:
    """How long 1 … `runs` writer processes take to write the lr sweep's rows (`runs` runs × `steps` steps ×
    its 10 metrics), handed over `lump` steps at a time as its checkpoints hand them, the processes started
    beforehand: what a GPU's loop, stepping faster than one process writes, waits for."""
    section.lines += [
        "", f"The lr sweep's rows ({runs} runs × {steps} steps × {len(SWEEP_METRICS)} metrics) written into a fresh "
        "SQLite store by 1 to", f"{runs} writer processes (the runs dealt out in turn), handed over {lump} steps at "
        "a time as its checkpoints hand them,", "timed from the first hand-over to the last row in the store (the "
        "processes started beforehand). Each process's objects alive once its store's client is open are frozen",
        "(gc.freeze: out of the cyclic collector's sight, pipelines.tracking.writer_process), as nst's writers",
        "run, against not:", "",
        "| writer processes | all rows written | rows a second | the writers' CPU | not frozen: rows a second |",
        "|---|---|---|---|---|"]
    rows = runs * steps * len(SWEEP_METRICS)
    rates = []
    for n in range(1, runs + 1):
        (seconds, cpu), (thawed, _) = (_drain(n, runs, steps, lump, freeze) for freeze in (True, False))
        rates.append(rows / seconds)
        section.add(f"| {n} | {seconds:.2f} s | {rows / seconds:,.0f} | {cpu:.2f} s | {rows / thawed:,.0f} "
                    f"({thawed / seconds:.2f}× the time) |")
    section.add("", "On an H100 the lr sweep's bare step, replayed from a CUDA graph, took 2.0 ms: 15,000 rows a "
                "second to write, where one", f"process writes {rates[0]:,.0f} here, so a GPU's batch gets a writer "
                "process per run (at most one per 4 cores: pipelines.tracking.writers).")


def _drain(n: int, runs: int, steps: int, lump: int, freeze: bool) -> tuple[float, float]:
    """(seconds, the writers' CPU seconds) for `n` writer processes to write `runs` runs' rows (drain)."""
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        uri = new_store(tmp)
        client = MlflowClient(uri)
        experiment = client.create_experiment("drain", artifact_location=f"{tmp}/artifacts")
        ids = [client.create_run(experiment).info.run_id for _ in range(runs)]
        processes = [stack.enter_context(WriterProcess(freeze)) for _ in range(n)]
        connect(processes, uri)
        for process in processes:
            process.submit(settled).result()  # started, the store's client open: not timed
        start = time.perf_counter()
        handed = [processes[r % n].submit(write_rows, uri, run_id,
                                          [(s, s, dict.fromkeys(SWEEP_METRICS, float(s))) for s in
                                           range(first, min(first + lump, steps))])
                  for first in range(0, steps, lump) for r, run_id in enumerate(ids)]
        cpu = sum(f.result() for f in handed)
        return time.perf_counter() - start, cpu


def one_at_a_time(n: int, size: int, steps: int, device: torch.device, writer: str, kept: bool) -> float:
    """Wall seconds of `n` tracked runs, one batch each, written by `writer` (`kept`: processes kept from batch
    to batch, as a sweep run here keeps them)."""
    specs = run_specs(point_configs(n), size, steps, device)
    with tempfile.TemporaryDirectory() as tmp, WriterPool() if kept else nullcontext() as pool:
        uri = new_store(tmp)  # made first: its making is not the writers'
        start = time.perf_counter()
        for spec in specs:
            results = execute_batch([spec], tracking_uri=uri, experiment="one-at-a-time", progress=False,
                                    writer=writer, pool=pool)
            require_all(results, f"a run one at a time ({writer})")
        return time.perf_counter() - start
