"""Where a batch's runs are written, and by how many writers: a thread, or processes
(pipelines.tracking.writer_process says why; BENCHMARKS.md and BENCHMARKS-cuda.md, "Writers", measure both).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager

from pipelines.errors import UserError
from pipelines.tracking.writer_process import WriterProcess

WRITER_ENV = "NST_WRITER"  # `thread` or `process` for every batch (the README says when)
#: From this many runs a CPU's batch is written by a process: measured on this 2-core CPU (tracked steps of
#: 15 and 45, differenced, two pairs each), 3 runs at 128 px cost 1.7-3.8% more a step with a process than
#: with a thread (and the lr sweep's 200 steps 1.1-1.8 s more), 8 runs 9-14% less.
CPU_PROCESS_FROM = 8
#: One writer process writes about 15,000 metric rows a second into SQLite on this CPU (64 runs log 640 rows
#: a step: 42 ms of it), two about 24,000 (on its 2 cores; scratch measurement). A GPU steps a batch of 64 at
#: 128 px in 15 ms (H100), faster than one process writes it: a batch's runs are dealt out to one writer
#: process per RUNS_PER_WRITER runs, at most one per 4 cores (the loop and its data need the rest).
RUNS_PER_WRITER = 16


def auto_writer(device: str, runs: int) -> str:
    """On a GPU, processes: the loop is Python launching kernels, which a writer thread's hold on the
    interpreter lock delays. On a CPU the loop is in torch's kernels, which let go of the lock: a thread,
    until a batch's many runs' writes hold it long enough to pay for a process's start-up and its share
    of the cores (CPU_PROCESS_FROM)."""
    return "process" if device == "cuda" or runs >= CPU_PROCESS_FROM else "thread"


def writer_count(kind: str, runs: int) -> int:
    """How many writers a batch of `runs` runs gets: one thread (more would share one interpreter lock),
    or processes (RUNS_PER_WRITER)."""
    if kind != "process":
        return 1
    return max(1, min(-(-runs // RUNS_PER_WRITER), (os.cpu_count() or 1) // 4))


def open_writer(kind: str) -> Executor:
    """One writer, first in first out: a thread (`nst-metrics`) or a process."""
    if kind == "process":
        return WriterProcess()
    if kind == "thread":
        return ThreadPoolExecutor(1, thread_name_prefix="nst-metrics")
    raise UserError(f"{WRITER_ENV}={kind!r}: the writer must be 'thread' or 'process'; set one or unset it")


@contextmanager
def open_writers(kind: str, device: str, runs: int) -> Iterator[list[Executor]]:
    """A batch's writers (each run keeps one): `kind` `thread` or `process`, or `auto` ($NST_WRITER, else
    auto_writer), as many as writer_count; on the way out, each waits for its writes."""
    if kind == "auto":
        kind = os.environ.get(WRITER_ENV) or auto_writer(device, runs)
    with ExitStack() as stack:
        yield [stack.enter_context(open_writer(kind)) for _ in range(writer_count(kind, runs))]
