"""Scale-out with real components on loopback: a Ray cluster (2 worker CPUs) and an MLflow
server on PostgreSQL, both started here; the same grid run locally must give the same numbers.
On the GPU lane, Ray's batches take the GPU by `--resources '{"num_gpus": ...}'`."""

from __future__ import annotations

import importlib.util
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
from pipelines.errors import UserError
from pipelines.tracking.server import _pg_bin
from tests.lane import DEVICE, ON_GPU, gpu_only

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install '.[ray]' (make test installs it)")
# One Ray cluster at a time: under pytest-xdist (both lanes: --dist loadgroup) these tests go to one
# worker, with test_auth's; dealt to two, two clusters on one machine made the second's rerun die
# (NodeDiedError).
pytestmark = [pytest.mark.xdist_group("ray"), pytest.mark.heavy]

ROOT = Path(__file__).resolve().parents[1]
NST = [sys.executable, "-m", "pipelines.cli"]


def _env() -> dict[str, str]:
    """The checkout first on the path, then what it had: a GPU machine finds mlflow and Ray there (.whl/env.sh)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """`nst server`'s pieces: PostgreSQL in a temporary folder, MLflow's server in front of it."""
    if ON_GPU:  # a GPU machine need not have them; `make test` installs both for the CPU lane
        try:
            _pg_bin("initdb")
            if importlib.util.find_spec("psycopg2") is None:
                raise UserError("psycopg2 is not installed")
        except UserError as exc:
            pytest.skip(f"no PostgreSQL for the tracking server here: {exc}")
    with tracking_server("postgresql") as url:
        yield url


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A Ray head on loopback with 2 CPUs: two runs at a time, each in its own worker process."""
    with local_ray(num_cpus=2) as address:
        yield address


def _nst(*args: str, env_extra: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**_env(), **(env_extra or {})}
    return subprocess.run([*NST, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)


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
    _assert_a_batch_per_worker(children)
    # A Ray task gets 1 CPU, so 1 torch thread; with 2 threads the float sums run in another order
    # (J differs in the 7th digit). Same threads, same seeds: the same bits.
    _assert_same_as_local(grid, "ray_grid", children, tmp_path)


def _assert_a_batch_per_worker(children: list) -> None:
    """Two worker processes shared the work, a batch each."""
    pids = [c.data.tags["nst.pid"] for c in children]
    assert len(set(pids)) == 2 and all(pids.count(p) == 2 for p in pids)


def _assert_same_as_local(grid: Path, name: str, children: list, tmp_path: Path) -> None:
    """The grid run here, in batches of 2 with 1 torch thread as a 1-CPU Ray task has, gives the
    same bits in every run's final losses as it gave on Ray."""
    local = f"sqlite:///{tmp_path}/local/mlflow.db"
    again = _nst("experiment", str(grid), "--tracking-uri", local, "--quiet", "--batch", "2",
                 env_extra={"OMP_NUM_THREADS": "1"})
    assert again.returncode == 0, again.stderr[-2000:]
    _, local_children = _children(local, name)
    on_ray = {c.data.tags["nst.run_key"]: c.data.metrics for c in children}
    here = {c.data.tags["nst.run_key"]: c.data.metrics for c in local_children}
    assert on_ray.keys() == here.keys()
    for key in here:
        for metric in ("loss/total", "loss/content", "loss/style"):
            assert on_ray[key][metric] == here[key][metric], (key, metric)


def _ray_logs(lines: int = 15) -> str:
    """The end of each error log of the latest local Ray session: why a task never came back."""
    logs = sorted(Path("/tmp/ray/session_latest/logs").glob("*.err"))
    return "\n".join(f"== {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
                     for log in logs if log.stat().st_size)


@gpu_only
def test_ray_batches_share_the_gpu_and_give_the_local_bits(tmp_path) -> None:
    """Two batches at once on one GPU, half of it each, logging from their workers to one SQLite
    store; with deterministic kernels, the same bits as the same batches run here."""
    grid = grid_file(tmp_path, "ray_gpu", size=64, iterations=30, deterministic=True)
    on_ray = f"sqlite:///{tmp_path}/ray/mlflow.db"
    with local_ray(num_cpus=2, num_gpus=1) as address:
        try:
            done = _nst("experiment", str(grid), "--executor", "ray", "--ray-address", address, "--tracking-uri",
                        on_ray, "--quiet", "--batch", "2", "--resources", '{"num_gpus": 0.5}', timeout=180)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the sweep on Ray did not end within 180 s; Ray's logs:\n{_ray_logs()}")
        assert done.returncode == 0, f"{done.stderr[-2000:]}\nRay's logs:\n{_ray_logs()}"
    assert done.stdout.count("(a batch of 2) on Ray") == 4
    _, children = _children(on_ray, "ray_gpu")
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.tags["nst.device"] for c in children} == {DEVICE}
    _assert_a_batch_per_worker(children)
    # With deterministic kernels the GPU gives the same bits; the start images are made on the CPU.
    _assert_same_as_local(grid, "ray_gpu", children, tmp_path)


def test_killed_ray_worker_leaves_run_killed_and_rerun_completes_it(server, cluster, tmp_path) -> None:
    grid = grid_file(tmp_path, "ray_kill", size=64, iterations=300)
    command = [*NST, "experiment", str(grid), "--executor", "ray", "--ray-address", cluster,
               "--tracking-uri", server, "--quiet", "--batch", "2"]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                              env=_env())
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


def test_a_full_store_on_a_worker_stops_the_sweep_where_other_errors_fail_its_batch(tmp_path, store) -> None:
    """As run locally: a full store stops the sweep (every batch after it would fail the same way); bad
    input seen on a worker fails that batch's runs and the sweep goes on."""
    from ray.exceptions import RayTaskError

    from pipelines.config.grid import load_experiment
    from pipelines.execution.executors import Job, Task
    from pipelines.execution.ray_executor import task_failed
    from pipelines.execution.run import RunSpec
    from pipelines.tracking.space import StoreFull

    point = load_experiment(grid_file(tmp_path, "full", size=32, iterations=2)).points[0]
    job, client = Job([Task(point, RunSpec(point.config))], store, "x"), MlflowClient(store)
    full = StoreFull("no space left in the store x")
    with pytest.raises(StoreFull) as raised:
        task_failed(client, job, RayTaskError("execute", "traceback", full))
    assert raised.value is full
    (failed,) = task_failed(client, job, RayTaskError("execute", "traceback", UserError("a bad photo")))
    assert (failed.status, failed.error) == ("FAILED", "a bad photo")
