"""One run's metrics on their way into the store, written by a thread beside the optimization.

MLflow writes ~5,000 rows/s into SQLite, and a batch of 64 runs logs 640 a step: written in the
loop, they made the tracked step 2.5x the bare one on an H100 (64 x 256 px). A batch's runs share
one writer thread, first in first out, so a run's rows reach the store in step order, in writes
that never cut a step in two: after a kill -9 the store holds whole steps 0..k with no gap, which
is what resuming relies on (MLflow's own async logging writes from a pool of threads, in any order).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor, Future
from itertools import groupby
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric

_METRICS_PER_BATCH = 1000  # MLflow's limit per log_batch call


class RunWriter:
    """One run's metrics, buffered and handed to `writer` at most once per `flush_seconds` (and when
    asked: then it waits until every row so far is in the store). Steps up to `skip_through` are
    already in the store (a resumed run recomputes them bit for bit) and are not written twice."""

    def __init__(self, client: MlflowClient, run_id: str, writer: Executor, skip_through: int = -1,
                 flush_seconds: float = 2.0) -> None:
        self.client, self.run_id, self.writer = client, run_id, writer
        self.skip_through, self.flush_seconds = skip_through, flush_seconds
        self.seconds = 0.0  # time the optimization loop spent buffering and handing over metrics, for the bench
        # CPU time the writer thread spent writing the rows: it holds Python's interpreter lock for most
        # of it, which the loop then waits for (the bench reports it per step).
        self.writer_seconds = 0.0
        self._buffer: list[Metric] = []
        self._pending: list[Future[object]] = []
        self._last_flush = time.monotonic()

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        if step <= self.skip_through:
            return
        start = time.perf_counter()
        now = int(time.time() * 1000)
        self._buffer.extend(Metric(key=k, value=float(v), timestamp=now, step=step) for k, v in metrics.items())
        self.seconds += time.perf_counter() - start

    def flush(self, *, due_only: bool = False, wait: bool = True) -> None:
        """Hand the buffered rows to the writer thread (`due_only`: only once `flush_seconds` passed
        since the last hand-over); `wait`: until every row so far is in the store."""
        if due_only and time.monotonic() - self._last_flush < self.flush_seconds:
            return
        start = time.perf_counter()
        buffer, self._buffer = self._buffer, []
        if buffer:
            self._pending.append(self.writer.submit(self._write, buffer))
        # Waiting or not, a write that failed raises here: a broken store stops the run now, not at its end.
        self._pending = _collect(self._pending, wait)
        self._last_flush = time.monotonic()
        self.seconds += time.perf_counter() - start

    def after_rows(self, write: Callable[..., object], *args: object, **kwargs: object) -> None:
        """Hand over the rows so far, then run `write(*args, **kwargs)` on the writer thread behind
        them: first in, first out, what it writes reaches the store only after every row before it."""
        self.flush(wait=False)
        self._pending.append(self.writer.submit(write, *args, **kwargs))

    def _write(self, metrics: list[Metric]) -> None:
        start = time.thread_time()
        for chunk in whole_steps(metrics):
            self.client.log_batch(self.run_id, metrics=chunk)
        self.writer_seconds += time.thread_time() - start

def _collect(pending: list[Future[Any]], wait: bool) -> list[Future[Any]]:
    """The writes still running (none when `wait`); the first finished one's error is raised."""
    done = pending if wait else [f for f in pending if f.done()]
    for future in done:
        future.result()
    return [f for f in pending if f not in done]


def whole_steps(metrics: list[Metric], limit: int = _METRICS_PER_BATCH) -> Iterator[list[Metric]]:
    """The rows in writes of at most `limit` that never cut a step's rows in two: each write is one
    transaction, so a kill -9 between two leaves no step with `loss/total` but without the rest (a
    resume skips every step whose `loss/total` is in the store)."""
    chunk: list[Metric] = []
    for _, rows in groupby(metrics, key=lambda m: m.step):
        step = list(rows)
        if chunk and len(chunk) + len(step) > limit:
            yield chunk
            chunk = []
        chunk.extend(step)
    if chunk:
        yield chunk
