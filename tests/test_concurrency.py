"""Two sweeps started at once on the same SQLite store both finish with every run intact."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipelines.tracking.checkpoint_store import checkpoint_steps

IMAGES = Path(__file__).resolve().parents[1] / "experiments" / "images"
STEPS = 20


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


@pytest.mark.heavy
def test_the_same_sweep_started_again_while_it_runs_is_refused_and_leaves_its_runs_alone(tmp_path, capsys) -> None:
    """A second command of a running sweep took its live RUNNING runs for interrupted ones and optimized them
    too: every step after the checkpoint it resumed from was in the store twice, and both commands exited 0."""
    from pipelines.cli import main

    store = f"sqlite:///{tmp_path}/store/mlflow.db"
    path = tmp_path / "busy.yaml"
    path.write_text(_sweep("busy").replace(f"iterations: {STEPS}", "iterations: 400"))
    command = ["experiment", str(path), "--tracking-uri", store, "--quiet"]
    first = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *command], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    client = MlflowClient(store)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and first.poll() is None:  # until both runs are RUNNING with a checkpoint
        experiment = client.get_experiment_by_name("busy") if (tmp_path / "store" / "mlflow.db").exists() else None
        runs = client.search_runs([experiment.experiment_id], "tags.`mlflow.parentRunId` != ''") if experiment else []
        if len(runs) == 2 and all(checkpoint_steps(r.data.tags) and r.info.status == "RUNNING" for r in runs):
            break
        time.sleep(0.3)
    assert first.poll() is None, "the first command ended before it could be caught running"

    capsys.readouterr()  # MLflow's own lines from opening the store above
    assert main(command) == 2  # refused before anything is written
    err = capsys.readouterr().err.strip()
    assert err.startswith("nst: error: sweep busy is already running on this store (process ")
    assert f"process {first.pid} on " in err and len(err.splitlines()) == 1

    _, out = first.communicate(timeout=300)
    assert first.returncode == 0, out[-2000:]
    for child in client.search_runs([experiment.experiment_id], "tags.`mlflow.parentRunId` != ''"):
        assert child.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "loss/total")]
        assert sorted(steps) == list(range(400))  # each step once
    assert main(command) == 0  # the lock went with the command: the same command now skips both runs
    assert capsys.readouterr().out.count("  skip ") == 2
