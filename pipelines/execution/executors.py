"""Who runs a sweep's batches: here, one after another (local), or on a Ray cluster.

A `Job` is one batch of points (pipelines.execution.batches groups them) with everything
`execute_batch` needs; an executor runs jobs and yields (point, RunResult) as they end, in any
order. `announce(point, verb)` prints a progress line when a point's batch starts (local) or is
handed to the cluster (Ray).

Under `--batch auto` a job that would not fit in all the memory free where it runs, by the estimate
that sizes batches to half of it (batches.here), runs in batches of that size: its sweep may have
planned it elsewhere (a Ray driver, with no GPU or another GPU) or with more memory free. (Within a
factor of 2 it runs as planned: a small change in free memory would otherwise split every batch.) And a
batch that runs out of memory all the same runs again as batches of half its size, down to one
image, each run resumed where the store holds it (its checkpoint, its rows): another process (two
Ray batches sharing a GPU, say) may take the memory a batch was sized by. Only a run of one image
that does not fit ends FAILED on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Protocol

from mlflow import MlflowClient

from pipelines.config.grid import Point
from pipelines.execution.batches import here, plan, resume_steps
from pipelines.execution.failures import out_of_memory
from pipelines.execution.run import RunResult, RunSpec, execute_batch
from pipelines.tracking.checkpoint_store import checkpoint_steps
from pipelines.tracking.writers import WriterPool

Announce = Callable[[Point, str], None]


@dataclass
class Task:
    point: Point
    spec: RunSpec

    @property
    def verb(self) -> str:
        resume, step = self.spec.resume_run_id, self.spec.resume_step
        if not resume:
            return "start"
        return f"resume run {resume} " + (f"from its checkpoint of step {step}" if step else "from the start")


@dataclass
class Job:
    """One batch: its tasks, run together as one image tensor, each its own MLflow run."""

    tasks: list[Task]
    tracking_uri: str
    experiment: str
    progress: bool = True
    auto: bool = False  # sized by `--batch auto`: smaller where it runs if it would not fit there (above)

    def run(self, pool: WriterPool | None = None, say: Announce | None = None) -> list[RunResult]:
        """The batch's results, one per task; `say` announces the smaller batches it may run as."""
        n = len(self.tasks)
        if self.auto and n > 2 * (most := here(self.tasks[0].spec.config)):  # the module docstring says why 2
            placed = self._in_smaller(list(enumerate(self.tasks)), most, pool, say, f"at most {most} at once here")
            return [result for _, result in sorted(placed, key=lambda p: p[0])]
        results = execute_batch([t.spec for t in self.tasks], tracking_uri=self.tracking_uri,
                                experiment=self.experiment, progress=self.progress, pool=pool)
        again = [i for i, r in enumerate(results) if out_of_memory(r.error)]
        if n == 1 or not again:
            return results
        # Each run resumes from the step its checkpoints allow (a batch saves them in rounds), writing no
        # step twice; runs at different steps cannot share a batch (plan keeps them apart).
        client = MlflowClient(self.tracking_uri)
        held = [set(checkpoint_steps(client.get_run(results[i].run_id).data.tags)) for i in again]
        steps = resume_steps([self.tasks[i].spec.config for i in again], held)
        retried = [(i, Task(self.tasks[i].point, replace(self.tasks[i].spec, resume_run_id=results[i].run_id,
                                                         resume_step=step)))
                   for i, step in zip(again, steps, strict=True)]
        for i, result in self._in_smaller(retried, (n + 1) // 2, pool, say, f"out of memory in a batch of {n}"):
            results[i] = result
        return results

    def _in_smaller(self, tasks: list[tuple[int, Task]], most: int, pool: WriterPool | None, say: Announce | None,
                    why: str) -> list[tuple[int, RunResult]]:
        """(place, task) pairs run in batches of at most `most`: (place, result) pairs."""
        placed = []
        for group in plan(tasks, lambda t: t[1].spec.config, lambda t: t[1].spec.resume_step or 0, most):
            smaller = Job([task for _, task in group], self.tracking_uri, self.experiment, self.progress)
            if say is not None:
                for task in smaller.tasks:
                    say(task.point, f"{why}: {smaller.verb(task)}")
            placed += [(i, result) for (i, _), result in zip(group, smaller.run(pool, say), strict=True)]
        return placed

    def verb(self, task: Task, up_to: bool = False) -> str:
        """`start (a batch of 8)`; `up_to`: where it runs may split it (a Ray worker's GPU, which the driver
        cannot see, sizes an auto batch: Job.run), so the driver says `a batch of up to 8`."""
        n = len(self.tasks)
        return task.verb + (f" (a batch of {'up to ' if up_to else ''}{n})" if n > 1 else "")


class Executor(Protocol):
    def __call__(self, jobs: list[Job], *, say: Announce) -> Iterator[tuple[Point, RunResult]]: ...


def run_local(jobs: list[Job], *, say: Announce) -> Iterator[tuple[Point, RunResult]]:
    """In this process, batch after batch, their writer processes kept from one to the next. Bad input
    (UserError) and Ctrl-C stop the sweep."""
    with WriterPool() as pool:
        for job in jobs:
            for task in job.tasks:
                say(task.point, job.verb(task))
            yield from zip((t.point for t in job.tasks), job.run(pool, say), strict=True)
