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
#: Relative, in J at every step: a point in a batch against the same point in another batch (or alone),
#: whose convolutions sum in another order. Measured over 30 steps at 40 px (tests/test_batches.py):
#: 2.4e-7 on this CPU (bf16), 1.6e-3 on an H200 (bf16, cuDNN picks other kernels); 1.6e-3 on an H200
#: after a 480-step resume alone from a batch's checkpoint (tests/test_resume.py).
BATCH_J_TOLERANCE = 5e-3 if ON_GPU else 1e-5

gpu_only = pytest.mark.skipif(not ON_GPU, reason="GPU lane only (make test-gpu): needs a CUDA GPU")
