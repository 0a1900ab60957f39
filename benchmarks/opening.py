"""A batch into a tracking server: its runs opened one at a time against several at once (and the same
into a SQLite file), the whole tracked batch written by one process against nst's choice of writers,
and a sweep read back by `nst report` one run at a time against several at once (`make bench-batch`'s
"A batch into a tracking server"); then a sweep written and read back signed in, each password checked
every request against once a minute ("A sweep signed in"). Both: `python -m benchmarks.opening`; each
alone: `python -m benchmarks.batch --opening`, `--signed-in`.

A run is opened with four requests or more (the run and its tags before its batch's fit starts; its
params, its input images and config.yaml as its writer's first write); a batch of 64 makes 256 of them.
A tracking server answers them in parallel, a SQLite file one writer at a time
(pipelines.execution.opening.open_runs).
"""

from __future__ import annotations

import logging
import tempfile
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import torch
from mlflow import MlflowClient

from benchmarks.cluster import tracking_server
from benchmarks.device import bench_parser, pick
from benchmarks.loops import grid_file, point_configs, require_all, run_specs
from benchmarks.markdown import Section
from benchmarks.stores import new_store
from pipelines.config.grid import load_experiment
from pipelines.errors import UserError
from pipelines.execution.inputs import Inputs, load_inputs
from pipelines.execution.opening import open_runs
from pipelines.execution.run import RunSpec, execute_batch
from pipelines.execution.sweep import run_experiment
from pipelines.reports.readback import load_sweep
from pipelines.tracking import store
from pipelines.tracking.auth import AUTH_CACHE_SECONDS
from pipelines.tracking.store import REMOTE_REQUESTS
from pipelines.tracking.writers import auto_writer, writer_count

HEADING = "## A batch into a tracking server"
SIGNED_IN = "## A sweep signed in"


def opening(device: torch.device, smoke: bool, out: Path) -> None:
    """The section: the wall of opening a batch's runs, one at a time against REMOTE_REQUESTS at a time."""
    n = 4 if smoke else 64
    specs = run_specs(point_configs(n), 64, 2, device)
    section = Section(out, [HEADING, "", f"A batch of {n} runs opened until whole (each run created with its tags, "
                      "then its params, input images", "and config.yaml written by its writer) on this CPU, into a "
                      "SQLite file made beforehand and into `nst server`'s pieces on", "loopback (SQLite behind them, "
                      f"no sign-in), with as many writer threads as runs opened at a time. nst opens them "
                      f"{REMOTE_REQUESTS} at a time against a server, one at a time into a file.", "",
                      f"| store | one at a time | {REMOTE_REQUESTS} at a time | faster |", "|---|---|---|---|"])
    inputs = load_inputs(specs[0].config)
    choice = auto_writer(device.type, n, remote=True)
    with tempfile.TemporaryDirectory() as tmp:
        inputs.write(Path(tmp) / "inputs")
        section.add(_row("SQLite file", new_store(Path(tmp) / "store"), specs, inputs, device, Path(tmp) / "file"))
        label = "tracking server (SQLite behind it)"
        try:
            with tracking_server("sqlite") as server:
                section.add(_row(label, server, specs, inputs, device, Path(tmp) / "server"))
                one, processes = (_whole_batch(server, specs, w) for w in ("process:1", "process"))
                # nst's choice on a GPU is those processes: measured once
                chosen = processes if choice == "process" else _whole_batch(server, specs, "auto")
                sweep, _, (read_one, read_many) = _sweep_through(server, Path(tmp) / "open", 2 if smoke else 3)
        except UserError as exc:  # no server on this machine (mlflow-skinny alone): the row says so
            section.add(f"| {label} | not measured: {exc} | — | — |")
            return
    count = writer_count(choice, n, remote=True)
    section.lines += ["", f"The whole tracked batch ({n} runs of 2 steps at 64 px: opened, fitted, its rows, snapshots "
                      "and final images", "written, its runs ended) into that server, written by one writer process, "
                      f"by {count} (a GPU's choice into a server), and by", f"nst's choice for it here ({count} writer "
                      f"{choice}{'s' if count > 1 else ''}):", "",
                      f"| batch | one writer process | {count} writer processes | nst's choice "
                      f"| faster: {count} processes | faster: nst's choice |", "|---|---|---|---|---|---|"]
    section.add(f"| {n} runs | {one:.2f} s | {processes:.2f} s | {chosen:.2f} s | {one / processes:.1f}× "
                f"| {one / chosen:.1f}× |")
    section.lines += ["", f"A sweep of {sweep} short runs read back from that server by `nst report` (each run's "
                      "losses, snapshots, input", "and final images: about ten requests), one run at a time against "
                      f"{REMOTE_REQUESTS} at a time (what nst does with a server):", "",
                      f"| sweep | one at a time | {REMOTE_REQUESTS} at a time | faster |", "|---|---|---|---|"]
    section.add(f"| {sweep} runs | {read_one:.2f} s | {read_many:.2f} s | {read_one / read_many:.1f}× |")


