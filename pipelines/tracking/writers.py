"""Where a batch's runs are written, and by how many writers: a thread, or processes
(pipelines.tracking.writer_process says why; BENCHMARKS.md and BENCHMARKS-cuda.md, "Writers", measure both),
kept from batch to batch by a sweep run here (WriterPool).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager

from pipelines.errors import UserError
from pipelines.tracking.run_writer import connect as connect_writer
from pipelines.tracking.store import REMOTE_REQUESTS
from pipelines.tracking.writer_process import WriterProcess, settled

WRITER_ENV = "NST_WRITER"  # `thread` or `process`, with a count or not, for every batch (the README says when)
#: From this many runs a CPU's batch is written by a process: measured on this 2-core CPU (tracked steps of
#: 15 and 45, differenced, two pairs each), 3 runs at 128 px cost 1.7-3.8% more a step with a process than
#: with a thread (and the lr sweep's 200 steps 1.1-1.8 s more), 8 runs 9-14% less.
CPU_PROCESS_FROM = 8
#: A writer process's share of the cores: a batch's runs are dealt out to one writer process each, at most
#: one per WRITER_CORES cores (the loop and its data need the rest). One process writes about 15,000 metric
#: rows a second into SQLite on this CPU, and 3 processes writing the lr sweep's rows (3 runs x 2000 steps x
#: 10 metrics) together wrote them in 2.5-2.8 s against 4.1-4.7 s for one, on just 2 cores (BENCHMARKS.md,
#: "Writers"). A GPU steps the lr sweep's batch in about 2 ms (H100, its step in a CUDA graph): 15,000 rows a
#: second, one process's whole rate, and the loop runs at most a few rounds of checkpoints ahead of its
#: writers (pipelines.tracking.checkpoint_store.ROUNDS_AHEAD with one writer, one round with several).
WRITER_CORES = 4


def auto_writer(device: str, runs: int, remote: bool = False) -> str:
    """On a GPU, processes: the loop is Python launching kernels, which a writer thread's hold on the
    interpreter lock delays. On a CPU the loop is in torch's kernels, which let go of the lock: a thread,
    until a batch's many runs' writes into a SQLite file hold it long enough to pay for a process's
    start-up and its share of the cores (CPU_PROCESS_FROM); into a tracking server (`remote`), threads,
    which mostly wait for its answers."""
    if device == "cuda":
        return "process"
    return "process" if runs >= CPU_PROCESS_FROM and not remote else "thread"


def writer_count(kind: str, runs: int, remote: bool = False) -> int:
    """How many writers a batch of `runs` runs gets. Into a tracking server (`remote`), threads or
    processes, one per run up to REMOTE_REQUESTS: each writes one run at a time and mostly waits for the
    server's answers, so neither the interpreter lock nor the cores limit them (one writer process took
    3.1× as long as 8 writer threads for a batch of 64 runs here: BENCHMARKS.md, "A batch into a tracking
    server"). Into a SQLite file, one thread (more would share one interpreter lock, and the file one
    writer) or processes: one per run, at most one per WRITER_CORES cores."""
    if remote:
        return min(runs, REMOTE_REQUESTS)
    if kind != "process":
        return 1
    return max(1, min(runs, (os.cpu_count() or 1) // WRITER_CORES))


def parse_writer(text: str) -> tuple[str, int | None]:
    """`thread` or `process`, and how many when it says (`process:1`, `thread:4`); None: writer_count's."""
    kind, colon, count = text.partition(":")
    if kind not in ("thread", "process") or (colon and not (count.isdigit() and int(count) > 0)):
        raise UserError(f"{WRITER_ENV}={text!r}: the writer must be 'thread' or 'process', or either with a count "
                        "of writers ('process:2'); set one or unset it")
    return kind, int(count) if colon else None


def open_writer(kind: str) -> Executor:
    """One writer, first in first out: a thread (`nst-metrics`) or a process (`kind` as parse_writer read it)."""
    if kind == "process":
        return WriterProcess()
    if kind == "thread":
        return ThreadPoolExecutor(1, thread_name_prefix="nst-metrics")
    raise ValueError(f"a writer is a 'thread' or a 'process', not {kind!r}")  # a user's words went through parse_writer


class WriterPool:
    """A sweep's writer processes, kept from one batch to the next. A process takes about a second to
    start (it imports MLflow) and had to be waited for at each batch's end: a sweep run one point at a
    time on a GPU, where every batch is written by a process, paid both at every point (BENCHMARKS.md,
    "Writers": 8 runs of 2 steps one at a time on this CPU took 14.7 s with a process per batch, 4.0 s
    with the sweep's kept process, 2.2 s with a thread). A batch borrows processes (`lend`) and gives
    them back once every write it handed them is done (`settle`), so a batch's end still means its runs
    are whole in the store; a process that died is replaced. On the way out, each ends as a batch's own would."""

    def __init__(self) -> None:
        self._processes: list[WriterProcess] = []
        self.started = 0  # processes started in all (the tests count them)

    def lend(self, n: int) -> list[Executor]:
        for gone in [p for p in self._processes if not p.alive]:
            gone.shutdown()
            self._processes.remove(gone)
        while len(self._processes) < n:
            self._processes.append(WriterProcess())
            self.started += 1
        return list(self._processes[:n])

    @staticmethod
    def settle(lent: list[Executor]) -> None:
        """Wait until every write handed to `lent` is done (one that failed has raised in its batch; a
        process that died meanwhile is replaced at the next lend)."""
        for writer in lent:
            try:
                writer.submit(settled).result()
            except Exception:  # noqa: BLE001 - gone: nothing of it is left to wait for
                pass

    def __enter__(self) -> WriterPool:
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self._processes:
            process.shutdown()
        self._processes = []


@contextmanager
def open_writers(kind: str, device: str, runs: int, pool: WriterPool | None = None,
                 remote: bool = False) -> Iterator[list[Executor]]:
    """A batch's writers (each run keeps one): `kind` `thread` or `process` (parse_writer: with a count or
    not), or `auto` ($NST_WRITER, else auto_writer), as many as it says, else as writer_count; processes from
    `pool` when given (a sweep's). `remote`: the runs go to a tracking server. On the way out, each has done
    its writes."""
    if kind == "auto":
        kind = os.environ.get(WRITER_ENV) or auto_writer(device, runs, remote)
    kind, asked = parse_writer(kind)
    count = min(asked or writer_count(kind, runs, remote), runs)
    if kind == "process" and pool is not None:
        lent = pool.lend(count)
        try:
            yield lent
        finally:
            pool.settle(lent)
        return
    with ExitStack() as stack:
        yield [stack.enter_context(open_writer(kind)) for _ in range(count)]


def connect(lent: Sequence[Executor], uri: str) -> None:
    """Have each writer open its client of the store at `uri` now, its first task (a process kept by a
    sweep has it already). Called once the caller's own client of `uri` exists, so that a new SQLite
    store's schema is made by one process, not raced for by several."""
    for writer in lent:
        writer.submit(connect_writer, uri)
