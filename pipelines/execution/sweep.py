"""Run a whole sweep: one parent MLflow run, a child run per grid point, resume and isolation.

Running the same experiment again reuses the parent run whose set of runs matches, skips
children already FINISHED with the same `nst.run_key` and runs the rest. A failing point
is marked FAILED with its reason and the sweep goes on; Ctrl-C marks the parent KILLED.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE

from pipelines.config.grid import Experiment, Point
from pipelines.config.runs import RunConfig, flatten, to_dict
from pipelines.execution.batches import AUTO, here, plan, resume_steps
from pipelines.execution.executors import Executor, Job, Task, run_local
from pipelines.execution.inputs import check_inputs
from pipelines.execution.progress import Clock
from pipelines.execution.run import FAILED, FINISHED, KILLED, RunResult, RunSpec
from pipelines.execution.sweep_lock import sweep_lock
from pipelines.tracking import checkpoint_store, space, store
from pipelines.tracking.copy_run import copy_run
from pipelines.tracking.run_writer import drop_checkpoints
from pipelines.tracking.tags import (
    FRESH_TAG,
    POINT_TAG,
    RUN_KEY_TAG,
    SWEEP_KEY_TAG,
    SWEEP_TAG,
    VARIANT_TAG,
    VARIED_TAG,
    checkpoint_tags,
)

SKIPPED = "SKIPPED"  # finished in an earlier invocation of the same sweep


@dataclass
class SweepResult:
    parent_run_id: str
    results: list[tuple[Point, RunResult]] = field(default_factory=list)

    @property
    def failed(self) -> list[tuple[Point, RunResult]]:
        return [(p, r) for p, r in self.results if r.status not in (FINISHED, SKIPPED)]


def find_parent(client: MlflowClient, exp_id: str, experiment: Experiment) -> str | None:
    """The newest parent run of this exact sweep, if one exists."""
    runs = client.search_runs(
        [exp_id],
        filter_string=f"tags.`{SWEEP_TAG}` = '{experiment.name}' and tags.`{SWEEP_KEY_TAG}` = '{experiment.sweep_key}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def children(client: MlflowClient, exp_id: str, parent_id: str, statuses: tuple[str, ...]) -> dict[str, Run]:
    """run_key -> the parent's child run in one of `statuses` (the newest wins)."""
    runs = client.search_runs(
        [exp_id],
        filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_id}'",
        order_by=["attributes.start_time ASC"],
        max_results=10000,
    )
    return {r.data.tags[RUN_KEY_TAG]: r for r in runs if RUN_KEY_TAG in r.data.tags and r.info.status in statuses}


def _create_parent(client: MlflowClient, exp_id: str, experiment: Experiment, fresh: bool) -> str:
    tags = {
        **({FRESH_TAG: "true"} if fresh else {}),
        SWEEP_TAG: experiment.name,
        SWEEP_KEY_TAG: experiment.sweep_key,
        VARIED_TAG: json.dumps(experiment.varied_keys),
        MLFLOW_RUN_NOTE: experiment.description or f"sweep {experiment.name}",
    }
    run_id = store.create_run(client, exp_id, tags=tags, run_name=f"{experiment.name} (sweep)").run_id
    params: dict[str, Any] = {f"grid.{k}": v for k, v in experiment.grid.items()}
    params |= {f"zip.{k}": v for k, v in experiment.zip.items()}
    params |= {f"variant.{k}": v for k, v in experiment.variants.items()}
    params |= {"seeds": experiment.seeds, "runs": len(experiment.points)}
    base = experiment.points[0].config
    params |= {f"base.{k}": v for k, v in flatten(to_dict(base)).items()}
    store.log_params(client, run_id, params)
    return run_id


def run_experiment(
    experiment: Experiment,
    *,
    tracking_uri: str,
    progress: bool = True,
    say: Callable[[str], None] = print,
    executor: Executor = run_local,
    batch: int | str = AUTO,
    batch_cap: Callable[[RunConfig], int] = here,
    fresh: bool = False,
) -> SweepResult:
    """Run every point not yet FINISHED under the sweep's parent run; returns what happened.

    The points run in batches (`batch`: at most that many images in one optimization, or `auto`:
    `batch_cap` images, by default what this machine holds; pipelines.execution.batches). `executor`
    runs the batches (here one after another, or on a Ray cluster: pipelines.execution.ray_executor,
    whose batch_cap says what its workers hold); resuming, skipping and the parent's status are the
    same whichever runs them. `fresh`: a new parent run whatever the store holds, every point run anew."""
    client = MlflowClient(tracking_uri)
    check_inputs([p.config for p in experiment.points], client)  # before anything is written
    # One command per sweep and store: a second would take the first's live runs for interrupted ones
    # (pipelines.execution.sweep_lock). A store with no space left stops the sweep with one line
    # (pipelines.tracking.space).
    with sweep_lock(tracking_uri, experiment.name, experiment.sweep_key), space.stop_when_full(tracking_uri):
        exp_id, parent_id, done, interrupted = _open_parent(client, experiment, tracking_uri, say, fresh)
        sweep = SweepResult(parent_id)
        todo = (list(experiment.points) if fresh
                else _keep_finished(client, experiment, exp_id, parent_id, done, interrupted, sweep, say, tracking_uri))
        runs = [interrupted.get(point.key) for point in todo]
        held = [_held(client, point, run, say) if run else set() for point, run in zip(todo, runs, strict=True)]
        steps = resume_steps([point.config for point in todo], held)
        tasks = [_task(point, experiment.name, parent_id, run, step) for point, run, step in zip(todo, runs, steps,
                                                                                                 strict=True)]
        jobs = [Job(group, tracking_uri, experiment.name, progress, auto=batch == AUTO)
                for group in plan(tasks, lambda t: t.spec.config, lambda t: t.spec.resume_step or 0, batch, batch_cap)]
        clock = Clock(len(todo))
        n = len(experiment.points)

        def announce(point: Point, verb: str) -> None:
            say(f"[{point.index + 1}/{n}] {point.name}: {verb} · {clock.line()}")

        try:
            for point, result in executor(jobs, say=announce):
                clock.ran += 1
                sweep.results.append((point, result))
                outcome = result.status if result.status == FINISHED else f"{result.status} ({result.error})"
                say(f"[{point.index + 1}/{n}] {point.name}: {outcome} in {result.seconds:.1f} s · {clock.line()}")
        except KeyboardInterrupt:
            client.set_terminated(parent_id, KILLED)
            raise
        except BaseException as exc:
            # A full store may not take this either; the error that stopped the sweep is the one to tell.
            with suppress(Exception):
                client.set_terminated(parent_id, KILLED if isinstance(exc, space.StoreFull) else FAILED)
            raise
        client.set_terminated(parent_id, FAILED if sweep.failed else FINISHED)
        sweep.results.sort(key=lambda item: item[0].index)  # a cluster ends runs in any order
        return sweep


