"""A store with no space left: recognized in whatever error a write raised (SQLite's "database or disk
is full", the file system's ENOSPC, PostgreSQL's, a tracking server's answer), and said in one line.

Every run after it would fail the same way, so a sweep stops there instead of failing point after
point. The runs it interrupted are marked KILLED where the store still takes that (else they stay
RUNNING): either way the same command, run again once there is space, resumes them from their last
checkpoint, as after kill -9.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlflow import MlflowClient

from pipelines.errors import UserError
from pipelines.tracking import run_log

#: How the ways of running out of space say so: SQLite, the OS (also as a tracking server's answer), PostgreSQL.
TEXTS = ("database or disk is full", "no space left on device", "could not extend file", "disk quota exceeded")
WHY = "no space left in the store"


class StoreFull(UserError):
    """The store took no more writes: nothing of nst's input is wrong, the disk is full."""


def _chain(exc: BaseException) -> list[BaseException]:
    """The error and those it was raised from or while handling."""
    out: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in out):
        out.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return out


def no_space(error: BaseException | str | None) -> bool:
    """Whether an error (or a run's error text) says the disk or the database is full."""
    if error is None:
        return False
    if isinstance(error, str):
        return any(text in error.lower() for text in TEXTS)
    return any((isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)) or no_space(str(e))
               for e in _chain(error))


def free_in(folder: Path) -> str:
    """`folder: 20 kB free`, of the nearest folder that exists."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return f"{folder}: ? free"
    return f"{folder}: {size_text(free)} free"


def size_text(n: int) -> str:
    """`20.0 kB`, `1.4 MB`, `7.5 GB` (powers of 1024)."""
    unit, size = next(((u, b) for u, b in (("GB", 2**30), ("MB", 2**20)) if n >= b), ("kB", 2**10))
    return f"{n / size:.1f} {unit}"


def written(error: BaseException) -> Path | None:
    """The file a write that failed was writing, when the error says."""
    return next((Path(e.filename) for e in _chain(error) if isinstance(e, OSError) and e.filename), None)


def store_full(uri: str, error: BaseException | None = None) -> StoreFull:
    """The one line: where space ran out (the store, or the folder of the file a write named), how much
    is left there, and what to do."""
    again = ("then run the same command again (finished runs are kept; a sweep's interrupted runs resume "
             "from their last checkpoint)")
    file = written(error) if error else None
    local = Path(uri.removeprefix("sqlite:///")).parent if uri.startswith("sqlite:///") else None
    if file and not (local and file.resolve().is_relative_to(local.resolve())):
        # Beside the store: a batch's copies of its inputs in the temporary folder ($TMPDIR), say.
        return StoreFull(f"no space left on the device ({free_in(file.parent)}): free some space there, {again}")
    if local is None:
        return StoreFull(f"{WHY} {uri}: its server's disk is full; ask its admin to free some, {again}")
    return StoreFull(f"{WHY} {uri} ({free_in(file.parent if file else local)}): free some space there, or give "
                     f"another store with --tracking-uri, {again}")


@contextmanager
def stop_when_full(uri: str) -> Iterator[None]:
    """Whatever ran out of space inside, as StoreFull for the store at `uri`."""
    try:
        yield
    except StoreFull:
        raise
    except Exception as exc:
        if no_space(exc):
            raise store_full(uri, exc) from None
        raise


def suspend(client: MlflowClient, samples: list[run_log.Sample]) -> None:
    """Mark a batch's unfinished runs KILLED (resumable) where the store still takes it: a full store often
    takes a small update after a large write failed. Where it does not, they stay RUNNING, resumable too."""
    for sample in samples:
        if sample.status == run_log.FINISHED:
            continue
        try:
            client.set_tag(sample.run_id, run_log.ERROR_TAG, f"{WHY}; run the same command again to resume it")
            client.set_terminated(sample.run_id, run_log.KILLED)
        except Exception:  # noqa: BLE001 - the store is full: what it cannot take stays as it was
            continue
        sample.status, sample.error = run_log.KILLED, WHY

