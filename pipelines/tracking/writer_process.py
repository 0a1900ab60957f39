"""The runs' writes in a process of their own, beside the optimization: an `Executor` of one worker.

Why a process: MLflow's writes are Python (90% of a row's cost is SQLAlchemy's objects, profiled on
the CPU), so a writer *thread* holds the interpreter lock while it writes, and a GPU's loop, which
spends its time in Python launching kernels, waits for it. On an H100 the tracked step of 64 runs at
256 px cost the bare step plus about the writer's CPU time (95 against 52 ms). In another process
the writes run on another core. On a CPU the loop's time is in torch's kernels, which let go of the
lock, so a thread costs nothing there and a process would take a core from them
(pipelines.execution.run picks: BENCHMARKS.md measures both).

What it keeps from the thread:
- first in, first out: one worker, fed in submission order (a run's rows reach the store in step
  order, a checkpoint behind the rows before it);
- a kill -9 of the optimizing process ends its writes there too: the worker dies with its parent
  (PR_SET_PDEATHSIG on Linux, and it checks its parent before each write), so a resumed run never
  meets writes of the killed one still arriving;
- a write that fails raises its error in the loop, from the future, as the thread's did;
- Ctrl-C stops the optimization, not the writes: the command still writes every step it computed.

The tasks are module-level functions (pickled by name, imported in the worker: run_writer's, which
import nothing heavier than MLflow) and their arguments; the results come back the same way.
"""

from __future__ import annotations

import ctypes
import gc
import itertools
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from multiprocessing.connection import Connection
from typing import Any

_PR_SET_PDEATHSIG = 1


class WriterError(RuntimeError):
    """A write that failed in the writer process with an error that could not travel back as itself."""


