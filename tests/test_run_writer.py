"""The runs' metrics are written beside the optimization, by a thread or a process
(pipelines/tracking/run_writer.py, writer_process.py): every step reaches a real SQLite store once,
in step order, a store that fails is not hidden, and a writer process dies with its parent."""

from __future__ import annotations

import copy
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from PIL import Image

from nst.images import to_pil
from pipelines.cli import main
from pipelines.config.grid import Point
from pipelines.config.runs import run_config
from pipelines.errors import UserError
from pipelines.execution import executors, opening, ray_executor
from pipelines.execution.executors import Job, Task
from pipelines.execution.run import FAILED, FINISHED, RunSpec, execute, execute_batch
from pipelines.tracking import checkpoint_store, run_log, run_writer, writers
from pipelines.tracking.checkpoint_store import CHECKPOINT_STEP_TAG, download_checkpoint
from pipelines.tracking.fit_times import CHECKPOINTS, PARTS, READ_BACK, ROWS, SNAPSHOTS, WRITERS
from pipelines.tracking.run_log import logged_snapshot_steps
from pipelines.tracking.run_writer import RunWriter, upload_file, whole_steps, write_rows
from pipelines.tracking.writers import WRITER_ENV, auto_writer, open_writer, parse_writer, writer_count
from tests.lane import ON_GPU

KEYS = ["loss/total", "loss/content", "loss/style", "lr"]


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_every_step_reaches_the_store_once_in_step_order(store, kind) -> None:
    client = MlflowClient(store)
    run_id = client.create_run(client.create_experiment("rows")).info.run_id
    with open_writer(kind) as writer:
        rows = RunWriter(store, run_id, writer, skip_through=9, flush_seconds=0.0)
        for step in range(600):
            rows.log({k: float(step) for k in KEYS}, step)
            if step % 50 == 49:
                rows.flush(due_only=True, wait=False)  # handed to the writer; the loop goes on
        rows.flush()  # waits: every row so far is in the store
        assert rows.writer_seconds > 0  # the writer's CPU, which the bench reports
        for key in KEYS:
            assert [m.step for m in client.get_metric_history(run_id, key)] == list(range(10, 600)), key
    # The order the rows reached the store in: SQLite's row ids count the inserts.
    with sqlite3.connect(store.removeprefix("sqlite:///")) as db:
        inserted = [step for (step,) in db.execute(
            "SELECT step FROM metrics WHERE key = 'loss/total' ORDER BY rowid")]
    assert inserted == list(range(10, 600))


