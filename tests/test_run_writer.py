"""The runs' metrics are written by a thread beside the optimization (pipelines/tracking/run_writer.py):
every step reaches a real SQLite store once, in step order, and a store that fails is not hidden."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from PIL import Image

from nst.images import to_pil
from pipelines.config.runs import run_config
from pipelines.execution.run import FAILED, FINISHED, execute
from pipelines.tracking.checkpoint_store import CHECKPOINT_STEP_TAG, Checkpoints, download_checkpoint
from pipelines.tracking.run_writer import RunWriter, whole_steps

KEYS = ["loss/total", "loss/content", "loss/style", "lr"]


def test_every_step_reaches_the_store_once_in_step_order(store, monkeypatch) -> None:
    client = MlflowClient(store)
    run_id = client.create_run(client.create_experiment("rows")).info.run_id
    first_steps: list[int] = []  # what each write to the store began with, in the order of the writes
    log_batch = MlflowClient.log_batch

    def spy(self, run_id, metrics=(), **kwargs):  # the real write, watched
        first_steps.append(metrics[0].step)
        return log_batch(self, run_id, metrics=metrics, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", spy)
    with ThreadPoolExecutor(1) as writer:
        rows = RunWriter(client, run_id, writer, skip_through=9, flush_seconds=0.0)
        for step in range(600):
            rows.log({k: float(step) for k in KEYS}, step)
            if step % 50 == 49:
                rows.flush(due_only=True, wait=False)  # handed to the thread; the loop goes on
        rows.flush()  # waits: every row so far is in the store
        assert rows.writer_seconds > 0  # the writer thread's CPU, which the bench reports
        for key in KEYS:
            assert [m.step for m in client.get_metric_history(run_id, key)] == list(range(10, 600)), key
    assert first_steps == sorted(first_steps) and len(first_steps) >= 12


def test_a_store_that_fails_mid_run_ends_the_run_failed_with_its_error(store, monkeypatch, tmp_path) -> None:
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


def test_a_write_asked_for_waits_for_the_store(store) -> None:
    client = MlflowClient(store)
    run_id = client.create_run(client.create_experiment("wait")).info.run_id
    with ThreadPoolExecutor(1) as writer:
        rows = RunWriter(client, run_id, writer)
        rows.log({"loss/total": 1.0}, 0)
        rows.flush()
        assert [m.step for m in client.get_metric_history(run_id, "loss/total")] == [0]


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
    result = execute(_config(130, snapshots=[0], checkpoint_every=40), tracking_uri=store, experiment="ckpt",
                     progress=False)
    assert result.status == FINISHED, result.error
    assert [step for _, step, _ in saved] == [40, 80, 120]
    assert rewritten == ["", "", ""]  # a slot's tag names nothing while its file is being written
    for thread, step, in_store in saved:
        assert thread.startswith("nst-metrics"), "the loop must not wait for a checkpoint's save"
        assert in_store >= step - 1, f"checkpoint {step} reached the store before step {step - 1}'s rows"


def test_a_checkpoint_holds_its_step_however_late_the_thread_saves_it(store, monkeypatch, tmp_path) -> None:
    # The thread saves while the loop goes on changing the image: what it saves must be a copy taken at its step.
    save = Checkpoints._save

    def late(self, *args):
        time.sleep(1.0)  # the loop meanwhile runs on, tens of steps at 32 px
        save(self, *args)

    monkeypatch.setattr(Checkpoints, "_save", late)
    config = _config(150, snapshots=[100], checkpoint_every=100)
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
