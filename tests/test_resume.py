"""kill -9 in the middle of a sweep, then the same command again: finished runs are skipped,
the killed run resumes from its checkpoint in the same MLflow run, with every step logged
exactly once and a final image bit-identical to an uninterrupted run. The same holds when the
sweep's points run as one batch: every interrupted point resumes from its own checkpoint. On a GPU (the GPU lane) the
runs ask for deterministic kernels, as a user who needs bit-identical resumes there does."""

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from pipelines.tracking.checkpoint_store import CHECKPOINT_SLOTS, checkpoint_steps, download_checkpoint
from tests.lane import ON_GPU, process_writer

IMAGES = Path(__file__).resolve().parents[1] / "experiments" / "images"
# Long enough to catch a run in the middle: a GPU steps through 160 tiny steps in about a second.
STEPS = 480 if ON_GPU else 160
SWEEP = f"""
name: resumable
description: two points, checkpoints every 20 steps
base:
  preset: seed  # the slides' formulation: Adam, batchable (experiment files default to L-BFGS)
  content: {IMAGES / "grace_hopper.jpg"}
  style: {IMAGES / "the_scream.jpg"}
  size: 40
  iterations: {STEPS}
  snapshots: [0, 50, 120]
  checkpoint_every: 20
  deterministic: {"true" if ON_GPU else "false"}
grid:
  optimizer.lr: [1.0, 0.5]
"""


def _children(client: MlflowClient) -> dict[str, object]:
    experiment = client.get_experiment_by_name("resumable")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    return {r.info.run_name: r for r in runs if "mlflow.parentRunId" in r.data.tags}


def _final(client: MlflowClient, run_id: str, folder: Path) -> np.ndarray:
    return np.asarray(Image.open(client.download_artifacts(run_id, "final.png", str(folder))))


def _history(client: MlflowClient, run_id: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, "loss/total"))


def _command(path: Path, store: str, batch: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", "experiment", str(path), "--tracking-uri", store, "--quiet",
            "--batch", batch]


