"""`python -m benchmarks.startup`: what a tracked fit pays once, apart from its steps, and where it goes.

On the H100 the lr sweep's fit (one batch of 3 at 128 px, 2000 steps) took 23.3 s, where its steps,
timed apart (tracked, marginal), account for about 15.6 s: some 8 s were paid once. On this CPU the
same fit pays 0.35 s once (this bench, BENCHMARKS.md). This times tracked batches of the lr sweep's shape at a
short and a long length, twice in one process: the first fit pays for the process's first use of the
device (its context, libraries, kernels loaded at their first launch), the second only what every fit
pays. The difference of the two lengths gives the time per step; what is left is paid once. A batch's
wall time outside its fit (opening its runs, their final images) is shown beside it, and for a batch of
64 runs (the 64-point grid's), whose runs' bookkeeping is 21 times the lr sweep's.
`--profile`: the first fit of a fresh process under cProfile, its top functions printed (the GPU
check keeps them in its log), to name what the one-off time is.
Writes "A tracked fit's one-off time" in BENCHMARKS.md (BENCHMARKS-cuda.md on a GPU: `--device`).
"""

from __future__ import annotations

import cProfile
import pstats
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from benchmarks.device import bench_parser, device_name, pick
from benchmarks.loops import point_configs, tracked_fit
from benchmarks.markdown import Section
from benchmarks.stores import new_store
from nst.precision import resolve_precision
from pipelines.execution.run import quiet_lightning
from pipelines.tracking.run_writer import connect
from pipelines.tracking.writer_process import WriterProcess, child_env, settled

HEADING = "## A tracked fit's one-off time"
B, SIZE = 3, 128  # the lr sweep's batch


def timed_fit(steps: int, size: int, device: torch.device, runs: int = B) -> tuple[float, float]:
    """(wall s of the whole batch, s of its fit) of one tracked batch of `runs` runs."""
    start = time.perf_counter()
    results = tracked_fit(point_configs(runs), size, steps, device)
    return time.perf_counter() - start, results[0].seconds


def writer_ready() -> tuple[float, float, float, float]:
    """What a batch written by a process waits for at most, in s: from a writer process's start until
    it answers its first task with its client of a store open; then one more task's round trip; and,
    to say where the start goes, a bare interpreter's start and one that imports the writes' module."""
    def python(code: str) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=child_env())
        return time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        uri = new_store(tmp)
        start = time.perf_counter()
        writer = WriterProcess()
        try:
            writer.submit(connect, uri).result()
            ready = time.perf_counter()
            writer.submit(settled).result()
            trip = time.perf_counter() - ready
        finally:
            writer.shutdown()
    return ready - start, trip, python("pass"), python("import pipelines.tracking.run_writer")


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("bench-startup", __doc__)
    parser.add_argument("--profile", action="store_true",
                        help="profile this process's first fit (cProfile) and print its top functions")
    args = parser.parse_args(argv)
    device = pick(parser, args)
    quiet_lightning()
    gpu = device.type == "cuda"
    size = 32 if args.smoke else SIZE
    short, long = (2, 6) if args.smoke else (10, 510) if gpu else (5, 55)
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        wall, fit = timed_fit(short, size, device)
        profiler.disable()
        print(f"first fit of this process, {B} × {size} px, {short} steps, under cProfile: "
              f"batch {wall:.2f} s, fit {fit:.2f} s")
        stats = pstats.Stats(profiler)
        stats.sort_stats("cumulative").print_stats(40)
        stats.sort_stats("tottime").print_stats(25)  # the leaves: a first launch's initialization shows there
        return 0
    section = Section(args.out, [HEADING, "", f"`python -m benchmarks.startup` on "
             f"{device_name(device)}, default precision "
             f"({resolve_precision('auto', device.type)}): tracked batches of {B} at {size} px (the lr sweep's "
             "shape) into fresh SQLite stores, in this order in one process.", "",
             "| fit | steps | batch wall | its fit | outside the fit |", "|---|---|---|---|---|"])
    fits = {}
    for which in ("first in the process", "second"):
        for steps in (short, long):
            wall, fit = fits[which, steps] = timed_fit(steps, size, device)
            section.add(f"| {which} | {steps} | {wall:.2f} s | {fit:.2f} s | {wall - fit:.2f} s |")
    per_step = (fits["second", long][1] - fits["second", short][1]) / (long - short)
    once = {which: fits[which, short][1] - short * per_step for which in ("first in the process", "second")}
    ready = [writer_ready() for _ in range(3)]
    seconds = [statistics.median(r[i] for r in ready) for i in range(4)]
    section.add("", "A writer process (a GPU's batch is written by one per run, at most one per 4 cores) answers "
                f"its first task, its client of the store open, {seconds[0]:.2f} s after it starts (median of 3, "
                f"{min(r[0] for r in ready):.2f}-{max(r[0] for r in ready):.2f} s): a bare Python starts in "
                f"{seconds[2]:.2f} s, one that imports the writes' module (MLflow) in {seconds[3]:.2f} s, and the "
                f"store's client takes the rest. Then a task's round trip takes {seconds[1] * 1000:.1f} ms.")
    # The 64-point grid's batch: what it pays outside its fit grows with its runs (each created, its params,
    # inputs and config.yaml, its snapshots, final image and end written).
    many, many_size = (4, 32) if args.smoke else (64, 256 if gpu else 64)
    walls = [timed_fit(2, many_size, device, many) for _ in range(2)]
    section.add("", f"A batch of {many} runs (the 64-point grid's batch), 2 steps at {many_size} px, twice: "
                + ", ".join(f"batch wall {w:.2f} s, its fit {f:.2f} s, outside the fit {w - f:.2f} s" for w, f in walls)
                + ".")
    section.add("", f"Per step (the second fits' difference): {per_step * 1000:.1f} ms. Paid once in a fit: "
                f"{once['first in the process']:.2f} s in the process's first, {once['second']:.2f} s in the "
                f"second (at 2000 steps the lr sweep's steps take {2000 * per_step:.1f} s).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
