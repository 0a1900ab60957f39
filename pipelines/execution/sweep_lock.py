"""One invocation of a sweep at a time per store.

Running a sweep resumes its RUNNING runs, taking them for the runs of a command that died (kill -9,
a lost machine). The same command started again while the first still runs took its live runs the
same way: both optimized them, and every step after the resumed checkpoint was in the store twice
(measured: 3250 rows for 2000 steps, both commands exit 0). A sweep's command now holds a lock for
the sweep (its name and sweep key) on its store: an advisory file lock, which the system lets go
when the process ends however it ends, so a kill -9's sweep can be run again at once. The lock
lives beside a SQLite store's database; for any other store (a tracking server, a database), in this
machine's temporary folder, so it keeps out a second command on this machine, and a lease in the store
(pipelines.execution.sweep_lease) keeps out one on another machine.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from pipelines.errors import UserError
from pipelines.execution.sweep_lease import sweep_lease


def _local(uri: str) -> bool:
    """A SQLite file: the processes that write it share the machine (and the file lock) with it."""
    return uri.startswith("sqlite:///")


def _lock_file(uri: str, name: str, sweep_key: str) -> Path:
    if _local(uri):
        folder = Path(uri.removeprefix("sqlite:///")).resolve().parent / ".nst-locks"
    else:
        digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
        folder = Path(tempfile.gettempdir()) / f"nst-locks-{os.getuid()}" / digest
    return folder / f"{name}.{sweep_key}.lock"


@contextmanager
def sweep_lock(uri: str, experiment_id: str, name: str, sweep_key: str) -> Iterator[None]:
    """Held while the sweep (in MLflow experiment `experiment_id`) runs here; a second holder is refused
    with one line naming the first."""
    path = _lock_file(uri, name, sweep_key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise UserError(f"sweep {name} is already running on this store ({holder}); wait for it to end, or "
                            "stop it (its runs resume), then run the same command again") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"process {os.getpid()} on {socket.gethostname()}, since {time.strftime('%H:%M:%S')}")
        lock.flush()
        with nullcontext() if _local(uri) else sweep_lease(uri, experiment_id, name, sweep_key):
            yield