def _sweep(path: Path, store: str, batch: str, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(_command(path, store, batch), capture_output=True, timeout=600, env=env)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], str]:
    """`uninterrupted(batch)`: the store of the sweep run whole with `--batch batch`, in a fresh process as
    the killed one was (what earlier tests left in this process's torch state cannot tell them apart).
    Run once for the whole session: pytest-xdist's workers share it through their session's folder, the
    first one to need it running it while the others wait (each worker ran its own before: in the GPU lane,
    up to seven sweeps of 480 steps in fresh processes where two do)."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the session's folder, above each worker's own

    def store_of(batch: str) -> str:
        folder = shared / f"uninterrupted-{batch}"
        store = f"sqlite:///{folder}/store/mlflow.db"
        with open(shared / f"uninterrupted-{batch}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if not (folder / "done").exists():
                shutil.rmtree(folder, ignore_errors=True)  # what a worker that failed at it left
                folder.mkdir()
                path = folder / "resumable.yaml"
                path.write_text(SWEEP)
                done = _sweep(path, store, batch)
                assert done.returncode == 0, done.stderr[-2000:]
                (folder / "done").touch()
        return store

    return store_of


@pytest.mark.heavy(3.2)  # minutes on the GPU lane (2026-11-28, H200): dealt first
@pytest.mark.parametrize(("batch", "writer"), [("1", None), ("2", None), process_writer("2", "process:2")])
def test_kill_9_then_resume_loses_nothing_and_repeats_nothing(tmp_path, make_store, uninterrupted, batch,
                                                              writer) -> None:
    # writer: where the runs are written (None: this device's choice; "process:2": as on a GPU, a writer
    # process per run, each of which must die with the killed command rather than write on while the
    # resume runs, and whose rounds of checkpoints keep the runs one checkpoint apart).
    path = tmp_path / "resumable.yaml"
    path.write_text(SWEEP)
    store = make_store(tmp_path / "store")
    client = MlflowClient(store)
    temporary = tmp_path / "tmp"  # the commands' temporary folder (TMPDIR), this test's own
    temporary.mkdir()
    env = {**os.environ, "TMPDIR": str(temporary), **({"NST_WRITER": writer} if writer else {})}
    process = subprocess.Popen(_command(path, store, batch), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=env)
    killed_id, deadline = None, time.monotonic() + 180
    while killed_id is None and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.3)
        for run in _children(client).values():
            steps = _history(client, run.info.run_id)
            if run.info.status == "RUNNING" and len(steps) >= 50:
                killed_id = run.info.run_id
    assert killed_id is not None, "never caught a run in the middle"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert client.get_run(killed_id).info.status == "RUNNING"  # nobody could mark it
    assert list(temporary.glob(f"nst-batch-{process.pid}-*/inputs"))  # its batch's folder, left behind
    if batch == "2":  # both points were in the killed batch: both resume, each from its own checkpoint
        assert [r.info.status for r in _children(client).values()] == ["RUNNING", "RUNNING"]
        assert all(client.list_artifacts(r.info.run_id, "checkpoint") for r in _children(client).values())

    held = set(checkpoint_steps(client.get_run(killed_id).data.tags))  # a batch resumes from a step its runs share

    # The same command again, in a fresh process as the killed one was.
    done = _sweep(path, store, batch, env)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = _children(client)
    assert sorted(runs) == ["lr=0.5 seed=0", "lr=1 seed=0"]  # resumed in place, no third run
    assert all(r.info.status == "FINISHED" for r in runs.values())

    ref_client = MlflowClient(uninterrupted(batch))
    ref_runs = _children(ref_client)
    for name, run in runs.items():
        history = _history(client, run.info.run_id)
        assert [s for s, _ in history] == list(range(STEPS)), f"{name}: gaps or duplicates"
        assert history == _history(ref_client, ref_runs[name].info.run_id), f"{name}: metrics differ"
        images = [a.path for a in client.list_artifacts(run.info.run_id, "images") if a.path.endswith(".png")]
        steps = sorted(int(Path(p).name.split("+")[2]) for p in images)
        assert steps == [0, 50, 120, STEPS], f"{name}: snapshots {steps}"
        mine = _final(client, run.info.run_id, tmp_path / "a" / name)
        theirs = _final(ref_client, ref_runs[name].info.run_id, tmp_path / "b" / name)
        assert np.array_equal(mine, theirs), f"{name}: final image differs from an uninterrupted run"
    assert not list(temporary.glob("nst-batch-*"))  # the killed command's folder went with the resume's own
    # The resume came from a real checkpoint, which went once the run was FINISHED (it never resumes again).
    assert any(f"resume run {killed_id} from its checkpoint of step {s}".encode() in done.stdout for s in held)
    assert not client.list_artifacts(killed_id, "checkpoint")
    assert not checkpoint_steps(client.get_run(killed_id).data.tags)


def _patched_sweep(tmp_path: Path, patch: str, store: str, batch: str = "2"
                   ) -> tuple[Path, subprocess.CompletedProcess[bytes]]:
    """The sweep into `store`, run as a script with `patch` applied first. Returns the sweep's file and
    what the script did."""
    path = tmp_path / "resumable.yaml"
    path.write_text(SWEEP)
    script = tmp_path / "patched.py"
    script.write_text(f"import os, sys\nfrom mlflow import MlflowClient\nfrom pipelines.cli import main\n{patch}\n"
                      "sys.exit(main(sys.argv[1:]))\n")
    # The patch is in this process: its writes too (a GPU would pick a writer process).
    return path, subprocess.run([sys.executable, str(script), *_command(path, store, batch)[3:]], capture_output=True,
                                timeout=600, cwd=Path(__file__).resolve().parents[1],
                                env={**os.environ, "NST_WRITER": "thread"})


def _sweep_that_dies(tmp_path: Path, patch: str, store: str) -> Path:
    """The sweep in one batch, dying as kill -9 would (os._exit) where the patch says."""
    path, died = _patched_sweep(tmp_path, patch, store)
    assert died.returncode == 137, died.stderr[-2000:]
    return path


# Dies at the one moment a snapshot's quality metrics are in the store and its image is not yet
# (the image is written behind its step's rows).
DIES_BEFORE_AN_IMAGE = """
log_image = MlflowClient.log_image

