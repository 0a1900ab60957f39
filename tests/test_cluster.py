"""Scale-out with real components on loopback: a Ray cluster (2 worker CPUs) and an MLflow
server on PostgreSQL, both started here; the same grid run locally must give the same numbers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from benchmarks.cluster import grid_file, local_ray, tracking_server

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install '.[ray]' (make test installs it)")
# One Ray cluster at a time: under pytest-xdist (the GPU lane: --dist loadgroup) both tests go to one
# worker; dealt to two, two clusters on one machine made the second's rerun die (NodeDiedError).
pytestmark = pytest.mark.xdist_group("ray")

ROOT = Path(__file__).resolve().parents[1]
NST = [sys.executable, "-m", "pipelines.cli"]


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """`nst server`'s pieces: PostgreSQL in a temporary folder, MLflow's server in front of it."""
    with tracking_server("postgresql") as url:
        yield url


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A Ray head on loopback with 2 CPUs: two runs at a time, each in its own worker process."""
    with local_ray(num_cpus=2) as address:
        yield address


def _nst(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    return subprocess.run([*NST, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)


def _children(uri: str, name: str) -> tuple[list, list]:
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return parents, [r for r in runs if "mlflow.parentRunId" in r.data.tags]


@pytest.mark.cpu_only("Ray's default 1-CPU tasks see no GPU, so its runs and the local ones ran on different devices")
def test_ray_grid_logs_to_postgres_server_and_matches_local(server, cluster, tmp_path) -> None:
    grid = grid_file(tmp_path, "ray_grid", size=32, iterations=20)
    # Two batches of two: one Ray task per batch, not per point.
    done = _nst("experiment", str(grid), "--executor", "ray", "--ray-address", cluster,
                "--tracking-uri", server, "--quiet", "--batch", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("(a batch of 2) on Ray") == 4
    parents, children = _children(server, "ray_grid")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
    # Two worker processes shared the work, a batch each.
    pids = [c.data.tags["nst.pid"] for c in children]
    assert len(set(pids)) == 2 and all(pids.count(p) == 2 for p in pids)

    local = f"sqlite:///{tmp_path}/local/mlflow.db"
    # A Ray task gets 1 CPU, so 1 torch thread; with 2 threads the float sums run in another order
    # (J differs in the 7th digit). Same threads, same seeds: the same bits.
    again = _nst("experiment", str(grid), "--tracking-uri", local, "--quiet", "--batch", "2",
                 env_extra={"OMP_NUM_THREADS": "1"})
    assert again.returncode == 0, again.stderr[-2000:]
    _, local_children = _children(local, "ray_grid")
    on_ray = {c.data.tags["nst.run_key"]: c.data.metrics for c in children}
    here = {c.data.tags["nst.run_key"]: c.data.metrics for c in local_children}
    assert on_ray.keys() == here.keys()
    for key in here:
        for metric in ("loss/total", "loss/content", "loss/style"):
            assert on_ray[key][metric] == here[key][metric], (key, metric)


def test_killed_ray_worker_leaves_run_killed_and_rerun_completes_it(server, cluster, tmp_path) -> None:
    grid = grid_file(tmp_path, "ray_kill", size=64, iterations=300)
    command = [*NST, "experiment", str(grid), "--executor", "ray", "--ray-address", cluster,
               "--tracking-uri", server, "--quiet", "--batch", "2"]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    client = MlflowClient(server)
    victim = None
    deadline = time.monotonic() + 300
    while victim is None and time.monotonic() < deadline:  # a run past its first checkpoint
        time.sleep(1)
        experiment = client.get_experiment_by_name("ray_kill")
        if experiment is None:
            continue
        for run in client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'"):
            steps = client.get_metric_history(run.info.run_id, "loss/total")
            if "mlflow.parentRunId" in run.data.tags and len(steps) > 60:
                victim = run
                break
    assert victim is not None, "no run got past step 60"
    os.kill(int(victim.data.tags["nst.pid"]), signal.SIGKILL)
    _, err = driver.communicate(timeout=600)
    assert driver.returncode == 1, err[-2000:]
    killed = client.get_run(victim.info.run_id)
    assert killed.info.status == "KILLED"
    assert "Ray worker died" in killed.data.tags["nst.error"]
    _, children = _children(server, "ray_kill")
    # The killed worker's batch is KILLED, both its runs; the other batch FINISHED.
    assert sorted(c.info.status for c in children) == ["FINISHED", "FINISHED", "KILLED", "KILLED"]

    rerun = _nst("experiment", str(grid), "--executor", "ray", "--ray-address", cluster,
                 "--tracking-uri", server, "--quiet", "--batch", "2")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"resume run {victim.info.run_id}" in rerun.stdout
    parents, children = _children(server, "ray_kill")
    assert len(parents) == 1 and len(children) == 4
    assert {c.info.status for c in children} == {"FINISHED"}
    steps = [m.step for m in client.get_metric_history(victim.info.run_id, "loss/total")]
    assert steps == list(range(300))  # resumed in place: every step once