def test_a_store_that_fails_mid_run_ends_the_run_failed_with_its_error(store, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(WRITER_ENV, "thread")  # the fault is patched into this process (a GPU would pick a process)
    images = Path(__file__).resolve().parents[1] / "experiments" / "images"
    config = run_config({"content": str(images / "grace_hopper.jpg"), "style": str(images / "starry_night.jpg"),
                         "size": 32, "iterations": 120, "snapshots": [0], "checkpoint_every": 50})
    log_batch = MlflowClient.log_batch
    writes = []

    def fails_on_the_second_metrics_write(self, run_id, metrics=(), **kwargs):
        if metrics:
            writes.append(len(metrics))
            if len(writes) == 2:
                raise MlflowException("disk I/O error")
        return log_batch(self, run_id, metrics=metrics, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", fails_on_the_second_metrics_write)
    result = execute(config, tracking_uri=store, experiment="broken", progress=False)
    assert result.status == FAILED
    assert "disk I/O error" in (result.error or "")
    assert MlflowClient(store).get_run(result.run_id).info.status == FAILED


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_a_write_asked_for_waits_for_the_store(store, kind) -> None:
    client = MlflowClient(store)
    run_id = client.create_run(client.create_experiment("wait")).info.run_id
    with open_writer(kind) as writer:
        rows = RunWriter(store, run_id, writer)
        rows.log({"loss/total": 1.0}, 0)
        rows.flush()
        assert [m.step for m in client.get_metric_history(run_id, "loss/total")] == [0]


def test_a_write_that_fails_in_the_writer_process_raises_its_error_in_the_loop(store) -> None:
    with open_writer("process") as writer:
        rows = RunWriter(store, "no-such-run", writer)
        rows.log({"loss/total": 1.0}, 0)
        with pytest.raises(MlflowException, match="no-such-run"):
            rows.flush()


@pytest.mark.parametrize("freeze", [True, False])
def test_a_writer_process_keeps_its_long_lived_objects_from_the_collector(store, freeze) -> None:
    """nst's writer processes freeze what they hold once their store's client is open (MLflow, SQLAlchemy,
    the engine): the cyclic collector, set off by the rows' ORM objects, then never walks them (its full
    collections took a third of a writer's time: benchmarks.writers times both ways)."""
    import gc

    from pipelines.tracking.writer_process import WriterProcess

    with WriterProcess(freeze) as writer:
        writers.connect([writer], store)
        frozen = writer.submit(gc.get_freeze_count).result()
    assert frozen > 100_000 if freeze else frozen == 0


def test_the_writer_process_dies_with_its_parent(tmp_path) -> None:
    # A killed loop's writes must not go on landing while the same command resumes the run.
    parent = subprocess.Popen(
        [sys.executable, "-c", "import time; from pipelines.tracking.writer_process import WriterProcess; "
         "w = WriterProcess(); print(w._child.pid, flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the writer process outlived the process it wrote for"


def _alive(pid: int) -> bool:
    """Running (not a zombie waiting for its exit status to be read)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_a_write_never_cuts_a_steps_rows_in_two() -> None:
    # 10 losses a step and, at snapshot steps, 3 quality metrics more: 1,000-row cuts would split steps.
    rows = [Metric(f"m{k}", 1.0, 0, step) for step in range(500) for k in range(13 if step % 7 == 0 else 10)]
    chunks = list(whole_steps(rows))
    assert [m for chunk in chunks for m in chunk] == rows
    assert all(len(chunk) <= 1000 for chunk in chunks) and len(chunks) > 1
    for before, after in pairwise(chunks):
        assert before[-1].step != after[0].step


def _config(iterations: int, **keys: object):
    images = Path(__file__).resolve().parents[1] / "experiments" / "images"
    return run_config({"content": str(images / "grace_hopper.jpg"), "style": str(images / "starry_night.jpg"),
                       "size": 32, "iterations": iterations, **keys})


def test_checkpoints_are_saved_on_the_writer_thread_after_the_rows_before_them(store, monkeypatch) -> None:
    log_batch = MlflowClient.log_batch
    written: dict[str, int] = {}  # run id -> the highest step whose rows are in the store
    saved: list[tuple[str, int, int]] = []  # (thread, checkpoint step, highest step in the store then)

    def rows(self, run_id, metrics=(), params=(), tags=(), **kwargs):
        log_batch(self, run_id, metrics=metrics, params=params, tags=tags, **kwargs)
        if metrics:
            written[run_id] = max(written.get(run_id, -1), *(m.step for m in metrics))
        for tag in tags:
            if tag.key == CHECKPOINT_STEP_TAG:
                saved.append((threading.current_thread().name, int(tag.value), written.get(run_id, -1)))

    log_artifact, rewritten = MlflowClient.log_artifact, []  # the slot tag's value as its file is uploaded

    def upload(self, run_id, local_path, artifact_path=None):
        if artifact_path == "checkpoint":
            rewritten.append(self.get_run(run_id).data.tags[f"{CHECKPOINT_STEP_TAG}.{Path(local_path).stem}"])
        return log_artifact(self, run_id, local_path, artifact_path)

    monkeypatch.setattr(MlflowClient, "log_batch", rows)
    monkeypatch.setattr(MlflowClient, "log_artifact", upload)
    result = execute_batch([RunSpec(_config(130, snapshots=[0], checkpoint_every=40))], tracking_uri=store,
                           experiment="ckpt", progress=False, writer="thread")[0]
    assert result.status == FINISHED, result.error
    assert [step for _, step, _ in saved] == [40, 80, 120]
    assert rewritten == ["", "", ""]  # a slot's tag names nothing while its file is being written
    for thread, step, in_store in saved:
        assert thread.startswith("nst-metrics"), "the loop must not wait for a checkpoint's save"
        assert in_store >= step - 1, f"checkpoint {step} reached the store before step {step - 1}'s rows"


def test_a_checkpoint_holds_its_step_however_late_the_thread_saves_it(store, monkeypatch, tmp_path) -> None:
    # The thread saves while the loop goes on changing the image: what it saves must be a copy taken at its step.
    def late(*args, **kwargs):
        time.sleep(1.0)  # the loop meanwhile runs on, tens of steps at 32 px
        upload_file(*args, **kwargs)

    monkeypatch.setattr(checkpoint_store, "upload_file", late)
    monkeypatch.setenv(WRITER_ENV, "thread")  # patched into this process
    config = _config(150, snapshots=[100], checkpoint_every=100, keep_checkpoints=True)
    result = execute(config, tracking_uri=store, experiment="late", progress=False)
    assert result.status == FINISHED, result.error
    client = MlflowClient(store)
    checkpoint = torch.load(download_checkpoint(client, result.run_id, tmp_path), map_location="cpu",
                            weights_only=False)
    assert checkpoint["global_step"] == 100
    snapshot = next(a.path for a in client.list_artifacts(result.run_id, "images") if "generated+step+100+" in a.path
                    and not a.path.endswith(".webp"))
    logged = np.asarray(Image.open(client.download_artifacts(result.run_id, snapshot, str(tmp_path))))
    held = np.asarray(to_pil((checkpoint["state_dict"]["image"] / config.pixel_scale).clamp(0, 1)))
    assert np.array_equal(held, logged)  # the image after 100 updates, as the step-100 snapshot shows it


def _same(a: object, b: object) -> bool:
    """Two checkpoints' contents equal, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu())
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_same, a, b))
    return a == b


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_an_lbfgs_checkpoint_holds_its_step_though_its_curvature_pairs_are_not_copied(
        store, monkeypatch, tmp_path, writer) -> None:
    # The pairs (most of L-BFGS' state: 510 MB at 512 px) are referenced, not copied, when the checkpoint
    # is taken, since torch's L-BFGS only appends new ones; what is saved, late, is still that step's state.
    taken: dict[str, object] = {}
    on_host = checkpoint_store._on_host

    def spy(checkpoint):
        state = checkpoint["optimizer_states"][0]["state"][0]
        taken["then"] = copy.deepcopy(checkpoint["optimizer_states"])  # the state at its step, copied whole
        out = on_host(checkpoint)
        taken["shared"] = out["optimizer_states"][0]["state"][0]["old_dirs"][-1] is state["old_dirs"][-1]
        return out

    def late(*args, **kwargs):
        time.sleep(1.0)  # the loop meanwhile runs on: tens of L-BFGS steps at 32 px
        upload_file(*args, **kwargs)

    monkeypatch.setattr(checkpoint_store, "_on_host", spy)
    if writer == "thread":  # a writer process runs its own, unpatched upload_file
        monkeypatch.setattr(checkpoint_store, "upload_file", late)
    monkeypatch.setenv(WRITER_ENV, writer)
    config = _config(150, snapshots=[0], checkpoint_every=100, keep_checkpoints=True,
                     optimizer={"name": "lbfgs", "lr": 1})
    result = execute(config, tracking_uri=store, experiment="lbfgs", progress=False)
    assert result.status == FINISHED, result.error
    assert taken["shared"] is True
    saved = torch.load(download_checkpoint(MlflowClient(store), result.run_id, tmp_path), map_location="cpu",
                       weights_only=False)
    assert saved["global_step"] == 100 and len(saved["optimizer_states"][0]["state"][0]["old_dirs"]) > 50
    assert _same(saved["optimizer_states"], taken["then"])


def test_a_batch_written_by_processes_is_the_batch_written_by_a_thread(tmp_path) -> None:
    # Every step's rows, the snapshots, the checkpoints and their tags, final.png: the same store either way,
    # with one writer thread for both runs or a writer process each (a GPU's choice: both write one SQLite file).
    # deterministic on a GPU: the two batches must give the same bits there too (as a resume's do).
    specs = [RunSpec(_config(120, snapshots=[0, 60], checkpoint_every=50, optimizer={"name": "adam", "lr": lr},
                             deterministic=ON_GPU, keep_checkpoints=True)) for lr in (1.0, 4.0)]
    stores = {}
    for kind, writer in (("thread", "thread"), ("process", "process:2")):
        uri = f"sqlite:///{tmp_path}/{kind}/mlflow.db"
        results = execute_batch(specs, tracking_uri=uri, experiment="w", progress=False, writer=writer)
        assert [r.status for r in results] == [FINISHED, FINISHED], [r.error for r in results]
        assert all(r.writer_seconds > 0 for r in results)
        stores[kind] = (MlflowClient(uri), [r.run_id for r in results])
    (a, a_ids), (b, b_ids) = stores["thread"], stores["process"]
    for a_id, b_id in zip(a_ids, b_ids, strict=True):
        ra, rb = a.get_run(a_id), b.get_run(b_id)
        assert set(ra.data.metrics) == set(rb.data.metrics)
        for key in ra.data.metrics:
            history = [(m.step, m.value) for m in a.get_metric_history(a_id, key)]
            assert history == [(m.step, m.value) for m in b.get_metric_history(b_id, key)], key
        assert len(a.get_metric_history(a_id, "loss/total")) == 120
        tags = [t for t in ra.data.tags if t.startswith(CHECKPOINT_STEP_TAG)]
        assert {t: ra.data.tags[t] for t in tags} == {t: rb.data.tags[t] for t in tags} != {}
        assert logged_snapshot_steps(a, a_id) == logged_snapshot_steps(b, b_id) == {0, 60, 120}
        assert ([x.path for x in a.list_artifacts(a_id, "checkpoint")]
                == [x.path for x in b.list_artifacts(b_id, "checkpoint")] != [])
        finals = [np.asarray(Image.open(c.download_artifacts(i, "final.png", str(tmp_path / i))))
                  for c, i in ((a, a_id), (b, b_id))]
        assert np.array_equal(*finals)
        held = [torch.load(download_checkpoint(c, i, tmp_path / f"{i}-ckpt"), map_location="cpu", weights_only=False)
                for c, i in ((a, a_id), (b, b_id))]
        assert held[1]["global_step"] == 100 and torch.equal(held[0]["state_dict"]["image"],
                                                              held[1]["state_dict"]["image"])


def test_a_batch_gets_a_writer_thread_or_a_process_per_run_on_a_quarter_of_the_cores(monkeypatch) -> None:
    # (or, into a tracking server on a CPU, a writer thread per run up to 8)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert [writer_count("process", n) for n in (1, 3, 16, 17, 64, 200)] == [1, 3, 4, 4, 4, 4]
    assert writer_count("thread", 64) == 1  # threads would share one interpreter lock
    # Where: on a GPU processes; on a CPU a thread for a small batch, processes for many runs (measured).
    assert [auto_writer("cuda", 1), auto_writer("cpu", 3), auto_writer("cpu", 8)] == ["process", "thread", "process"]
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert writer_count("process", 64) == 1
    # Into a tracking server (remote), whose answers a writer mostly waits for: on a CPU threads (the lock
    # let go meanwhile), on a GPU processes (the loop's own lock stays free), one per run up to
    # store.REMOTE_REQUESTS however few the cores.
    assert [auto_writer("cpu", 64, remote=True), auto_writer("cuda", 64, remote=True)] == ["thread", "process"]
    for kind in ("thread", "process"):
        assert [writer_count(kind, n, remote=True) for n in (1, 3, 64)] == [1, 3, 8]
    # NST_WRITER may say how many: `process:1`, `thread:4`.
    assert [parse_writer(w) for w in ("thread", "process:1", "thread:12")] == [
        ("thread", None), ("process", 1), ("thread", 12)]
    for bad in ("proces", "process:", "process:0", "thread:many", "auto"):
        with pytest.raises(UserError, match="'process:2'"):
            parse_writer(bad)


def _two_runs_checkpointing_every_20_steps(store: str) -> list:
    """A batch of two runs of 130 steps, a checkpoint every 20, both FINISHED (their last checkpoints kept)."""
    specs = [RunSpec(_config(130, snapshots=[0], checkpoint_every=20, optimizer={"name": "adam", "lr": lr},
                             keep_checkpoints=True))
             for lr in (1.0, 4.0)]
    results = execute_batch(specs, tracking_uri=store, experiment="rounds", progress=False)
    assert [r.status for r in results] == [FINISHED, FINISHED], [r.error for r in results]
    return results


def test_runs_written_by_several_writers_stay_one_checkpoint_apart(store, monkeypatch) -> None:
    # Two writers, the first run's slow: each round of checkpoints waits for the round before, so a
    # kill at any moment leaves the runs a step they all hold (they resume together, exactly).
    monkeypatch.setattr(writers, "writer_count", lambda kind, runs, remote=False: 2)
    monkeypatch.setenv(WRITER_ENV, "thread")  # two writer threads, patched below in this process
    events: list[tuple[float, float, str, int]] = []  # (start, end, run id, step) of each checkpoint upload
    on_host, rounds, at_40 = checkpoint_store._on_host, [], threading.Event()

    def taken(checkpoint):  # in the loop, as a round's checkpoints are taken, before it waits for the last
        rounds.append(len(rounds))
        if len(rounds) == 2:
            at_40.set()
        return on_host(checkpoint)

    def upload(uri, run_id, data, path, before, after):
        start = time.monotonic()
        if run_id == slow[0] and after[CHECKPOINT_STEP_TAG] == "20":
            at_40.wait(60)  # the loop ran on meanwhile: the step-40 round is due, and waits for this save
            time.sleep(1.0)
        upload_file(uri, run_id, data, path, before, after)
        events.append((start, time.monotonic(), run_id, int(after[CHECKPOINT_STEP_TAG])))

    create_run, slow = MlflowClient.create_run, []

    def first_is_slow(self, *args, **kwargs):
        run = create_run(self, *args, **kwargs)
        slow.append(run.info.run_id)
        return run

    monkeypatch.setattr(checkpoint_store, "upload_file", upload)
    monkeypatch.setattr(checkpoint_store, "_on_host", taken)
    monkeypatch.setattr(MlflowClient, "create_run", first_is_slow)
    results = _two_runs_checkpointing_every_20_steps(store)
    steps = sorted({step for *_, step in events})
    assert steps == [20, 40, 60, 80, 100, 120]
    for before, after in pairwise(steps):
        last_end = max(end for _, end, _, step in events if step == before)
        first_start = min(start for start, _, _, step in events if step == after)
        assert last_end <= first_start, f"a step-{after} checkpoint began before every step-{before} one was saved"
    client = MlflowClient(store)
    assert {client.get_run(r.run_id).data.tags[CHECKPOINT_STEP_TAG] for r in results} == {"120"}
    # The fit says where its time went: the step-40 round waited for the slow step-20 save's last second.
    times = results[0].fit_times
    assert set(times) == set(PARTS) and times == results[1].fit_times  # the batch's, in each of its runs
    assert 0.9 < times[WRITERS] < results[0].seconds
    assert sum(times.values()) <= results[0].seconds
    assert times[SNAPSHOTS] > 0 and times[CHECKPOINTS] > 0 and times[READ_BACK] > 0 and times[ROWS] > 0


def test_runs_written_by_one_writer_hand_over_rounds_without_waiting_for_the_last(store, monkeypatch) -> None:
    # One writer for both runs, its first checkpoint slow (as a writer process still starting up is on a
    # GPU): first in first out, the store holds a prefix of the writes whatever the moment, so the loop
    # hands over the next rounds meanwhile, up to ROUNDS_AHEAD, and only then waits.
    monkeypatch.setenv(WRITER_ENV, "thread")
    ahead = checkpoint_store.ROUNDS_AHEAD
    handed: list[tuple[float, int]] = []  # (when, checkpoint step) of each upload handed to the writer
    last_ahead, slow_end = threading.Event(), []
    after_rows = RunWriter.after_rows

    def handing(self, write, *args, **kwargs):
        if write is upload:
            step = int(kwargs["after"][CHECKPOINT_STEP_TAG])
            handed.append((time.monotonic(), step))
            if step == 20 * ahead:
                last_ahead.set()
        return after_rows(self, write, *args, **kwargs)

    def upload(uri, run_id, data, path, before, after):
        if after[CHECKPOINT_STEP_TAG] == "20" and not slow_end:
            last_ahead.wait(60)  # slow until the loop handed over every round it may (or it hangs: fails below)
            slow_end.append(time.monotonic())
        upload_file(uri, run_id, data, path, before, after)

    monkeypatch.setattr(checkpoint_store, "upload_file", upload)
    monkeypatch.setattr(RunWriter, "after_rows", handing)
    results = _two_runs_checkpointing_every_20_steps(store)
    before_slow_end = sorted({step for when, step in handed if when < slow_end[0]})
    assert before_slow_end == [20, 40, 60, 80], "the loop waited for the slow round"  # ROUNDS_AHEAD = 4
    assert sorted({step for _, step in handed}) == [20, 40, 60, 80, 100, 120]
    client = MlflowClient(store)
    assert {client.get_run(r.run_id).data.tags[CHECKPOINT_STEP_TAG] for r in results} == {"120"}


def test_a_sweeps_batches_share_their_writer_processes(tmp_path, store, monkeypatch) -> None:
    # Three points one at a time, each batch written by a process (a GPU's choice): the sweep starts one
    # process, not three (each took about a second to start, and its end was waited for), and every run
    # is whole in the store.
    monkeypatch.setenv(WRITER_ENV, "process")
    pools: list[writers.WriterPool] = []

    class Counted(writers.WriterPool):
        def __init__(self) -> None:
            super().__init__()
            pools.append(self)

    monkeypatch.setattr(executors, "WriterPool", Counted)
    images = Path(__file__).resolve().parents[1] / "experiments" / "images"
    path = tmp_path / "three.yaml"
    path.write_text(f"""
name: three
description: three points, one batch each
base: {{preset: seed, content: {images / "grace_hopper.jpg"}, style: {images / "starry_night.jpg"}, size: 32,
        iterations: 5, snapshots: [0, 5]}}
grid: {{optimizer.lr: [0.5, 1.0, 2.0]}}
""")
    assert main(["experiment", str(path), "--tracking-uri", store, "--quiet", "--batch", "1"]) == 0
    assert [p.started for p in pools] == [1]
    client = MlflowClient(store)
    children = [r for r in client.search_runs([client.get_experiment_by_name("three").experiment_id])
                if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 3
    for run in children:
        assert run.info.status == FINISHED
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss/total")] == list(range(5))
        assert logged_snapshot_steps(client, run.info.run_id) == {0, 5}


def test_each_writer_opens_its_store_client_before_the_loop_hands_it_anything(store, monkeypatch) -> None:
    # A writer process takes a second or more to import MLflow and open its store (on an H100's machine
    # the loop waited some 8 s for it at its second checkpoint): its first task is to open it, handed over
    # once the input is checked, ahead of every row, image and checkpoint.
    monkeypatch.setenv(WRITER_ENV, "thread:2")
    tasks: list[tuple[int, str]] = []  # (writer thread, what it ran), in order
    connect, write = writers.connect_writer, checkpoint_store.upload_file

    def connecting(uri: str) -> None:
        assert uri == store
        tasks.append((threading.get_ident(), "connect"))
        connect(uri)

    def uploading(*args, **kwargs) -> None:
        tasks.append((threading.get_ident(), "upload"))
        write(*args, **kwargs)

    monkeypatch.setattr(writers, "connect_writer", connecting)
    monkeypatch.setattr(checkpoint_store, "upload_file", uploading)
    _two_runs_checkpointing_every_20_steps(store)
    threads = {thread for thread, _ in tasks}
    assert len(threads) == 2
    for thread in threads:
        mine = [what for t, what in tasks if t == thread]
        assert mine[0] == "connect" and mine.count("connect") == 1 and "upload" in mine


def test_a_runs_params_inputs_and_end_are_written_by_its_writer_around_its_rows(store, monkeypatch) -> None:
    # The loop only creates a batch's runs: each run's params, input images and config.yaml are its
    # writer's first write, and its end (final.png, why it stopped, FINISHED) its last, behind every row.
    monkeypatch.setenv(WRITER_ENV, "thread:2")
    tasks: list[tuple[int, str, str]] = []  # (writer thread, what it wrote, run id), in order
    start, rows, end = opening.open_run, run_writer.write_rows, run_log.end_run

    def record(what: str, write):
        def recorded(uri: str, run_id: str, *args, **kwargs):
            tasks.append((threading.get_ident(), what, run_id))
            return write(uri, run_id, *args, **kwargs)
        return recorded

    monkeypatch.setattr(opening, "open_run", record("open", start))
    monkeypatch.setattr(run_writer, "write_rows", record("rows", rows))
    monkeypatch.setattr(run_log, "end_run", record("end", end))
    results = execute_batch([RunSpec(_config(60, snapshots=[0], optimizer={"name": "adam", "lr": lr}))
                             for lr in (1.0, 4.0)], tracking_uri=store, experiment="around", progress=False)
    assert [r.status for r in results] == [FINISHED, FINISHED], [r.error for r in results]
    client = MlflowClient(store)
    for result in results:
        mine = [(thread, what) for thread, what, run_id in tasks if run_id == result.run_id]
        assert len({thread for thread, _ in mine}) == 1 and mine[0][0] != threading.get_ident()  # its writer's
        assert [what for _, what in mine] == ["open"] + ["rows"] * (len(mine) - 2) + ["end"]
        run = client.get_run(result.run_id)
        assert run.info.status == FINISHED and run.data.params["iterations"] == "60"
        assert run.data.tags["nst.stop_reason"] == "ran all 60 steps"
        names = {Path(a.path).name for a in client.list_artifacts(result.run_id)}
        assert {"config.yaml", "final.png", "content.png", "style.png"} <= names
        assert Path(result.final_image or "").is_file()
        assert [m.step for m in client.get_metric_history(result.run_id, "loss/total")] == list(range(60))


def test_a_run_whose_end_cannot_be_written_ends_failed_and_its_batch_goes_on(store, monkeypatch) -> None:
    monkeypatch.setenv(WRITER_ENV, "thread")  # the fault is patched into this process
    end, broken = run_log.end_run, []

    def fails_for_the_second_run(uri: str, run_id: str, *args, **kwargs) -> None:
        if broken and run_id == broken[0]:
            raise MlflowException("disk I/O error")
        end(uri, run_id, *args, **kwargs)

    create_run = MlflowClient.create_run

    def second_is_broken(self, *args, **kwargs):
        run = create_run(self, *args, **kwargs)
        if kwargs.get("run_name") == "second":
            broken.append(run.info.run_id)
        return run

    monkeypatch.setattr(MlflowClient, "create_run", second_is_broken)
    monkeypatch.setattr(run_log, "end_run", fails_for_the_second_run)
    specs = [RunSpec(_config(10, optimizer={"name": "adam", "lr": lr}), run_name=name)
             for lr, name in ((1.0, "first"), (4.0, "second"))]
    first, second = execute_batch(specs, tracking_uri=store, experiment="ends", progress=False)
    client = MlflowClient(store)
    assert first.status == FINISHED and client.get_run(first.run_id).info.status == FINISHED
    assert second.status == FAILED and second.final_image is None
    assert "its rows or its end could not be written: disk I/O error" in (second.error or "")
    assert client.get_run(second.run_id).info.status == FAILED
    assert [m.step for m in client.get_metric_history(second.run_id, "loss/total")] == list(range(10))


def test_a_ray_workers_batches_share_their_writer_processes(store, monkeypatch) -> None:
    # Two batches in one Ray worker (Ray reuses it for tasks of one shape), each written by a process: the
    # worker starts one and keeps it, and its batches' runs are whole in the store when their tasks return.
    monkeypatch.setenv(WRITER_ENV, "process")
    ray_executor.worker_pool.cache_clear()  # a fresh worker
    config = _config(4, snapshots=[0])

    def job(lr: float) -> Job:
        point = Point(0, config, {"optimizer.lr": lr}, f"lr={lr}", f"key-{lr}")
        spec = RunSpec(replace(config, optimizer=replace(config.optimizer, lr=lr)))
        return Job([Task(point, spec)], store, "ray-worker")

    try:
        results = [r for lr in (0.5, 1.0) for r in ray_executor._execute_in_worker(job(lr))]
        assert ray_executor.worker_pool().started == 1
    finally:
        ray_executor.worker_pool().__exit__(None, None, None)
        ray_executor.worker_pool.cache_clear()
    client = MlflowClient(store)
    for result in results:
        assert result.status == FINISHED, result.error
        assert [m.step for m in client.get_metric_history(result.run_id, "loss/total")] == list(range(4))


def test_a_writer_pool_lends_its_processes_again_and_replaces_one_that_died(store) -> None:
    client = MlflowClient(store)
    run_id = client.create_run(client.create_experiment("pool")).info.run_id
    with writers.WriterPool() as pool:
        (first,) = pool.lend(1)
        first.submit(write_rows, store, run_id, [(0, 0, {"loss/total": 1.0})]).result()
        writers.WriterPool.settle([first])
        assert pool.lend(1) == [first] and pool.started == 1  # alive: lent again, not started again
        os.kill(first._child.pid, signal.SIGKILL)
        first._child.wait()
        writers.WriterPool.settle([first])  # gone: nothing left to wait for, and no error at a batch's end
        (second,) = pool.lend(1)
        assert second is not first and pool.started == 2
        second.submit(write_rows, store, run_id, [(1, 0, {"loss/total": 2.0})]).result()
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss/total")] == [(0, 1.0), (1, 2.0)]