def dies_before_the_image(self, run_id, image, *args, key=None, step=None, **kwargs):
    if key == "generated" and step == 50:
        os._exit(137)
    return log_image(self, run_id, image, *args, key=key, step=step, **kwargs)

MlflowClient.log_image = dies_before_the_image
"""


@pytest.mark.heavy(1.6)
def test_killed_between_a_snapshots_metrics_and_its_image_the_resume_redoes_only_the_image(tmp_path, store) -> None:
    path = _sweep_that_dies(tmp_path, DIES_BEFORE_AN_IMAGE, store)
    client = MlflowClient(store)
    ssim_steps = {name: [m.step for m in client.get_metric_history(r.info.run_id, "quality/ssim_content")]
                  for name, r in _children(client).items()}
    assert 50 in [s for steps in ssim_steps.values() for s in steps]  # the kill came after those metrics

    done = _sweep(path, store, "2")
    assert done.returncode == 0, done.stderr[-2000:]
    for name, run in _children(client).items():
        assert run.info.status == "FINISHED", name
        assert [s for s, _ in _history(client, run.info.run_id)] == list(range(STEPS)), f"{name}: gaps or duplicates"
        ssim = sorted(m.step for m in client.get_metric_history(run.info.run_id, "quality/ssim_content"))
        assert ssim == [0, 50, 120, STEPS], f"{name}: quality metrics at {ssim}"
        images = [a.path for a in client.list_artifacts(run.info.run_id, "images") if a.path.endswith(".png")]
        assert sorted(int(Path(p).name.split("+")[2]) for p in images) == [0, 50, 120, STEPS], name


# Dies as the writer is about to tag a run's step-60 checkpoint (uploaded, not yet named), after
# TAGGED runs of the batch had theirs tagged: the writer saves one run's checkpoint after the other's.
DIES_BEFORE_A_CHECKPOINTS_TAGS = """
from pipelines.tracking.checkpoint_store import CHECKPOINT_STEP_TAG
log_batch, tagged = MlflowClient.log_batch, []

def dies_before_the_tags(self, run_id, metrics=(), params=(), tags=(), **kwargs):
    if any(t.key == CHECKPOINT_STEP_TAG and t.value == "60" for t in tags):
        if len(tagged) == TAGGED:
            os._exit(137)
        tagged.append(run_id)
    return log_batch(self, run_id, metrics=metrics, params=params, tags=tags, **kwargs)

MlflowClient.log_batch = dies_before_the_tags
"""


@pytest.mark.heavy(2.7)
@pytest.mark.parametrize("tagged", [0, 1])
def test_killed_between_its_runs_checkpoints_a_batch_resumes_together_exactly(tmp_path, store, uninterrupted,
                                                                              tagged) -> None:
    path = _sweep_that_dies(tmp_path, DIES_BEFORE_A_CHECKPOINTS_TAGS.replace("TAGGED", str(tagged)), store)
    client = MlflowClient(store)
    runs = _children(client)
    latest = [torch.load(download_checkpoint(client, r.info.run_id, tmp_path / name), weights_only=False)
              for name, r in runs.items()]
    # The runs stand one checkpoint apart (tagged = 1), or their tags lag a whole upload (tagged = 0).
    assert sorted(c["global_step"] for c in latest) == sorted([40] * (2 - tagged) + [60] * tagged)
    uploads = [torch.load(client.download_artifacts(r.info.run_id, CHECKPOINT_SLOTS["b"], str(tmp_path / "b" / name)),
                          weights_only=False) for name, r in runs.items()]
    # Slot b: the step-60 upload of the run the writer died at is there, but names nothing.
    assert sorted(c["global_step"] for c in uploads) == ([20, 60] if tagged == 0 else [60, 60])

    done = _sweep(path, store, "2")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count(b"(a batch of 2)") == 2, done.stdout  # resumed as they ran, from step 40
    ref_client = MlflowClient(uninterrupted("2"))
    ref_runs = _children(ref_client)
    for name, run in _children(client).items():
        assert run.info.status == "FINISHED", name
        history = _history(client, run.info.run_id)
        assert [s for s, _ in history] == list(range(STEPS)), f"{name}: gaps or duplicates"
        # Together, as they ran: the same sums in the same order as the uninterrupted batch.
        assert history == _history(ref_client, ref_runs[name].info.run_id), f"{name}: metrics differ"


# The disk fills at step 60 of the first run: from then on every large write fails as SQLite says it
# (rows, tags, artifacts), while small updates (a run's status and its error tag) still go in, as they
# did on a real full tmpfs.
FILLS_THE_DISK = """
from mlflow.exceptions import MlflowException
log_batch, log_artifact, full = MlflowClient.log_batch, MlflowClient.log_artifact, []

