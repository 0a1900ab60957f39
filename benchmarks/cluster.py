"""`make bench-cluster`: scale-out measured on this machine, written to BENCHMARKS.md's "Scale-out".

- grid throughput: one 4-point grid run locally, on Ray with one worker (2 threads), and on Ray
  with two workers (1 thread each), every run logging to an MLflow server on PostgreSQL;
- per-step logging cost: the same run tracked into local SQLite and into that server.

The local cluster and server (`local_ray`, `tracking_server`) are also the test suite's fixtures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from unittest.mock import patch

from benchmarks.bench import require_finished
from benchmarks.markdown import replace_section
from pipelines.config.grid import load_experiment
from pipelines.config.runs import run_config
from pipelines.execution.executors import Executor, run_local
from pipelines.execution.run import execute, quiet_lightning
from pipelines.execution.sweep import run_experiment
from pipelines.tracking.auth import ADMIN, APP, PASSWORD, USERNAME, AuthFolder, bootstrap
from pipelines.tracking.server import (
    Postgres,
    mlflow_server_command,
    start_mlflow_server,
    stop_mlflow_server,
    wait_until_up,
)

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "experiments" / "images"
HEADING = "## Scale-out: Ray workers and the tracking server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def tracking_server(db: str = "postgresql", sign_in: int | None = None) -> Iterator[str]:
    """`nst server`'s pieces on free loopback ports, in a temporary folder; yields its URL. `sign_in`:
    with MLflow's sign-in (nst's app), each credential trusted that many seconds once checked (0: checked
    every request), and this process (and its children) signed in as its admin meanwhile."""
    folder = Path(tempfile.mkdtemp(prefix="nst-server-"))
    folder.chmod(0o755)  # as root, PostgreSQL runs as `postgres`, who must be able to enter it
    postgres = Postgres(folder / "pg", free_port()) if db == "postgresql" else None
    signed_in = ExitStack()
    try:
        backend = postgres.start() if postgres else f"sqlite:///{folder}/mlflow.db"
        env: dict[str, str] = {}
        if sign_in is not None:
            auth = AuthFolder(folder / "auth")
            auth.prepare(postgres.database("mlflow_auth") if postgres else f"sqlite:///{folder}/users.db", sign_in)
            env = auth.server_env()
            bootstrap(env)
            signed_in.enter_context(patch.dict(os.environ, {USERNAME: ADMIN, PASSWORD: auth.admin_password()}))
        port = free_port()
        process = start_mlflow_server(
            mlflow_server_command(backend, folder / "artifacts", port=port, app=APP if sign_in is not None else None),
            env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_up(url, process)
            yield url
        finally:
            stop_mlflow_server(process)
    finally:
        signed_in.close()
        if postgres:
            postgres.stop()
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def local_ray(num_cpus: int = 2, num_gpus: int | None = None) -> Iterator[str]:
    """A Ray head on loopback (what `ray start --head` makes on a cluster's first host); `num_gpus`
    None: the GPUs Ray finds."""
    port = free_port()
    # `ray` as a module, not the script beside python: a `pip --target` install (a GPU machine's) has none.
    ray_cli = [sys.executable, "-m", "ray.scripts.scripts"]
    gpus = [] if num_gpus is None else ["--num-gpus", str(num_gpus)]
    # Ray 2.5x turns on token authentication once any local ray.init has written ~/.ray/auth_token;
    # this loopback cluster and its clients (this process and its children) run without it.
    os.environ["RAY_AUTH_MODE"] = "disabled"
    head = [*ray_cli, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus",
            str(num_cpus), *gpus, "--include-dashboard", "false", "--disable-usage-stats", "--object-store-memory",
            str(200 * 2**20)]
    started = subprocess.run(head, capture_output=True, text=True, cwd=ROOT)
    if started.returncode != 0:  # its last line says why (a port taken, GPUs it cannot see...)
        last = (started.stderr or started.stdout).strip().splitlines()[-1:]
        raise RuntimeError(f"ray start failed: {last[0] if last else f'exit status {started.returncode}'}")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([*ray_cli, "stop", "--force"], capture_output=True)


def grid_file(folder: Path, name: str, size: int, iterations: int, deterministic: bool = False) -> Path:
    """A 4-point grid (2 learning rates x 2 seeds) on the shipped sample images."""
    path = folder / f"{name}.yaml"
    path.write_text(f"""
name: {name}
base:
  preset: seed  # the slides' formulation: Adam, batchable (experiment files default to L-BFGS)
  content: {IMAGES / "grace_hopper.jpg"}
  style: {IMAGES / "starry_night.jpg"}
  size: {size}
  iterations: {iterations}
  checkpoint_every: 25
  snapshots: [0]
  deterministic: {str(deterministic).lower()}
grid:
  optimizer.lr: [0.1, 1.0]
seeds: [0, 1]
""")
    return path


def _sweep_seconds(path: Path, uri: str, executor: Executor) -> float:
    start = time.perf_counter()
    sweep = run_experiment(load_experiment(path, {}), tracking_uri=uri, progress=False, say=lambda _: None,
                           executor=executor)
    assert not sweep.failed, sweep.failed
    return time.perf_counter() - start


def logging_cost(uri: str, size: int, steps: int) -> tuple[float, float, float]:
    """(ms per step the loop spent logging, ms per step of the writer thread's CPU, s/iteration of the
    whole run) of one run into `uri`."""
    config = run_config({"content": str(IMAGES / "grace_hopper.jpg"), "style": str(IMAGES / "starry_night.jpg"),
                         "size": size, "iterations": steps, "snapshots": [0], "checkpoint_every": 100})
    result = execute(config, tracking_uri=uri, experiment="bench-logging", progress=False)
    require_finished(result, f"the logging-cost run into {uri}")
    return result.logging_seconds / steps * 1000, result.writer_seconds / steps * 1000, result.seconds / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench-cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=100)
    args = parser.parse_args(argv)
    quiet_lightning()
    from pipelines.execution.ray_executor import ray_executor

    lines = [HEADING, "",
             f"One grid of 4 runs ({args.size} px, {args.iterations} Adam steps each, 2 learning rates × 2 seeds),",
             "every run logging each step to an MLflow server on PostgreSQL (`nst server`), on this 2-core",
             "machine. Wall time from the driver's first call to the last run's end (start-up included).", "",
             "| executor | runs at a time × threads each | wall time | runs/minute | vs local |",
             "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp, tracking_server() as server, local_ray(num_cpus=2) as address:
        folder = Path(tmp)
        setups = [("local", "1 × 2", run_local),
                  ("ray", "1 × 2", ray_executor(address, {"num_cpus": 2})),
                  ("ray", "2 × 1", ray_executor(address, {"num_cpus": 1}))]
        local_seconds = 0.0
        for i, (name, shape, executor) in enumerate(setups):
            seconds = _sweep_seconds(grid_file(folder, f"throughput_{i}", args.size, args.iterations), server,
                                     executor)
            local_seconds = local_seconds or seconds
            lines.append(f"| {name} | {shape} | {seconds:.1f} s | {4 / seconds * 60:.1f} | "
                         f"{local_seconds / seconds:.2f}× |")
        lines += ["", "Per-step logging cost: one run (64 px, 300 steps, every loss of every step logged) tracked into",
                  "each store. The loop buffers each step's rows and hands them to a writer thread every 2 s; that",
                  "thread holds Python's interpreter lock for most of its CPU time, which a launch-bound loop (a",
                  "GPU's) then waits for. Against a server the SQL work runs in the server's processes.", "",
                  "| store | the loop's time in logging per step (its waits included) "
                  "| the writer thread's CPU per step | s/iteration of the run |",
                  "|---|---|---|---|"]
        local = f"sqlite:///{folder}/local/mlflow.db"
        (folder / "local").mkdir()
        for label, uri in (("local SQLite file", local), ("MLflow server on PostgreSQL (loopback)", server)):
            logging_cost(uri, 64, 20)  # warm-up: imports, weights, the experiment
            per_step, writer, iteration = logging_cost(uri, 64, 300)
            lines.append(f"| {label} | {per_step:.3f} ms | {writer:.3f} ms | {iteration * 1000:.1f} ms |")
    replace_section(args.out, HEADING, lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
