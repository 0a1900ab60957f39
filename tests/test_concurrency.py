"""Two sweeps started at once on the same store both finish with every run intact; the same sweep started
again while it runs, on this machine or another, is refused and leaves the first one's runs alone."""

import os
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import pytest
from mlflow import MlflowClient

from benchmarks.cluster import tracking_server
from pipelines.execution.sweep_lease import PREFIX as LEASE
from pipelines.tracking.checkpoint_store import checkpoint_steps

IMAGES = Path(__file__).resolve().parents[1] / "experiments" / "images"
STEPS = 20
# The first command of a sweep a second one meets holds its loop at this step, after its first checkpoints,
# until the test lets it go: caught running on any device, however fast its steps (a GPU steps through 400
# tiny steps in ~2 s; the lane ran 4000 there, 2 min of its 4).
HOLD_AT = 12
CHILDREN = "tags.`mlflow.parentRunId` != ''"


def _sweep(name: str) -> str:
    return f"""
name: {name}
description: one of two sweeps sharing a store
base:
  preset: seed  # the slides' formulation: Adam, batchable (experiment files default to L-BFGS)
  content: {IMAGES / "grace_hopper.jpg"}
  style: {IMAGES / "the_kiss.jpg"}
  size: 32
  iterations: {STEPS}
  snapshots: [0, 10]
  checkpoint_every: 5
grid:
  optimizer.lr: [0.5, 1.0]
"""


@pytest.mark.heavy
def test_two_sweeps_share_one_sqlite_store(tmp_path) -> None:
    store = f"sqlite:///{tmp_path}/store/mlflow.db"
    processes = []
    for name in ("left", "right"):
        path = tmp_path / f"{name}.yaml"
        path.write_text(_sweep(name))
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli", "experiment", str(path), "--tracking-uri", store, "--quiet"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]
    client = MlflowClient(store)
    for name in ("left", "right"):
        runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert len(runs) == 3 and len(children) == 2
        assert all(r.info.status == "FINISHED" for r in runs)
        for child in children:
            steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "loss/total"))
            assert steps == list(range(STEPS))


def _held(tmp_path: Path) -> tuple[list[str], Path]:
    """(`nst` as a command line whose loop stops at step HOLD_AT until the file named exists, that file)."""
    release = tmp_path / "release"
    script = tmp_path / "held.py"
    script.write_text(f"""import sys, time
from pathlib import Path

from nst.module import StyleTransfer
from pipelines.cli import main

training_step = StyleTransfer.training_step

def held(self, *args, **kwargs):
    if self.trainer.global_step == {HOLD_AT}:
        while not Path({str(release)!r}).exists():
            time.sleep(0.05)
    return training_step(self, *args, **kwargs)

StyleTransfer.training_step = held
sys.exit(main(sys.argv[1:]))
""")
    return [sys.executable, str(script)], release


def _caught_running(client: MlflowClient, name: str, command: subprocess.Popen) -> str:
    """The experiment id of sweep `name` once both its runs are RUNNING with a checkpoint, `command` still running."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and command.poll() is None:
        with suppress(Exception):  # a SQLite store not made yet
            experiment = client.get_experiment_by_name(name)
            runs = client.search_runs([experiment.experiment_id], CHILDREN) if experiment else []
            if len(runs) == 2 and all(checkpoint_steps(r.data.tags) and r.info.status == "RUNNING" for r in runs):
                return experiment.experiment_id
        time.sleep(0.3)
    if command.poll() is None:
        pytest.fail("the first command was not caught running in 120 s")
    _, err = command.communicate()
    pytest.fail(f"the first command ended (exit {command.returncode}) before it could be caught running: {err[-2000:]}")


def _each_step_once(client: MlflowClient, experiment_id: str, command: subprocess.Popen, steps: int) -> None:
    """`command` ends well, and each of its runs is FINISHED with each step in the store once."""
    _, out = command.communicate(timeout=300)
    assert command.returncode == 0, out[-2000:]
    for child in client.search_runs([experiment_id], CHILDREN):
        assert child.info.status == "FINISHED"
        assert sorted(m.step for m in client.get_metric_history(child.info.run_id, "loss/total")) == list(range(steps))


@pytest.mark.heavy
def test_the_same_sweep_started_again_while_it_runs_is_refused_and_leaves_its_runs_alone(tmp_path, capsys,
                                                                                          store) -> None:
    """A second command of a running sweep took its live RUNNING runs for interrupted ones and optimized them
    too: every step after the checkpoint it resumed from was in the store twice, and both commands exited 0.
    The store is made before the command starts: this test's own client, polling a store not yet made, would
    create MLflow's schema alongside the command (outside nst's lock, pipelines.tracking.store) — CI once
    saw the command exit 1 that way."""
    from pipelines.cli import main

    path = tmp_path / "busy.yaml"
    path.write_text(_sweep("busy"))
    command = ["experiment", str(path), "--tracking-uri", store, "--quiet"]
    nst, release = _held(tmp_path)
    first = subprocess.Popen([*nst, *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = MlflowClient(store)
    experiment_id = _caught_running(client, "busy", first)

    capsys.readouterr()  # MLflow's own lines from opening the store above
    assert main(command) == 2  # refused before anything is written
    err = capsys.readouterr().err.strip()
    assert err.startswith("nst: error: sweep busy is already running on this store (process ")
    assert f"process {first.pid} on " in err and len(err.splitlines()) == 1

    release.touch()
    _each_step_once(client, experiment_id, first, STEPS)
    assert main(command) == 0  # the lock went with the command: the same command now skips both runs
    assert capsys.readouterr().out.count("  skip ") == 2


@pytest.mark.heavy
def test_the_same_sweep_from_another_machine_is_refused_while_it_runs(tmp_path) -> None:
    """Against a tracking server, each command with a temporary folder of its own, as on two machines:
    the file lock did not reach the other one, whose command resumed the first's live runs (in this
    test the old code crashed with a traceback on a checkpoint the first had just replaced). The
    sweep's lease in the store (pipelines.execution.sweep_lease) refuses it."""
    path = tmp_path / "shared.yaml"
    path.write_text(_sweep("shared"))
    nst, release = _held(tmp_path)

    def machine(name: str) -> dict[str, str]:
        (tmp_path / name).mkdir()
        return {**os.environ, "TMPDIR": str(tmp_path / name)}

    with tracking_server("sqlite") as server:
        command = [sys.executable, "-m", "pipelines.cli", "experiment", str(path), "--tracking-uri", server, "--quiet"]
        first = subprocess.Popen([*nst, *command[3:]], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=machine("a"))
        client = MlflowClient(server)
        experiment_id = _caught_running(client, "shared", first)

        b = machine("b")
        second = subprocess.run(command, capture_output=True, text=True, env=b, timeout=120)
        assert second.returncode == 2, second.stderr[-2000:]
        err = [line for line in second.stderr.splitlines() if line.startswith("nst:")]
        assert len(err) == 1 and "Traceback" not in second.stderr
        assert err[0].startswith(f"nst: error: sweep shared is already running on this store (process {first.pid} on ")

        release.touch()
        _each_step_once(client, experiment_id, first, STEPS)
        assert not [key for key in client.get_experiment(experiment_id).tags if key.startswith(LEASE)]
        again = subprocess.run(command, capture_output=True, text=True, env=b, timeout=120)
        assert again.returncode == 0 and again.stdout.count("  skip ") == 2  # the lease went with the first command