def disk_full():
    raise MlflowException("(sqlite3.OperationalError) database or disk is full")

def fills_the_disk(self, run_id, metrics=(), params=(), tags=(), **kwargs):
    if any(m.step >= 60 for m in metrics):
        full.append(run_id)
    if full:
        disk_full()
    return log_batch(self, run_id, metrics=metrics, params=params, tags=tags, **kwargs)

def no_room(self, *args, **kwargs):
    if full:
        disk_full()
    return log_artifact(self, *args, **kwargs)

MlflowClient.log_batch, MlflowClient.log_artifact = fills_the_disk, no_room
"""


@pytest.mark.heavy
def test_a_full_store_stops_the_sweep_in_one_line_and_the_same_command_resumes_it(tmp_path, store,
                                                                                  uninterrupted) -> None:
    path, full = _patched_sweep(tmp_path, FILLS_THE_DISK, store, batch="1")
    err = full.stderr.decode().strip().splitlines()
    assert full.returncode == 2 and len(err) == 1, err  # no traceback, no MLflow log of the database error
    assert err[0].startswith("nst: error: no space left in the store sqlite:///") and "free): free some space" in err[0]
    client = MlflowClient(store)
    runs = _children(client)
    # The sweep stopped at the full store: the second point never started (it would have failed the same way).
    assert {name: r.info.status for name, r in runs.items()} == {"lr=1 seed=0": "KILLED"}
    assert "no space left" in runs["lr=1 seed=0"].data.tags["nst.error"]

    done = _sweep(path, store, "1")  # space again: the same command
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resume run {runs['lr=1 seed=0'].info.run_id}".encode() in done.stdout
    ref_client = MlflowClient(uninterrupted("1"))
    ref_runs = _children(ref_client)
    for name, run in _children(client).items():
        assert run.info.status == "FINISHED", name
        assert [s for s, _ in _history(client, run.info.run_id)] == list(range(STEPS)), f"{name}: gaps or duplicates"
        assert np.array_equal(_final(client, run.info.run_id, tmp_path / name),
                              _final(ref_client, ref_runs[name].info.run_id, tmp_path / "ref" / name)), name


# Dies once both runs of the batch have their step-60 checkpoints tagged.
DIES_AFTER_A_CHECKPOINT = """
from pipelines.tracking.checkpoint_store import CHECKPOINT_STEP_TAG
log_batch, tagged = MlflowClient.log_batch, []

def dies_after_the_tags(self, run_id, metrics=(), params=(), tags=(), **kwargs):
    result = log_batch(self, run_id, metrics=metrics, params=params, tags=tags, **kwargs)
    if any(t.key == CHECKPOINT_STEP_TAG and t.value == "60" for t in tags):
        tagged.append(run_id)
        if len(tagged) == 2:
            os._exit(137)
    return result

