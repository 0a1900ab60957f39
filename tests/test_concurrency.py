"""Two sweeps started at once on the same SQLite store both finish with every run intact."""

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

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
