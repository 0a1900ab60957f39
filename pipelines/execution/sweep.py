"""Run a whole sweep: one parent MLflow run, a child run per grid point, resume and isolation.

Running the same experiment again reuses the parent run whose set of runs matches, skips
children already FINISHED with the same `nst.run_key`, resumes the interrupted ones and runs the
rest (what an earlier command left, and what is reused of it: pipelines.execution.reuse). A failing
point is marked FAILED with its reason and the sweep goes on; Ctrl-C marks the parent KILLED.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE

from pipelines.config.grid import Experiment, Point
from pipelines.config.runs import RunConfig, flatten, to_dict
from pipelines.execution import reuse
from pipelines.execution.batches import AUTO, here, plan, resume_steps
from pipelines.execution.executors import Executor, Job, Task, run_local
from pipelines.execution.inputs import check_inputs
from pipelines.execution.progress import Clock
from pipelines.execution.reuse import SKIPPED
from pipelines.execution.run import FAILED, FINISHED, KILLED, RunResult, RunSpec
from pipelines.execution.sweep_lock import sweep_lock
from pipelines.tracking import space, store
from pipelines.tracking.tags import (
    FRESH_TAG,
    RUN_KEY_TAG,
    SWEEP_KEY_TAG,
    SWEEP_TAG,
    VARIED_TAG,
)


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
    # One command per sweep and store (_holding). A store with no space left stops the sweep with one
    # line (pipelines.tracking.space).
    with space.stop_when_full(tracking_uri), _holding(client, experiment, tracking_uri) as exp_id:
        parent_id, done, interrupted = _open_parent(client, experiment, exp_id, say, fresh)
        sweep = SweepResult(parent_id)
        todo = (list(experiment.points) if fresh
                else reuse.keep_finished(client, experiment, exp_id, parent_id, done, interrupted, sweep.results, say,
                                         tracking_uri))
        runs = [interrupted.get(point.key) for point in todo]
        held = [reuse.held(client, point, run, say) if run else set() for point, run in zip(todo, runs, strict=True)]
        steps = resume_steps([point.config for point in todo], held)
        tasks = [_task(point, experiment.name, parent_id, run, step) for point, run, step in zip(todo, runs, steps,
                                                                                                 strict=True)]
        jobs = [Job(group, tracking_uri, experiment.name, progress, auto=batch == AUTO)
                for group in plan(tasks, lambda t: t.spec.config, lambda t: t.spec.resume_step or 0, batch, batch_cap)]
        clock = Clock([[task.point.index for task in job.tasks] for job in jobs])
        n = len(experiment.points)

        def announce(point: Point, verb: str) -> None:
            say(f"[{point.index + 1}/{n}] {point.name}: {verb} · {clock.line()}")

        try:
            for point, result in executor(jobs, say=announce):
                clock.done(point.index)
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


@contextmanager
def _holding(client: MlflowClient, experiment: Experiment, tracking_uri: str) -> Iterator[str]:
    """The sweep's MLflow experiment (made when new), while this command holds the sweep: a second
    would take the first's live runs for interrupted ones (pipelines.execution.sweep_lock)."""
    exp_id = store.experiment_id(client, experiment.name, tracking_uri)
    with sweep_lock(tracking_uri, exp_id, experiment.name, experiment.sweep_key):
        yield exp_id


def _open_parent(client: MlflowClient, experiment: Experiment, exp_id: str, say: Callable[[str], None],
                 fresh: bool = False) -> tuple[str, dict[str, Run], dict[str, Run]]:
    """The sweep's parent run in MLflow experiment `exp_id`, found (and RUNNING again) or created (always, when
    `fresh`); its FINISHED children and the ones to resume, by run key."""
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
    return parent_id, done, interrupted


def _task(point: Point, name: str, parent_id: str, interrupted: Run | None, step: int) -> Task:
    """A point to run as a child of the sweep's parent run (resuming its interrupted run, if any,
    from its checkpoint of `step`; 0: from the start, writing no step twice)."""
    spec = RunSpec(
        config=point.config,
        run_name=point.name,
        parent_run_id=parent_id,
        tags=reuse.point_tags(point, name),
        description=reuse.description(point, name),
        resume_run_id=interrupted.info.run_id if interrupted else None,
        resume_step=step,
    )
    return Task(point, spec)


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