MlflowClient.log_batch = dies_after_the_tags
"""


@pytest.mark.heavy
def test_killed_then_edited_the_new_version_resumes_the_killed_runs_from_their_checkpoints(tmp_path, store,
                                                                                         uninterrupted) -> None:
    """A value added to the grid after a kill is a new sweep (a new parent). Its points that the killed
    version had begun started anew, losing a whole batch's work; now each is copied with its checkpoints
    and resumed, as the same command would have resumed it, and ends as that run would have."""
    path = _sweep_that_dies(tmp_path, DIES_AFTER_A_CHECKPOINT, store)
    client = MlflowClient(store)
    killed = _children(client)
    assert {r.info.status for r in killed.values()} == {"RUNNING"}

    path.write_text(SWEEP.replace("optimizer.lr: [1.0, 0.5]", "optimizer.lr: [1.0, 0.5, 2.0]"))
    done = _sweep(path, store, "2")
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout.decode()
    assert out.count("in an earlier version of this sweep; copied as run") == 2, out
    assert out.count("from its checkpoint of step 60 (a batch of 2)") == 2, out
    experiment = client.get_experiment_by_name("resumable").experiment_id
    newest = client.search_runs([experiment], "tags.`nst.sweep_key` != ''", order_by=["attributes.start_time DESC"])[0]
    runs = {r.info.run_name: r for r in client.search_runs([experiment], f"tags.`mlflow.parentRunId` = "
                                                                         f"'{newest.info.run_id}'")}
    assert sorted(runs) == ["lr=0.5 seed=0", "lr=1 seed=0", "lr=2 seed=0"]
    assert all(r.info.status == "FINISHED" for r in runs.values())

    ref_client = MlflowClient(uninterrupted("2"))
    for name, ref in _children(ref_client).items():
        run = runs[name]
        assert run.data.tags["nst.copied_from"] == killed[name].info.run_id
        history = _history(client, run.info.run_id)
        assert [s for s, _ in history] == list(range(STEPS)), f"{name}: gaps or duplicates"
        assert history == _history(ref_client, ref.info.run_id), f"{name}: metrics differ"
        assert np.array_equal(_final(client, run.info.run_id, tmp_path / "a" / name),
                              _final(ref_client, ref.info.run_id, tmp_path / "b" / name)), name
        assert client.get_run(killed[name].info.run_id).info.status == "RUNNING"  # the earlier sweep's, as it was


@pytest.mark.heavy
def test_checkpoints_deleted_by_hand_or_cut_short_the_run_resumes_from_what_is_left(tmp_path, store,
                                                                                   uninterrupted) -> None:
    """An interrupted run's checkpoints are large (510-600 MB at 512 px under the default recipe): a user freeing
    disk may delete them. The same command crashed with a traceback at every try, the sweep stuck; a file cut
    short failed its whole batch. Now a run resumes from the checkpoint left, or from its start in place (the
    steps in the store not written again)."""
    from pipelines.tracking.store import local_folder

    path = _sweep_that_dies(tmp_path, DIES_AFTER_A_CHECKPOINT, store)
    client = MlflowClient(store)
    killed = _children(client)
    folders = {name: local_folder(run.info.artifact_uri) for name, run in killed.items()}
    for slot in "ab":  # slot a holds step 40, b step 60
        (folders["lr=1 seed=0"] / CHECKPOINT_SLOTS[slot]).unlink()
    cut_short = folders["lr=0.5 seed=0"] / CHECKPOINT_SLOTS["b"]  # as a copy of the store cut short leaves it
    cut_short.write_bytes(cut_short.read_bytes()[: cut_short.stat().st_size // 2])

    done = _sweep(path, store, "2")
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout.decode()
    assert (f"lr=1 seed=0: the checkpoints of steps 40, 60 of run {killed['lr=1 seed=0'].info.run_id} are missing "
            "or damaged in the store; it resumes from its start") in out, out
    assert "lr=0.5 seed=0: the checkpoint of step 60 of run" in out and "it resumes from step 40" in out, out
    assert f"resume run {killed['lr=0.5 seed=0'].info.run_id} from its checkpoint of step 40" in out, out
    ref_client = MlflowClient(uninterrupted("2"))
    for name, ref in _children(ref_client).items():
        run = client.get_run(killed[name].info.run_id)  # resumed in place
        assert run.info.status == "FINISHED", name
        history = _history(client, run.info.run_id)
        assert [s for s, _ in history] == list(range(STEPS)), f"{name}: gaps or duplicates"
        # Alone from where it resumed (its batch of 2 before): the same up to float sums in another order.
        assert history[-1][1] == pytest.approx(_history(ref_client, ref.info.run_id)[-1][1], rel=1e-3), name
