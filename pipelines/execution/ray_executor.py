"""Run a sweep's batches as Ray tasks: each worker logs its batch's child runs straight to the tracking server.

The driver (pipelines.execution.sweep) has already created or found the parent run, decided which
points still need running and grouped them into batches, so resume and skip behave exactly as with
the local executor. A task runs one batch (`Job.run`: execute_batch) in a Ray worker process; Ray
schedules tasks onto the cluster's CPUs or GPUs by the resources each batch asks for
(`--resources '{"num_gpus": 1}'`).

A worker that dies (killed, out of memory, its host lost) leaves its runs RUNNING with nobody to
end them: the driver marks them KILLED with the reason, and the next invocation of the sweep resumes
them from their last checkpoints, as after a kill -9 of a local run.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from pipelines.config.grid import Point
from pipelines.config.runs import RunConfig
from pipelines.errors import UserError
from pipelines.execution.batches import GPU_MAX, auto_size
from pipelines.execution.executors import Announce, Executor, Job, Task
from pipelines.execution.run import FAILED, KILLED, RunResult
from pipelines.tracking.auth import CREDENTIALS
from pipelines.tracking.space import StoreFull
from pipelines.tracking.writers import WRITER_ENV, WriterPool

if TYPE_CHECKING:  # Ray is imported where the batches start: it is an optional extra
    from ray.exceptions import RayTaskError

#: The keys of Ray's task options a user may set per run.
RESOURCE_KEYS = ("num_cpus", "num_gpus", "memory", "resources", "accelerator_type")


def parse_resources(text: str | None) -> dict[str, Any]:
    """`--resources '{"num_gpus": 1}'` -> Ray task options, checked."""
    if not text:
        return {}
    try:
        resources = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"--resources is not JSON ({exc.msg}); e.g. --resources '{{\"num_gpus\": 1}}'") from None
    if not isinstance(resources, dict):
        raise UserError("--resources must be a JSON object, e.g. '{\"num_cpus\": 2, \"num_gpus\": 1}'")
    unknown = sorted(set(resources) - set(RESOURCE_KEYS))
    if unknown:
        raise UserError(f"--resources: unknown key {unknown[0]!r}; use {', '.join(RESOURCE_KEYS)}")
    for key in ("num_cpus", "num_gpus", "memory"):
        value = resources.get(key)
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool) or value < 0):
            raise UserError(f"--resources: {key} must be a number >= 0, got {value!r}")
    return resources


def batch_cap(resources: dict[str, Any]) -> Callable[[RunConfig], int]:
    """`--batch auto`'s cap for batches run on Ray workers, planned on the driver, which may have no GPU
    (or another than theirs): a batch that asks for a GPU share (num_gpus) may hold up to GPU_MAX images,
    and its worker runs it in smaller batches where its GPU's free memory would not hold it
    (executors.Job.run); a batch for CPU workers, as on a CPU."""
    gpus = bool(resources.get("num_gpus"))
    return lambda config: GPU_MAX if gpus and config.device != "cpu" else auto_size(config, "cpu")


def announcement(job: Job, task: Task, resources: dict[str, Any]) -> str:
    """The driver's line for a point handed to Ray. A GPU batch planned by `--batch auto` (batch_cap) is
    sized again by its worker's free GPU memory, which may split it: the driver says "up to"."""
    return f"{job.verb(task, up_to=job.auto and bool(resources.get('num_gpus')))} on Ray"


def worker_env() -> dict[str, str]:
    """What the driver's environment says for its workers, whatever the environment their `ray start`
    had: its sign-in (they log as the user who ran the sweep) and its choice of writers."""
    return {key: os.environ[key] for key in (*CREDENTIALS, WRITER_ENV) if os.environ.get(key)}


