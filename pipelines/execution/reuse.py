"""What earlier commands of a sweep left, and how this one reuses it.

A point FINISHED under the sweep's parent run is skipped (the checkpoints an earlier nst left on it
deleted). A point that an earlier version of the file ran (another parent of the same sweep: a
value since added to the grid, say) is copied under this parent (pipelines.tracking.copy_run): if it
FINISHED there, instead of optimized again; if it was interrupted there, with its checkpoints, to
resume from them. Nothing from before the newest `--fresh` parent is reused. An interrupted run
resumes from the checkpoints whose files are in the store, whole.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE

from pipelines.config.grid import Experiment, Point
from pipelines.execution.run import FAILED, FINISHED, RunResult
from pipelines.tracking import checkpoint_store, space, store
from pipelines.tracking.copy_run import copy_run
from pipelines.tracking.run_writer import drop_checkpoints
from pipelines.tracking.tags import (
    FRESH_TAG,
    POINT_TAG,
    RUN_KEY_TAG,
    SWEEP_TAG,
    VARIANT_TAG,
    VARIED_TAG,
    checkpoint_tags,
)

SKIPPED = "SKIPPED"  # finished in an earlier invocation of the same sweep


def keep_finished(client: MlflowClient, experiment: Experiment, exp_id: str, parent_id: str, done: dict[str, Run],
                   interrupted: dict[str, Run], results: list[tuple[Point, RunResult]], say: Callable[[str], None],
                   tracking_uri: str) -> list[Point]:
    """The points still to run. One FINISHED under this parent is skipped (its checkpoints deleted if an
    earlier nst left them: run_writer.drop_checkpoints). One that an earlier version of the file ran
    (another parent of the same sweep: a value since added to the grid, say) is copied here
    (pipelines.tracking.copy_run): if it FINISHED there, instead of optimized again; if it was
    interrupted there, with its checkpoints, and added to `interrupted` to resume from them."""
    missing = [p for p in experiment.points if p.key not in done and p.key not in interrupted]
    earlier = _ran_elsewhere(client, exp_id, experiment.name, parent_id) if missing else {}
    todo, freed, dropped = [], 0, 0
    for point in experiment.points:
        if point.key in done:
            run = done[point.key]
            say(f"  skip {point.name}: already FINISHED as run {run.info.run_id}")
            # Kept by an earlier nst (or keep_checkpoints since unset, or a kill before they went).
            if not point.config.keep_checkpoints and checkpoint_tags(run.data.tags):
                freed, dropped = freed + drop_checkpoints(tracking_uri, run.info.run_id), dropped + 1
        elif point.key in earlier and point.key not in interrupted:
            source = earlier[point.key]
            run = copy_run(client, source, point.name, {**point_tags(point, experiment.name),
                                                        MLFLOW_PARENT_RUN_ID: parent_id,
                                                        MLFLOW_RUN_NOTE: description(point, experiment.name)})
            if run.info.status != FINISHED:
                say(f"  copy {point.name}: interrupted as run {source.info.run_id} in an earlier version of this "
                    f"sweep; copied as run {run.info.run_id}, to resume from its checkpoint")
                interrupted[point.key] = run
                todo.append(point)
                continue
            say(f"  copy {point.name}: FINISHED as run {source.info.run_id} in an earlier version of this sweep; "
                f"copied as run {run.info.run_id}")
        else:
            todo.append(point)
            continue
        folder = store.local_folder(run.info.artifact_uri)  # the run in hand: no request to ask for it again
        results.append((point, _skipped(run, str(folder / "final.png") if folder else None)))
    if dropped:
        size = f" ({space.size_text(freed)})" if freed else ""
        say(f"  deleted the checkpoints{size} of {dropped} FINISHED run{'s' if dropped > 1 else ''}: a FINISHED "
            "run never resumes")
    return todo


def _ran_elsewhere(client: MlflowClient, exp_id: str, name: str, parent_id: str) -> dict[str, Run]:
    """run key -> the newest FINISHED child of this sweep's other parents, else its newest interrupted
    one (RUNNING after a kill -9, or KILLED) that holds a checkpoint; none older than the newest
    --fresh parent, whose sweep was to replace them (a copy keeps its source's start time)."""
    fresh = client.search_runs([exp_id], f"tags.`{SWEEP_TAG}` = '{name}' and tags.`{FRESH_TAG}` = 'true'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    since = fresh[0].info.start_time if fresh else 0
    runs = client.search_runs(
        [exp_id], filter_string=f"tags.`{SWEEP_TAG}` = '{name}' and attributes.status != '{FAILED}' "
                                f"and attributes.start_time >= {since}",
        order_by=["attributes.start_time DESC"], max_results=10000)
    finished: dict[str, Run] = {}
    cut_short: dict[str, Run] = {}
    for run in runs:
        if RUN_KEY_TAG in run.data.tags and run.data.tags.get(MLFLOW_PARENT_RUN_ID, parent_id) != parent_id:
            if run.info.status == FINISHED:
                finished.setdefault(run.data.tags[RUN_KEY_TAG], run)
            elif checkpoint_store.checkpoint_steps(run.data.tags):
                cut_short.setdefault(run.data.tags[RUN_KEY_TAG], run)
    return {**cut_short, **finished}


def held(client: MlflowClient, point: Point, run: Run, say: Callable[[str], None]) -> set[int]:
    """The steps of the interrupted run's checkpoints that it can resume from: those its tags name whose
    file is in the store, whole. One deleted by hand (to free disk: they are large) made every command
    crash on it, and a damaged one failed its whole batch; the run now resumes from what is left, or
    from its start, and says so."""
    there, gone = checkpoint_store.present_checkpoints(client, run)
    if gone:
        steps = ", ".join(map(str, sorted(gone)))
        plural = len(gone) > 1
        since = f"step {max(there)}" if there else "its start"
        say(f"  {point.name}: the checkpoint{'s' if plural else ''} of step{'s' if plural else ''} {steps} of run "
            f"{run.info.run_id} {'are' if plural else 'is'} missing or damaged in the store; it resumes from {since}")
    return there


def point_tags(point: Point, name: str) -> dict[str, str]:
    """A child run's place in its sweep: the sweep, the keys it varies, its place in the expansion."""
    return {SWEEP_TAG: name, VARIED_TAG: json.dumps(list(point.varied)), POINT_TAG: str(point.index),
            **({VARIANT_TAG: point.varied["variant"]} if "variant" in point.varied else {})}


def description(point: Point, name: str) -> str:
    return f"{name}: varies {point.name}"


def _skipped(run: Run, final_image: str | None) -> RunResult:
    """A point FINISHED by an earlier invocation, with its final losses and time as that run logged them."""
    seconds = ((run.info.end_time or run.info.start_time) - run.info.start_time) / 1000
    losses = {k: v for k, v in run.data.metrics.items() if k.startswith("loss/")}
    return RunResult(run.info.run_id, SKIPPED, seconds, losses, final_image=final_image)
