"""One run's metrics on their way into the store, written beside the optimization.

MLflow writes ~15,000 rows/s into SQLite on this CPU, and a batch of 64 runs logs 640 a step:
written in the loop, they made the tracked step 2.5x the bare one on an H100 (64 x 256 px). Each
run keeps one writer (a thread, or a process: pipelines.tracking.writer_process; a batch's runs
share one, or a few processes: pipelines.tracking.writers), first in first out, so a run's rows
reach the store in step order, in writes that never cut a step in two: after a kill -9
the store holds whole steps 0..k with no gap, which is what resuming relies on (MLflow's own async
logging writes from a pool of threads, in any order).

What the writer runs are the functions below, each given the store's URI rather than a client:
in a writer process they open their own (`client_for`), and this module imports nothing heavier
than MLflow, so that process starts in about a second.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor, Future
from itertools import groupby
from pathlib import Path
from typing import Any, Protocol, SupportsBytes, runtime_checkable

from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from pipelines.tracking.store import local_folder, log_params
from pipelines.tracking.tags import CHECKPOINT_FOLDER, checkpoint_tags

_METRICS_PER_BATCH = 1000  # MLflow's limit per log_batch call
Rows = list[tuple[int, int, dict[str, float]]]  # (step, timestamp in ms, metrics) as the loop logged them

_clients: dict[str, MlflowClient] = {}
_clients_lock = threading.Lock()


def client_for(uri: str) -> MlflowClient:
    """The writer's client of the store at `uri`, one per process (MlflowClient is shared across threads
    in MLflow's own fluent API too)."""
    with _clients_lock:
        if uri not in _clients:
            _clients[uri] = MlflowClient(uri)
        return _clients[uri]


def connect(uri: str) -> None:
    """The writer's client of the store, opened now (MLflow's store: its engine and schema check) and
    not at the first write: a batch hands this to each writer as it starts, so that a writer process
    is ready by the time the loop's first rows and checkpoints come (writers.connect)."""
    client_for(uri)


def write_rows(uri: str, run_id: str, rows: Rows) -> float:
    """The rows into the store, in writes that never cut a step in two; returns the CPU time it took
    this thread (it holds Python's interpreter lock for most of it: the bench reports it per step)."""
    client = client_for(uri)  # opened once per writer: not counted
    start = time.thread_time()
    metrics = [Metric(key=k, value=v, timestamp=ms, step=step) for step, ms, values in rows for k, v in values.items()]
    for chunk in whole_steps(metrics):
        client.log_batch(run_id, metrics=chunk)
    return time.thread_time() - start


def log_image(uri: str, run_id: str, image: Any, *args: Any, **kwargs: Any) -> None:
    """MlflowClient.log_image on the writer (a PIL image: the PNG is encoded there, not in the loop)."""
    client_for(uri).log_image(run_id, image, *args, **kwargs)


def open_run(uri: str, run_id: str, params: Mapping[str, Any], inputs: str, config_yaml: str) -> None:
    """A new run's params, input images (the files in the folder `inputs`) and config.yaml: its first
    write, ahead of its rows. The loop only creates the run (its id and tags); 64 runs' other requests
    took 1.1 s of a batch's 1.6 s of opening on this CPU, which the writers now spend beside the fit."""
    client = client_for(uri)
    log_params(client, run_id, params)
    client.log_artifacts(run_id, inputs)
    client.log_text(run_id, config_yaml, "config.yaml")


def end_run(uri: str, run_id: str, final: Any, tags: Mapping[str, str], status: str) -> None:
    """A run's end, behind its rows: `final` (a PIL image, encoded here) as final.png, its tags, its status."""
    client = client_for(uri)
    client.log_image(run_id, final, "final.png")
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    client.set_terminated(run_id, status)


def drop_checkpoints(uri: str, run_id: str) -> int:
    """A FINISHED run's checkpoints deleted, then the tags that named them: it never resumes, and they
    hold its image and optimizer state, up to two of them (510-600 MB each for a 512 px run of the
    default recipe, whose L-BFGS keeps 100 curvature pairs; the gallery's 16 runs left 7.4 GB of
    7.6). Any other run is left as it is. Returns the bytes freed when the store is on this disk (0
    elsewhere). Best effort, never raising: the run's result is in, and where the store refused, the
    tags still name the files, so running the sweep again tries again (pipelines.execution.sweep)."""
    try:
        client = client_for(uri)
        run = client.get_run(run_id)
        named = checkpoint_tags(run.data.tags)
        if run.info.status != "FINISHED" or not named:
            return 0
        folder = local_folder(run.info.artifact_uri)
        held = folder / CHECKPOINT_FOLDER if folder else None
        freed = sum(f.stat().st_size for f in held.rglob("*") if f.is_file()) if held and held.is_dir() else 0
        get_artifact_repository(run.info.artifact_uri, tracking_uri=uri).delete_artifacts(CHECKPOINT_FOLDER)
        for key in named:
            client.delete_tag(run_id, key)
        return freed
    except Exception:  # noqa: BLE001 - a clean-up: the run is FINISHED whatever happens here
        return 0