def _open_parent(client: MlflowClient, experiment: Experiment, tracking_uri: str, say: Callable[[str], None],
                 fresh: bool = False) -> tuple[str, str, dict[str, Run], dict[str, Run]]:
    """The sweep's MLflow experiment and parent run, found (and RUNNING again) or created (always, when
    `fresh`); its FINISHED children and the ones to resume, by run key."""
    exp_id = store.experiment_id(client, experiment.name, tracking_uri)
    parent_id = None if fresh else find_parent(client, exp_id, experiment)
    done = children(client, exp_id, parent_id, (FINISHED,)) if parent_id else {}
    # Killed mid-run (Ctrl-C: KILLED; kill -9 or a lost machine: still RUNNING): pick up from
    # the run's last checkpoint instead of starting over.
    interrupted = children(client, exp_id, parent_id, ("RUNNING", KILLED)) if parent_id else {}
    if parent_id is None:
        parent_id = _create_parent(client, exp_id, experiment, fresh)
        again = " (--fresh: every point runs anew; the earlier sweeps keep their runs)" if fresh else ""
        say(f"sweep {experiment.name}: new parent run {parent_id}, {len(experiment.points)} runs{again}")
    else:
        client.update_run(parent_id, status="RUNNING")
        say(f"sweep {experiment.name}: resuming parent run {parent_id}")
    # Logged on every invocation: the file may have gained claims or notes that change no run.
    client.log_text(parent_id, experiment.text, experiment.path.name)
    return exp_id, parent_id, done, interrupted


def _keep_finished(client: MlflowClient, experiment: Experiment, exp_id: str, parent_id: str, done: dict[str, Run],
                   interrupted: dict[str, Run], sweep: SweepResult, say: Callable[[str], None],
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
            run = copy_run(client, source, point.name, {**_point_tags(point, experiment.name),
                                                        MLFLOW_PARENT_RUN_ID: parent_id,
                                                        MLFLOW_RUN_NOTE: _description(point, experiment.name)})
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
        sweep.results.append((point, _skipped(run, str(folder / "final.png") if folder else None)))
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


def _held(client: MlflowClient, point: Point, run: Run, say: Callable[[str], None]) -> set[int]:
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


def _task(point: Point, name: str, parent_id: str, interrupted: Run | None, step: int) -> Task:
    """A point to run as a child of the sweep's parent run (resuming its interrupted run, if any,
    from its checkpoint of `step`; 0: from the start, writing no step twice)."""
    spec = RunSpec(
        config=point.config,
        run_name=point.name,
        parent_run_id=parent_id,
        tags=_point_tags(point, name),
        description=_description(point, name),
        resume_run_id=interrupted.info.run_id if interrupted else None,
        resume_step=step,
    )
    return Task(point, spec)


def _point_tags(point: Point, name: str) -> dict[str, str]:
    """A child run's place in its sweep: the sweep, the keys it varies, its place in the expansion."""
    return {SWEEP_TAG: name, VARIED_TAG: json.dumps(list(point.varied)), POINT_TAG: str(point.index),
            **({VARIANT_TAG: point.varied["variant"]} if "variant" in point.varied else {})}


def _description(point: Point, name: str) -> str:
    return f"{name}: varies {point.name}"


def _skipped(run: Run, final_image: str | None) -> RunResult:
    """A point FINISHED by an earlier invocation, with its final losses and time as that run logged them."""
    seconds = ((run.info.end_time or run.info.start_time) - run.info.start_time) / 1000
    losses = {k: v for k, v in run.data.metrics.items() if k.startswith("loss/")}
    return RunResult(run.info.run_id, SKIPPED, seconds, losses, final_image=final_image)


def summary(sweep: SweepResult) -> str:
    """A plain table: run, status, final losses, time (a skipped run's: from its earlier invocation)."""
    width = max([28, *(len(point.name) for point, _ in sweep.results)])
    header = f"{'run':<{width}} {'status':<9} {'J':>11} {'J_content':>11} {'J_style':>11} {'time':>8}"
    lines = [header, "-" * len(header)]
    for point, result in sweep.results:
        loss = result.losses
        keys = ("loss/total", "loss/content", "loss/style")
        cells = [f"{loss[k]:11.4g}" if k in loss else f"{'-':>11}" for k in keys]
        status = "skipped" if result.status == SKIPPED else result.status
        lines.append(f"{point.name:<{width}} {status:<9} {' '.join(cells)} {result.seconds:7.1f}s")
    return "\n".join(lines)