def child_env() -> dict[str, str]:
    """A writer process's environment: this one's, with this process's own import path, so that the
    child imports this package (and MLflow) as the parent does."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


class WriterProcess(Executor):
    """Runs submitted functions, one at a time and in order, in a child Python process."""

    def __init__(self, freeze: bool = True) -> None:
        """`freeze`: the child's long-lived objects out of the cyclic collector's sight (main; False only for
        the bench that weighs it)."""
        from_parent, to_child = os.pipe()  # (read end, write end)
        from_child, to_parent = os.pipe()
        self._child = subprocess.Popen(
            [sys.executable, "-m", __name__, str(os.getpid()), str(from_parent), str(to_parent), str(int(freeze))],
            pass_fds=(from_parent, to_parent), env=child_env(), stdin=subprocess.DEVNULL,
            # Its own session: a terminal's Ctrl-C (SIGINT to the whole foreground group) reaches the
            # command alone, which then writes what it computed and ends its runs KILLED, through this.
            start_new_session=True)
        os.close(from_parent)
        os.close(to_parent)
        self._out, self._in = Connection(to_child, readable=False), Connection(from_child, writable=False)
        self._futures: dict[int, Future[Any]] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._queue: queue.SimpleQueue[tuple[int, Callable[..., Any], tuple[Any, ...], dict[str, Any]] | None] = (
            queue.SimpleQueue())
        self._submitted = False
        self._closed = False
        self._ended: int | None = None  # the child's exit status, once the receiver saw it end
        # Pickling and piping on a thread of their own: the loop never waits for the child to read.
        self._sender = threading.Thread(target=self._send, name="nst-writer-send", daemon=True)
        self._receiver = threading.Thread(target=self._receive, name="nst-writer-receive", daemon=True)
        self._sender.start()
        self._receiver.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        if self._closed:
            raise RuntimeError("cannot submit to a writer process after shutdown")
        future: Future[Any] = Future()
        with self._lock:
            if self._ended is not None:  # the receiver is gone: nobody would ever answer this write
                future.set_exception(_gone(self._ended))
                return future
            task = next(self._ids)
            self._futures[task] = future
        self._submitted = True
        self._queue.put((task, fn, args, kwargs))
        return future

    @property
    def alive(self) -> bool:
        """Open, and its child still there to take writes."""
        return not self._closed and self._child.poll() is None

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._submitted:  # never used (bad input, say): no need to wait for it to start up
            self._child.kill()
        self._queue.put(None)  # the sender closes the pipe after the last task; the child ends at its end
        if wait:
            self._sender.join()
            self._child.wait()
            self._receiver.join()

    def _send(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                data = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:  # noqa: BLE001 - an argument that cannot travel fails its own task
                self._resolve(item[0], False, exc)
                continue
            try:
                self._out.send_bytes(data)
            except OSError:  # the child is gone: the receiver fails what is pending
                break
        self._out.close()

    def _receive(self) -> None:
        while True:
            try:
                task, ok, value = pickle.loads(self._in.recv_bytes())
            except (EOFError, OSError):
                break
            self._resolve(task, ok, value)
        self._in.close()
        code = self._child.wait()
        with self._lock:
            left, self._futures, self._ended = list(self._futures.values()), {}, code
        for future in left:
            future.set_exception(_gone(code))

    def _resolve(self, task: int, ok: bool, value: Any) -> None:
        with self._lock:
            future = self._futures.pop(task)
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def _gone(code: int) -> WriterError:
    return WriterError(f"the metrics writer process ended (exit status {code}) before this write; "
                       "see its error above")


def settled() -> None:
    """A write of nothing: its answer says that every write submitted before it is done."""


def _portable(exc: BaseException) -> BaseException:
    """The error itself when it survives pickling (MLflow's do), else a WriterError saying the same."""
    try:
        return pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - whatever stops it travelling, its text still does
        return WriterError(f"{type(exc).__name__}: {exc}")


def _die_with(parent: int) -> None:
    """End this process when `parent` ends, as a thread would end with it."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the line above
        os._exit(0)


def _serve(parent: int, inbox: Connection, outbox: Connection, freeze: bool) -> None:
    from pipelines.tracking.run_writer import connect

    while True:
        try:
            data = inbox.recv_bytes()
        except EOFError:
            return
        if os.getppid() != parent:  # orphaned: a write now could land after a resume began
            os._exit(0)
        task, fn, args, kwargs = pickle.loads(data)
        try:
            reply = (task, True, fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - every error goes back to the loop, which decides
            reply = (task, False, _portable(exc))
        if freeze and fn is connect:  # a store's client is open: its engine and tables are here for good too
            gc.freeze()
        outbox.send_bytes(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))


def main(argv: list[str]) -> None:
    """The child: `python -m pipelines.tracking.writer_process PARENT_PID IN_FD OUT_FD FREEZE`."""
    parent, from_parent, to_parent, freeze = map(int, argv)
    _die_with(parent)
    # The writes' module, and MLflow with it (most of this process's start-up), imported before the
    # first task arrives, while the parent loads its inputs: not when that task's pickle names it.
    import pipelines.tracking.run_writer  # noqa: F401
    from pipelines.tracking.store import quiet_store_errors

    quiet_store_errors()
    # What is here now (MLflow, SQLAlchemy: some 300,000 objects) stays for the process's life: out of the
    # cyclic collector's sight. Otherwise each of its full collections, which the rows' ORM objects set
    # off every few thousand rows, walked them all: ~0.19 s every ~8,000 rows, a third of a writer's time
    # (13,200 rows/s into SQLite here; 20,500 with them frozen, and again once the store's client is open).
    if freeze:
        gc.freeze()
    _serve(parent, Connection(from_parent, writable=False), Connection(to_parent, readable=False), bool(freeze))
    # Every write is committed and answered: end without the interpreter's teardown (MLflow's and
    # SQLAlchemy's modules unloading), which took 0.55 s of every batch's end, waited for by the parent.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    # By its own name, not as __main__: a WriterError made here must unpickle in the parent.
    from pipelines.tracking.writer_process import main as _main

    _main(sys.argv[1:])
