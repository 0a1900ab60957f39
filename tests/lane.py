"""Which device the suite runs its transfers on: `NST_TEST_DEVICE=cuda` (`make test-gpu`) or the CPU.

The CPU lane (`make test`, CI) hides any GPU from the tests and the processes they start, so that
`device: auto` means the CPU wherever it runs. The GPU lane leaves it visible: every run the tests
start with `device: auto` lands on it, and the tests that build a module themselves put it there.
"""

from __future__ import annotations

import os

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