@runtime_checkable
class Saved(Protocol):
    """What writes itself into a file (a checkpoint: checkpoint_store), rather than being turned into bytes."""

    def save(self, path: Path) -> None: ...


class SavedFile:
    """A file the optimizing process wrote for a writer process (a checkpoint: checkpoint_store), moved
    into place by the upload: the path travels between the processes, not the bytes."""

    def __init__(self, path: str) -> None:
        self.path = path

    def save(self, path: Path) -> None:
        shutil.move(self.path, path)


def upload_file(uri: str, run_id: str, data: bytes | SupportsBytes | Saved, path: str, before: Mapping[str, str],
                after: Mapping[str, str]) -> None:
    """`data` as the artifact `path` ("folder/name"), the tags `before` set ahead of the upload and
    `after` once it is whole (a file's tags name it only while it is whole: checkpoint_store)."""
    client = client_for(uri)
    if before:
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in before.items()])
    folder, name = path.rsplit("/", 1)
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(data, Saved):  # written straight into the file (or moved there), never bytes in memory
            data.save(Path(tmp) / name)
        else:
            (Path(tmp) / name).write_bytes(bytes(data))
        client.log_artifact(run_id, str(Path(tmp) / name), folder)
    if after:
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in after.items()])


class RunWriter:
    """One run's metrics, buffered and handed to `writer` at most once per `flush_seconds` (and when
    asked: then it waits until every row so far is in the store). Steps up to `skip_through` are
    already in the store (a resumed run recomputes them bit for bit) and are not written twice."""

    def __init__(self, uri: str, run_id: str, writer: Executor, skip_through: int = -1,
                 flush_seconds: float = 2.0) -> None:
        self.uri, self.run_id, self.writer = uri, run_id, writer
        self.skip_through, self.flush_seconds = skip_through, flush_seconds
        self.seconds = 0.0  # time the optimization loop spent buffering and handing over metrics, for the bench
        self.writer_seconds = 0.0  # CPU time the writer spent writing the rows (write_rows), for the bench
        self._buffer: Rows = []
        self._pending: list[Future[Any]] = []
        self._last_flush = time.monotonic()

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        if step <= self.skip_through:
            return
        start = time.perf_counter()
        self._buffer.append((step, int(time.time() * 1000), {k: float(v) for k, v in metrics.items()}))
        self.seconds += time.perf_counter() - start

    def flush(self, *, due_only: bool = False, wait: bool = True) -> None:
        """Hand the buffered rows to the writer (`due_only`: only once `flush_seconds` passed since
        the last hand-over); `wait`: until every row so far is in the store."""
        if due_only and time.monotonic() - self._last_flush < self.flush_seconds:
            return
        start = time.perf_counter()
        buffer, self._buffer = self._buffer, []
        if buffer:
            future = self.writer.submit(write_rows, self.uri, self.run_id, buffer)
            future.add_done_callback(self._count)
            self._pending.append(future)
        # Waiting or not, a write that failed raises here: a broken store stops the run now, not at its end.
        self._pending = _collect(self._pending, wait)
        self._last_flush = time.monotonic()
        self.seconds += time.perf_counter() - start

    def after_rows(self, write: Callable[..., object], *args: object, **kwargs: object) -> Future[Any]:
        """Hand over the rows so far, then run `write(uri, *args, **kwargs)` (a function of this
        module's kind: it opens its own client) on the writer behind them: first in, first out, what
        it writes reaches the store only after every row before it. Returns the write's future."""
        self.flush(wait=False)
        future = self.writer.submit(write, self.uri, *args, **kwargs)
        self._pending.append(future)
        return future

    def _count(self, future: Future[float]) -> None:
        if not future.cancelled() and future.exception() is None:
            self.writer_seconds += future.result()


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
