"""Who runs a sweep's batches: here, one after another (local), or on a Ray cluster.

A `Job` is one batch of points (pipelines.execution.batches groups them) with everything
`execute_batch` needs; an executor runs jobs and yields (point, RunResult) as they end, in any
order. `announce(point, verb)` prints a progress line when a point's batch starts (local) or is
handed to the cluster (Ray).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from pipelines.config.grid import Point
from pipelines.execution.run import RunResult, RunSpec, execute_batch
from pipelines.tracking.writers import WriterPool

Announce = Callable[[Point, str], None]


@dataclass
class Task:
    point: Point
    spec: RunSpec

    @property
    def verb(self) -> str:
        resume = self.spec.resume_run_id
        return f"resume run {resume}" if resume else "start"


@dataclass
class Job:
    """One batch: its tasks, run together as one image tensor, each its own MLflow run."""

    tasks: list[Task]
    tracking_uri: str
    experiment: str
    progress: bool = True

    def run(self, pool: WriterPool | None = None) -> list[RunResult]:
        return execute_batch([t.spec for t in self.tasks], tracking_uri=self.tracking_uri,
                             experiment=self.experiment, progress=self.progress, pool=pool)

    def verb(self, task: Task) -> str:
        n = len(self.tasks)
        return task.verb + (f" (a batch of {n})" if n > 1 else "")


class Executor(Protocol):
    def __call__(self, jobs: list[Job], *, say: Announce) -> Iterator[tuple[Point, RunResult]]: ...


def run_local(jobs: list[Job], *, say: Announce) -> Iterator[tuple[Point, RunResult]]:
    """In this process, batch after batch, their writer processes kept from one to the next. Bad input
    (UserError) and Ctrl-C stop the sweep."""
    with WriterPool() as pool:
        for job in jobs:
            for task in job.tasks:
                say(task.point, job.verb(task))
            yield from zip((t.point for t in job.tasks), job.run(pool), strict=True)
