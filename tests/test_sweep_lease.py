"""The sweep's lease on a tracking server: refused while held, taken when its holder is gone, one holder of
two at once, a heartbeat (the two-machine sweep itself: tests/test_concurrency.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
from mlflow import MlflowClient

from benchmarks.cluster import tracking_server
from pipelines.errors import UserError
from pipelines.execution import sweep_lease
from pipelines.execution.sweep_lease import PREFIX, STALE
from pipelines.tracking import store

KEY = "0123abcd"


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """`nst server`'s pieces on SQLite, on a free loopback port."""
    with tracking_server("sqlite") as url:
        yield url


def _experiment(server: str, name: str) -> tuple[MlflowClient, str]:
    client = MlflowClient(server)
    return client, store.experiment_id(client, name, server)


def _lease(client: MlflowClient, experiment_id: str) -> dict | None:
    value = client.get_experiment(experiment_id).tags.get(PREFIX + KEY)
    return json.loads(value) if value else None


def _other(host: str = "elsewhere", pid: int = 4242, heard: float = 1.0) -> str:
    now = time.time()
    return json.dumps({"token": "theirs", "host": host, "pid": pid, "since": now - 300, "beat": now - heard})


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


lease_only = pytest.mark.cpu_only("the lease is the store's requests: no transfer runs")


@lease_only
def test_a_lease_heard_from_lately_refuses_the_sweep_and_is_left_as_it_was(server) -> None:
    client, exp = _experiment(server, "held")
    client.set_experiment_tag(exp, PREFIX + KEY, _other(heard=5))
    with pytest.raises(UserError) as refused, sweep_lease.sweep_lease(server, exp, "held", KEY):
        pytest.fail("the sweep ran while another command held it")
    assert str(refused.value).startswith("sweep held is already running on this store (process 4242 on elsewhere, "
                                         "since ")
    assert "heard from 5 s ago" in str(refused.value) and f"{STALE:.0f} s after" in str(refused.value)
    assert _lease(client, exp)["token"] == "theirs"


@lease_only
@pytest.mark.parametrize("holder", ["silent for longer than STALE", "a process of this machine that is gone"])
def test_a_lease_whose_holder_is_gone_is_taken_and_let_go_at_the_end(server, holder) -> None:
    client, exp = _experiment(server, f"gone-{holder.split()[0]}")
    other = (_other(heard=STALE + 5) if holder.startswith("silent")
             else _other(host=socket.gethostname(), pid=_dead_pid(), heard=1))
    client.set_experiment_tag(exp, PREFIX + KEY, other)
    with sweep_lease.sweep_lease(server, exp, "gone", KEY):
        mine = _lease(client, exp)
        assert mine["pid"] == os.getpid() and mine["host"] == socket.gethostname()
    assert _lease(client, exp) is None


@lease_only
def test_of_two_commands_taking_the_lease_at_once_one_holds_it(server) -> None:
    _, exp = _experiment(server, "race")
    start, outcomes = threading.Barrier(2), []

    def take() -> None:
        start.wait()
        try:
            with sweep_lease.sweep_lease(server, exp, "race", KEY):
                outcomes.append("held")
                time.sleep(1.0)  # the other's read-back falls inside this
        except UserError:
            outcomes.append("refused")

    threads = [threading.Thread(target=take) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["held", "refused"]


@lease_only
def test_the_holder_beats_and_says_so_when_another_took_the_lease_over(server, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sweep_lease, "BEAT", 0.05)
    client, exp = _experiment(server, "beats")
    with sweep_lease.sweep_lease(server, exp, "beats", KEY):
        first = _lease(client, exp)["beat"]
        time.sleep(0.5)
        assert _lease(client, exp)["beat"] > first
        client.set_experiment_tag(exp, PREFIX + KEY, _other())  # as a command that took it for a dead one's
        time.sleep(0.5)
    assert "took it over; both now run its runs" in capsys.readouterr().err
    assert _lease(client, exp)["token"] == "theirs"  # not the holder's to delete any more


@lease_only
def test_ctrl_c_while_the_lease_settles_lets_it_go(server, monkeypatch) -> None:
    client, exp = _experiment(server, "interrupted")

    def ctrl_c(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep_lease.time, "sleep", ctrl_c)
    with pytest.raises(KeyboardInterrupt), sweep_lease.sweep_lease(server, exp, "interrupted", KEY):
        pytest.fail("the sweep ran after Ctrl-C")
    assert _lease(client, exp) is None  # another machine need not wait for it to go stale
