"""A sweep's lease on a tracking server: one command of a sweep at a time across machines.

sweep_lock's file lock keeps a second command of a running sweep out on one machine. Against a
tracking server the second command may run on another machine (a shared server's other user, a
scheduler that starts a job again elsewhere); it took the first one's live RUNNING runs for
interrupted ones, as the lock's docstring tells. The lease is a tag on the sweep's MLflow experiment
(`nst.lease.<sweep key>`), which any MLflow server keeps and a writer may set: who holds it, since
when, and when it last heard from itself.

MLflow has no compare-and-set, so the lease is taken by writing, waiting SETTLE seconds and reading
it back: of two commands that wrote it within that wait, the last writer holds it and the other is
refused. The holder writes its heartbeat every BEAT seconds. A lease is free when its holder ended
(it deletes the tag), when its heartbeat is older than STALE seconds (a kill -9, a lost machine: the
machines' clocks are taken to agree within STALE - BEAT, as NTP keeps them), or at once when its
holder was a process of this machine that is gone.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipelines.errors import UserError
from pipelines.execution import pids
from pipelines.tracking import store

PREFIX = "nst.lease."
BEAT = 10.0
STALE = 60.0
SETTLE = 0.5


@dataclass(frozen=True)
class Holder:
    """One command's claim on a sweep; `beat` is its last heartbeat (seconds since the epoch)."""

    token: str
    host: str
    pid: int
    since: float
    beat: float

    @classmethod
    def me(cls) -> Holder:
        now = time.time()
        return cls(uuid.uuid4().hex, socket.gethostname(), os.getpid(), now, now)

    def alive(self, now: float) -> bool:
        if self.host == socket.gethostname() and not pids.alive(self.pid):
            return False
        return now - self.beat < STALE

    def text(self, now: float) -> str:
        return (f"process {self.pid} on {self.host}, since {time.strftime('%H:%M:%S', time.localtime(self.since))}, "
                f"heard from {max(now - self.beat, 0):.0f} s ago")


def _holder(client: MlflowClient, experiment_id: str, key: str) -> Holder | None:
    value = client.get_experiment(experiment_id).tags.get(key)
    try:
        return Holder(**json.loads(value)) if value else None
    except (ValueError, TypeError):  # not a lease nst wrote: taken as free, and overwritten
        return None


def _refuse_if_held(client: MlflowClient, experiment_id: str, key: str, name: str, me: Holder) -> None:
    holder, now = _holder(client, experiment_id, key), time.time()
    if holder is not None and holder.token != me.token and holder.alive(now):
        raise UserError(f"sweep {name} is already running on this store ({holder.text(now)}); wait for it to end, "
                        f"or stop it (its runs resume), then run the same command again; a command that died "
                        f"without ending lets the sweep go {STALE:.0f} s after it was last heard from")


class _Heartbeat(threading.Thread):
    """Rewrites the lease every BEAT seconds while the sweep runs; stops (saying so) if another took it."""

    def __init__(self, uri: str, experiment_id: str, key: str, me: Holder) -> None:
        super().__init__(name="nst-sweep-lease", daemon=True)
        self.uri, self.experiment_id, self.key, self.me = uri, experiment_id, key, me
        self.done = threading.Event()

    def run(self) -> None:
        client = MlflowClient(self.uri)
        while not self.done.wait(BEAT):
            try:
                holder = _holder(client, self.experiment_id, self.key)
                if holder is not None and holder.token != self.me.token:
                    print(f"nst: warning: this sweep was not heard from for {STALE:.0f} s and "
                          f"{holder.text(time.time())} took it over; both now run its runs", file=sys.stderr)
                    return
                client.set_experiment_tag(self.experiment_id, self.key, _value(self.me, beat=time.time()))
            except (MlflowException, OSError):  # the server did not answer this once (requests' errors are
                # OSErrors): the next beat tries again
                continue


def _value(me: Holder, beat: float) -> str:
    return json.dumps({**asdict(me), "beat": beat})


@contextmanager
def sweep_lease(uri: str, experiment_id: str, name: str, sweep_key: str) -> Iterator[None]:
    """Held while the sweep runs; a second command of it, on any machine, is refused with one line naming the first."""
    client, key, me = MlflowClient(uri), PREFIX + sweep_key, Holder.me()
    _refuse_if_held(client, experiment_id, key, name, me)
    try:
        client.set_experiment_tag(experiment_id, key, _value(me, me.beat))
    except MlflowException as exc:  # a read-only user of a signed-in server: one line, before any work
        raise (store.denied(uri, exc) or exc) from None
    heartbeat = _Heartbeat(uri, experiment_id, key, me)
    try:  # from here on the lease is let go however the command ends (Ctrl-C in the wait, say)
        time.sleep(SETTLE)  # another command's write in the meantime wins; this one then reads it back
        _refuse_if_held(client, experiment_id, key, name, me)
        heartbeat.start()
        yield
    finally:
        heartbeat.done.set()
        if heartbeat.is_alive():
            heartbeat.join()
        with suppress(Exception):  # unreachable now: the lease goes stale by itself
            holder = _holder(client, experiment_id, key)
            if holder is not None and holder.token == me.token:
                client.delete_experiment_tag(experiment_id, key)
