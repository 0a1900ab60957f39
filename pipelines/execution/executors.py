"""Who runs a sweep's points: here, one after another (local), or on a Ray cluster.

An executor takes the points still to run, each with the arguments of `pipelines.run.execute`,
and yields (point, RunResult) as runs end, in any order. `announce(point, verb)` prints a
progress line when a run starts (local) or is handed to the cluster (Ray).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from pipelines.config.grid import Point
from pipelines.execution.run import RunResult, execute

Announce = Callable[[Point, str], None]


@dataclass
class Task:
    point: Point
    kwargs: dict[str, Any]  # keyword arguments of pipelines.run.execute

    @property
    def verb(self) -> str:
        resume = self.kwargs.get("resume_run_id")
        return f"resume run {resume}" if resume else "start"


class Executor(Protocol):
    def __call__(self, tasks: list[Task], *, say: Announce) -> Iterator[tuple[Point, RunResult]]: ...


def run_local(tasks: list[Task], *, say: Announce) -> Iterator[tuple[Point, RunResult]]:
    """In this process, in grid order. Bad input (UserError) and Ctrl-C stop the sweep."""
    for task in tasks:
        say(task.point, task.verb)
        yield task.point, execute(**task.kwargs)
