"""Sweeps end to end in a temporary store: parent + children, resume, failure isolation."""

from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from nst.module import StyleTransfer
from pipelines.cli import main
from pipelines.tracking.checkpoint_store import checkpoint_steps
from pipelines.tracking.space import size_text

IMAGES = Path(__file__).resolve().parents[1] / "experiments" / "images"
GRID = f"""
name: tiny
description: a 2x2 grid for tests
base:
  preset: seed  # the slides' formulation: Adam, batchable (experiment files default to L-BFGS)
  content: {IMAGES / "grace_hopper.jpg"}
  style: {IMAGES / "starry_night.jpg"}
  size: 32
  iterations: 5
  snapshots: [0]
grid:
  optimizer.lr: [0.5, 1.0]
  alpha: [1, 10]
"""


def _runs(uri: str) -> tuple[list, list]:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


@pytest.fixture
def grid_file(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(GRID)
    return path


def test_grid_runs_under_one_parent_then_resumes(grid_file, store, capsys) -> None:
    assert main(["experiment", str(grid_file), "--tracking-uri", store, "--quiet"]) == 0
    parents, children = _runs(store)
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["nst.sweep"] == "tiny"
    assert parent.data.params["grid.optimizer.lr"] == "[0.5, 1.0]"
    assert "tiny.yaml" in {a.path for a in MlflowClient(store).list_artifacts(parent.info.run_id)}
    names = sorted(c.info.run_name for c in children)
    assert names == ["lr=0.5 alpha=1 seed=0", "lr=0.5 alpha=10 seed=0", "lr=1 alpha=1 seed=0", "lr=1 alpha=10 seed=0"]
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert len(child.data.tags["nst.run_key"]) == 16
        assert child.data.params["iterations"] == "5"
        assert child.data.tags["mlflow.note.content"].startswith("tiny: varies")
    assert {(c.data.params["optimizer.lr"], c.data.params["alpha"]) for c in children} == {
        ("0.5", "1.0"), ("0.5", "10.0"), ("1.0", "1.0"), ("1.0", "10.0")}
    out = capsys.readouterr().out
    assert "[4/4]" in out and "ETA" in out and "J_content" in out
    first = [line for line in out.splitlines() if " FINISHED " in line and line.endswith("s")]

    assert main(["experiment", str(grid_file), "--tracking-uri", store, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.count("skip ") == 4 and "resuming parent run" in out
    # The summary shows each skipped run's final losses as its first invocation did (its time: the run's own).
    again = [line for line in out.splitlines() if " skipped " in line]
    assert [line.split()[:-1] for line in again] == [
        [w if w != "FINISHED" else "skipped" for w in line.split()[:-1]] for line in first] and len(again) == 4
    parents, children = _runs(store)
    assert len(parents) == 1 and len(children) == 4


def test_a_failing_point_does_not_stop_the_sweep(grid_file, store, monkeypatch, capsys) -> None:
    real = StyleTransfer.losses

    def poisoned(self):  # force one real fault: lr=1, alpha=10 diverges at step 3 (in whichever batch it runs)
        losses = real(self)
        if self.trainer.global_step == 3:
            bad = [c.optimizer.lr == 1.0 and c.alpha == 10 for c in self.configs]
            losses["loss/total"] = losses["loss/total"] * torch.tensor([float("nan") if x else 1.0 for x in bad],
                                                                       device=self.device)
        return losses

    monkeypatch.setattr(StyleTransfer, "losses", poisoned)
    assert main(["experiment", str(grid_file), "--tracking-uri", store, "--quiet"]) == 1
    parents, children = _runs(store)
    status = {c.info.run_name: c.info.status for c in children}
    assert status.pop("lr=1 alpha=10 seed=0") == "FAILED"
    assert set(status.values()) == {"FINISHED"} and len(status) == 3
    failed = next(c for c in children if c.info.status == "FAILED")
    assert "diverged at step 3" in failed.data.tags["nst.error"]
    artifacts = {a.path for a in MlflowClient(store).list_artifacts(failed.info.run_id)}
    assert "last_finite.png" in artifacts  # the image before the loss went NaN is kept
    assert parents[0].info.status == "FAILED"
    captured = capsys.readouterr()
    assert "diverged at step 3" in captured.err

    # Fixed (the fault gone), the same command runs only the failed point.
    monkeypatch.setattr(StyleTransfer, "losses", real)
    assert main(["experiment", str(grid_file), "--tracking-uri", store, "--quiet"]) == 0
    assert capsys.readouterr().out.count("skip ") == 3
    parents, children = _runs(store)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sum(c.info.status == "FINISHED" for c in children) == 4


def test_the_summary_keeps_its_columns_under_long_run_names() -> None:
    from types import SimpleNamespace

    from pipelines.execution.run import RunResult
    from pipelines.execution.sweep import SweepResult, summary

    names = ["lr=1 seed=0", "preserve_color=luminance style_loss=gram lr=0.5 seed=0"]
    sweep = SweepResult("p", [(SimpleNamespace(name=n), RunResult("r", "FINISHED", 1.0, {"loss/total": 2.0}))
                              for n in names])  # type: ignore[misc]
    header, _, *rows = summary(sweep).splitlines()
    assert {line.index("FINISHED") for line in rows} == {header.index("status")}


def test_the_eta_counts_a_batchs_runs_once_the_last_of_them_ended(monkeypatch) -> None:
    """A batch's runs end together: counted one by one, the lr sweep's batch of 3 said `ETA 6:27` after its
    first run and `1:36` after its second, then `0:00`."""
    from pipelines.execution import progress

    now = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    clock = progress.Clock([[0, 1, 2], [3]])
    now[0] = 193.0
    etas = []
    for index in (0, 1, 2):
        clock.done(index)
        etas.append(clock.line())
    assert etas == ["elapsed 3:13 · ETA ?", "elapsed 3:13 · ETA ?", "elapsed 3:13 · ETA 1:04"]
    now[0] = 250.0
    clock.done(3)
    assert clock.line() == "elapsed 4:10 · ETA 0:00"


def test_dry_run_prints_runs_and_touches_nothing(grid_file, unmade_store, capsys) -> None:
    store = unmade_store
    assert main(["experiment", str(grid_file), "--dry-run", "--set", "iterations=2", "--tracking-uri", store]) == 0
    out = capsys.readouterr().out
    assert "tiny: 4 runs" in out and "lr=1 alpha=10 seed=0" in out and "2 it" in out
    assert not Path(store.removeprefix("sqlite:///")).exists()


def test_a_painting_edited_in_place_runs_again(tmp_path, store, capsys) -> None:
    # The run key holds the images' bytes, not only their paths: a finished point is skipped only
    # while its pictures are the ones it ran with.
    painting = tmp_path / "painting.jpg"
    painting.write_bytes((IMAGES / "starry_night.jpg").read_bytes())
    grid = tmp_path / "tiny.yaml"
    grid.write_text(GRID.replace(str(IMAGES / "starry_night.jpg"), str(painting)))
    command = ["experiment", str(grid), "--tracking-uri", store, "--quiet", "--set", "iterations=2"]
    assert main(command) == 0
    assert main(command) == 0
    assert capsys.readouterr().out.count("skip ") == 4

    painting.write_bytes((IMAGES / "the_scream.jpg").read_bytes())  # another picture, the same path
    assert main(command) == 0
    assert "skip " not in capsys.readouterr().out
    parents, children = _runs(store)
    assert len(parents) == 2 and len(children) == 8
    assert len({c.data.tags["nst.run_key"] for c in children}) == 8


def test_a_value_added_to_the_grid_copies_the_finished_points_instead_of_running_them_again(
        tmp_path, store, capsys) -> None:
    """An edited file is a new sweep (a new parent run); its points the earlier version ran to FINISHED are
    the same runs (the same run keys): copied whole under the new parent, the earlier sweep left as it was."""
    grid = tmp_path / "tiny.yaml"
    grid.write_text(GRID.replace("  alpha: [1, 10]\n", ""))
    command = ["experiment", str(grid), "--tracking-uri", store, "--quiet", "--set", "checkpoint_every=2",
               "--set", "keep_checkpoints=true"]  # kept: the copies must leave them behind
    assert main(command) == 0
    _, before = _runs(store)
    assert len(before) == 2 and all(any(k.startswith("nst.checkpoint_step") for k in r.data.tags) for r in before)
    capsys.readouterr()

    grid.write_text(grid.read_text().replace("optimizer.lr: [0.5, 1.0]", "optimizer.lr: [0.5, 1.0, 2.0]"))
    assert main(command) == 0
    out = capsys.readouterr().out
    assert out.count("  copy ") == 2 and "lr=2 seed=0: start" in out and "lr=0.5 seed=0: start" not in out
    parents, children = _runs(store)
    new_parent = max(parents, key=lambda p: p.info.start_time).info.run_id
    copies = {c.data.tags["nst.copied_from"]: c for c in children if "nst.copied_from" in c.data.tags}
    assert len(parents) == 2 and len(children) == 5 and sorted(copies) == sorted(r.info.run_id for r in before)
    client = MlflowClient(store)
    for source in before:
        copy = copies[source.info.run_id]
        assert copy.data.tags["mlflow.parentRunId"] == new_parent and copy.info.status == "FINISHED"
        assert copy.info.run_name == source.info.run_name and copy.data.params == source.data.params
        assert (copy.info.start_time, copy.info.end_time) == (source.info.start_time, source.info.end_time)
        for key in source.data.metrics:  # every step of every metric
            assert ([(m.step, m.value) for m in client.get_metric_history(copy.info.run_id, key)]
                    == [(m.step, m.value) for m in client.get_metric_history(source.info.run_id, key)]), key
        finals = [Path(client.download_artifacts(r.info.run_id, "final.png", str(tmp_path / r.info.run_id)))
                  for r in (copy, source)]
        assert finals[0].read_bytes() == finals[1].read_bytes()
        # A FINISHED run never resumes: its checkpoints stay behind, and no tag names one.
        assert "checkpoint" not in [a.path for a in client.list_artifacts(copy.info.run_id)]
        assert not any(k.startswith("nst.checkpoint_step") for k in copy.data.tags)
        assert client.get_run(source.info.run_id).data.tags["mlflow.parentRunId"] != new_parent  # left as it was

    assert main(command) == 0  # the same file again: this sweep's own runs, all three skipped
    assert capsys.readouterr().out.count("  skip ") == 3


def test_fresh_runs_every_point_anew_under_a_new_parent_and_the_next_command_resumes_it(
        grid_file, store, capsys) -> None:
    """After a change to nst itself the run keys are the same, so only --fresh gets new results in the same store."""
    command = ["experiment", str(grid_file), "--tracking-uri", store, "--quiet", "--set", "iterations=2"]
    assert main(command) == 0
    _, first = _runs(store)
    capsys.readouterr()

    assert main([*command, "--fresh"]) == 0
    out = capsys.readouterr().out
    assert "skip " not in out and "copy " not in out and out.count(": FINISHED in ") == 4
    assert "--fresh: every point runs anew" in out
    parents, children = _runs(store)
    new_parent = max(parents, key=lambda p: p.info.start_time)
    again = [c for c in children if c.data.tags["mlflow.parentRunId"] == new_parent.info.run_id]
    assert len(parents) == 2 and len(children) == 8 and len(again) == 4
    assert {c.data.tags["nst.run_key"] for c in again} == {c.data.tags["nst.run_key"] for c in first}
    assert all(c.info.status == "FINISHED" and "nst.copied_from" not in c.data.tags for c in again)
    client = MlflowClient(store)
    for run in first:  # the earlier sweep keeps its runs
        assert client.get_run(run.info.run_id).data.tags["mlflow.parentRunId"] != new_parent.info.run_id

    assert main(command) == 0  # without --fresh: the newest sweep, its runs skipped
    out = capsys.readouterr().out
    assert f"resuming parent run {new_parent.info.run_id}" in out and out.count("  skip ") == 4
    assert all(run.info.run_id in out for run in again)


def test_a_fresh_sweep_cut_short_goes_on_anew_without_copying_the_runs_it_was_to_replace(
        grid_file, store, monkeypatch, capsys) -> None:
    """The same command without --fresh goes on with a --fresh sweep that stopped early. The points it had
    not reached (a batch's runs are made when the batch starts) were copied from the sweep before it: the
    very results --fresh was to replace."""
    from pipelines.execution.executors import Job

    command = ["experiment", str(grid_file), "--tracking-uri", store, "--quiet", "--set", "iterations=2",
               "--batch", "1"]
    assert main(command) == 0
    run, started = Job.run, []

    def ctrl_c_at_the_second_batch(self, *args, **kwargs):
        started.append(self)
        if len(started) == 2:
            raise KeyboardInterrupt
        return run(self, *args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(Job, "run", ctrl_c_at_the_second_batch)
        assert main([*command, "--fresh"]) != 0
    parents, _ = _runs(store)
    fresh = max(parents, key=lambda p: p.info.start_time).info.run_id
    capsys.readouterr()

    assert main(command) == 0
    out = capsys.readouterr().out
    assert f"resuming parent run {fresh}" in out and "  copy " not in out
    assert out.count("  skip ") == 1 and out.count(": start") == 3
    _, children = _runs(store)
    assert len([c for c in children if c.data.tags["mlflow.parentRunId"] == fresh]) == 4


def test_a_finished_run_keeps_no_checkpoint_and_a_sweep_run_again_deletes_those_an_earlier_nst_kept(
        grid_file, store, capsys) -> None:
    """A FINISHED run never resumes: its checkpoints (510-600 MB each for a 512 px L-BFGS run) go when it ends,
    unless keep_checkpoints; the same sweep run again deletes those its FINISHED runs still hold."""
    command = ["experiment", str(grid_file), "--tracking-uri", store, "--quiet", "--set", "checkpoint_every=2"]
    assert main([*command, "--set", "keep_checkpoints=true"]) == 0  # as nst kept them before
    assert main([*command, "--set", "keep_checkpoints=true"]) == 0  # asked to keep them: kept, run again or not
    _, kept = _runs(store)
    client = MlflowClient(store)
    folders = [Path(client.get_run(r.info.run_id).info.artifact_uri.removeprefix("file://")) / "checkpoint"
               for r in kept]
    assert all(sorted(p.name for p in folder.iterdir()) == ["a.ckpt", "b.ckpt"] for folder in folders)
    assert all(sorted(checkpoint_steps(r.data.tags)) == [2, 4] for r in kept), [r.data.tags for r in kept]
    held = sum(f.stat().st_size for folder in folders for f in folder.iterdir())
    capsys.readouterr()

    assert main(command) == 0  # keep_checkpoints is not part of the run key: the same sweep, its runs skipped
    out = capsys.readouterr().out
    assert out.count("  skip ") == 4
    assert f"deleted the checkpoints ({size_text(held)}) of 4 FINISHED runs" in out
    assert not any(folder.exists() for folder in folders)
    _, runs = _runs(store)
    assert not any(checkpoint_steps(r.data.tags) for r in runs)

    assert main(command) == 0  # nothing left to delete: nothing said
    assert "deleted the checkpoints" not in capsys.readouterr().out

    fresh = ["experiment", str(grid_file), "--tracking-uri", store, "--quiet", "--set", "checkpoint_every=2",
             "--fresh"]
    assert main(fresh) == 0  # runs of this nst: FINISHED without their checkpoints
    _, runs = _runs(store)
    assert len(runs) == 8 and not any(checkpoint_steps(r.data.tags) for r in runs)
    assert not any((Path(r.info.artifact_uri.removeprefix("file://")) / "checkpoint").exists() for r in runs)