def signed_in(device: torch.device, smoke: bool, out: Path) -> None:
    """The section of a sweep written into, and read back from, a server with sign-in, each password checked
    at every request against once every AUTH_CACHE_SECONDS."""
    which = "A sweep of 1 run" if smoke else "A sweep of 27 short runs"
    section = Section(out, [
        SIGNED_IN, "", f"{which} written into `nst server` with sign-in (SQLite behind it, its admin signed in) "
        "and read back", f"{REMOTE_REQUESTS} at a time, each request's password checked against its "
        "hash every time (MLflow's default) and once", f"every {AUTH_CACHE_SECONDS} s per credential "
        "and server worker (nst's: pipelines.tracking.auth.AUTH_CACHE_SECONDS):", "",
        "| password checked | sweep written | read back | faster: written | faster: read back |",
        "|---|---|---|---|---|"])
    walls = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for seconds in (0, AUTH_CACHE_SECONDS):  # MLflow's default, nst's
                with tracking_server("sqlite", sign_in=seconds) as server:
                    _, written, (read,) = _sweep_through(server, Path(tmp) / f"auth-{seconds}", 1 if smoke else 3,
                                                         (REMOTE_REQUESTS,))
                walls.append((written, read))
        except UserError as exc:  # no sign-in server here (a GPU machine's mlflow without its server extras)
            section.add(f"| every request | not measured: {exc} | — | — | — |")
            return
    (every_write, every_read), (cached_write, cached_read) = walls
    section.add(f"| every request | {every_write:.2f} s | {every_read:.2f} s | — | — |")
    section.add(f"| once every {AUTH_CACHE_SECONDS} s | {cached_write:.2f} s | {cached_read:.2f} s "
                f"| {every_write / cached_write:.1f}× | {every_read / cached_read:.1f}× |")


def _sweep_through(server: str, folder: Path, side: int, threads: tuple[int, ...] = (1, REMOTE_REQUESTS)
                   ) -> tuple[int, float, list[float]]:
    """A sweep of side³ short runs into `server`: (runs, wall of the sweep, walls of load_sweep `threads` at
    a time)."""
    folder.mkdir(parents=True)
    experiment = load_experiment(grid_file(folder, 32, 2, side))
    start = time.perf_counter()
    run_experiment(experiment, tracking_uri=server, progress=False, say=lambda _: None)
    written = time.perf_counter() - start
    client, walls = MlflowClient(server), []
    for count in threads:
        start = time.perf_counter()
        load_sweep(client, experiment.name, threads=count)
        walls.append(time.perf_counter() - start)
    return len(experiment.points), written, walls


def _whole_batch(server: str, specs: list[RunSpec], writer: str) -> float:
    """Wall seconds of one tracked batch into `server`, its runs written by `writer`; every run FINISHED."""
    start = time.perf_counter()
    results = execute_batch(specs, tracking_uri=server, experiment=f"whole-{writer}", progress=False, writer=writer)
    seconds = time.perf_counter() - start
    require_all(results, f"the batch into a tracking server ({writer})")
    return seconds


def _row(label: str, uri: str, specs: list[RunSpec], inputs: Inputs, device: torch.device, folder: Path) -> str:
    _open(uri, specs[:2], inputs, device, folder / "warm", 1)  # the first requests: a cold server's workers
    one, many = (_open(uri, specs, inputs, device, folder / str(t), t) for t in (1, REMOTE_REQUESTS))
    return f"| {label} | {one:.2f} s | {many:.2f} s | {one / many:.1f}× |"


def _open(uri: str, specs: list[RunSpec], inputs: Inputs, device: torch.device, folder: Path, threads: int) -> float:
    """Wall seconds of opening `specs`' runs `threads` at a time, in an experiment of their own, until
    they are whole: each run's params, input images and config.yaml are its writer's first write, and
    the runs are dealt out to `threads` writer threads."""
    client = MlflowClient(uri)
    experiment = store.experiment_id(client, f"opening-{folder.parent.name}-{folder.name}", uri)
    start = time.perf_counter()
    with ExitStack() as stack:  # on the way out, each writer has done its writes
        lent: list[Executor] = [stack.enter_context(ThreadPoolExecutor(1)) for _ in range(threads)]
        open_runs(client, specs, inputs, experiment, device.type, folder, lent, threads=threads)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("bench-opening", __doc__, smoke="4 runs: checks the code, not the speed")
    args = parser.parse_args(argv)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    device = pick(parser, args)
    opening(device, args.smoke, args.out)
    signed_in(device, args.smoke, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