@functools.cache  # one per worker process
def worker_pool() -> WriterPool:
    """This worker's writer processes, kept from task to task as a local sweep keeps them from batch to
    batch: Ray reuses a worker for the tasks of one shape, and each of its batches written by processes
    (a GPU's) would otherwise start its own (about 1.4 s here: BENCHMARKS.md, "A tracked fit's one-off
    time") and wait for it at its end. They end with the worker (as every writer process ends with its
    parent), idle: each batch waits for its own writes before it returns."""
    pool = WriterPool()
    atexit.register(pool.__exit__, None, None, None)
    return pool


def _execute_in_worker(job: Job) -> list[RunResult]:
    """What a Ray task runs: one tracked batch, without progress bars (nobody sees a worker's tty)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    job.progress = False
    return job.run(worker_pool())


def ray_executor(address: str | None = None, resources: dict[str, Any] | None = None) -> Executor:
    """An executor on the Ray cluster at `address` ("auto", "HOST:PORT"; None: $RAY_ADDRESS or a
    fresh local instance)."""

    def run(jobs: list[Job], *, say: Announce) -> Iterator[tuple[Point, RunResult]]:
        if not jobs:
            return
        import ray
        from ray.exceptions import RayError, RayTaskError

        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING,
                     include_dashboard=False, configure_logging=True)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise UserError(f"cannot reach the Ray cluster at {address or 'RAY_ADDRESS'} ({exc}); "
                            "start it with `ray start --head` or fix --ray-address") from None
        # No retries: a retried task would start a second child run; the driver resumes instead.
        remote = ray.remote(max_retries=0)(_execute_in_worker).options(
            **(resources or {}), runtime_env={"env_vars": worker_env()})
        pending = {}
        for job in jobs:
            pending[remote.remote(job)] = job
            for task in job.tasks:
                say(task.point, announcement(job, task, resources or {}))
        client = MlflowClient(jobs[0].tracking_uri)
        try:
            while pending:
                [ref], _ = ray.wait(list(pending), num_returns=1)
                job = pending.pop(ref)
                try:
                    results = ray.get(ref)
                except RayTaskError as exc:  # execute_batch() raised: bad input seen on the worker, say
                    results = task_failed(client, job, exc)
                except RayError as exc:  # the worker process died under the batch
                    results = [_lost(client, t, f"Ray worker died ({type(exc).__name__})") for t in job.tasks]
                yield from zip((t.point for t in job.tasks), results, strict=True)
        except BaseException:
            for ref, job in pending.items():
                ray.cancel(ref, force=True)
                for task in job.tasks:
                    _lost(client, task, "sweep interrupted")
            raise
        finally:
            ray.shutdown()

    return run


def task_failed(client: MlflowClient, job: Job, error: RayTaskError) -> list[RunResult]:
    """The results of a batch whose task raised: its runs FAILED with the error. A full store instead
    stops the sweep, as it does run locally: every batch after it would fail the same way."""
    cause = error.cause if error.cause is not None else error
    if isinstance(cause, StoreFull):  # its runs are KILLED already (space.suspend), resumable
        raise cause
    return [RunResult(_child_id(client, t) or "", FAILED, 0.0, error=str(cause)) for t in job.tasks]


def _child_id(client: MlflowClient, task: Task) -> str | None:
    """The run a task created (or resumed) for its point, if it got that far."""
    if task.spec.resume_run_id:
        return task.spec.resume_run_id
    parent = task.spec.parent_run_id
    if parent is None:  # not a sweep's point: nothing to look for
        return None
    runs = client.search_runs(
        [client.get_run(parent).info.experiment_id],
        filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent}' and tags.`nst.run_key` = '{task.point.key}'",
        order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def _lost(client: MlflowClient, task: Task, reason: str) -> RunResult:
    """Mark the dead task's run KILLED (resumable from its checkpoint) and say why."""
    run_id = _child_id(client, task)
    if run_id and client.get_run(run_id).info.status == "RUNNING":
        client.set_tag(run_id, "nst.error", reason)
        client.set_terminated(run_id, KILLED)
    return RunResult(run_id or "", KILLED, 0.0, error=f"{reason}; run the sweep again to resume it")
