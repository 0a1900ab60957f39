"""Which device the suite runs its transfers on: `NST_TEST_DEVICE=cuda` (`make test-gpu`) or the CPU.

The CPU lane (`make test`, CI) hides any GPU from the tests and the processes they start, so that
`device: auto` means the CPU wherever it runs. The GPU lane leaves it visible: every run the tests
start with `device: auto` lands on it, and the tests that build a module themselves put it there.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TypeVar

import pytest

DEVICE = os.environ.get("NST_TEST_DEVICE", "cpu")
ON_GPU = DEVICE == "cuda"
ACCELERATOR = "gpu" if ON_GPU else "cpu"  # Lightning's name for the device
gpu_only = pytest.mark.skipif(not ON_GPU, reason="GPU lane only (make test-gpu): needs a CUDA GPU")

def process_writer(*values: object) -> object:
    """A test's case (its parameters) that runs with writer processes (NST_WRITER=process, or process:N):
    skipped on a GPU, where processes, one per run, are the device's own choice, which the test's default
    case runs already."""
    return pytest.param(*values, marks=pytest.mark.skipif(
        ON_GPU, reason="on a GPU the device's choice is a writer process: the default case runs it"))


T = TypeVar("T")


def dealt(tests: Sequence[T], workers: int, weight: Callable[[T], float], group: Callable[[T], str | None]) -> list[T]:
    """The tests in the order that keeps pytest-xdist's workers (--dist loadgroup) from running two heavy
    tests on end. Its units are each xdist_group (dealt first, the largest first) and then each other test
    in this order. Worker k starts with units k and workers + k, and runs the second only after the first
    (a worker needs its next test before it runs one): with the heavy tests first, a worker of the GPU lane
    was dealt two of them, 2-3 minutes each, on end. So the heaviest (weight, most first) go where a worker
    starts, light ones (weight 0) where it waits, then the other heavy ones, to whichever worker is free
    first, then the rest."""
    groups = {group(t) for t in tests} - {None}
    grouped = [t for t in tests if group(t) is not None]
    single = [t for t in tests if group(t) is None]
    heavy = sorted((t for t in single if weight(t)), key=weight, reverse=True)  # stable among equals
    light = [t for t in single if not weight(t)]
    starting = max(0, workers - len(groups))  # the singles that start a worker
    waiting = max(0, 2 * workers - max(workers, len(groups)))  # the singles each worker holds behind its first
    return grouped + heavy[:starting] + light[:waiting] + heavy[starting:] + light[waiting:]
