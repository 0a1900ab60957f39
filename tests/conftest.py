"""Shared fixtures: the shipped sample images, a temporary MLflow store, a tiny config; the test
lane (tests/lane.py): the CPU, or the GPU under NST_TEST_DEVICE=cuda."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.lane import DEVICE, ON_GPU, dealt

if DEVICE == "cpu":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch looks: `auto` is the CPU, in subprocesses too


def pytest_configure(config: pytest.Config) -> None:
    if DEVICE not in ("cpu", "cuda"):
        _refuse(f"NST_TEST_DEVICE={DEVICE}: use cuda (the GPU lane) or leave it unset (the CPU)")
    if ON_GPU:
        import torch

        if not torch.cuda.is_available():
            _refuse("NST_TEST_DEVICE=cuda: no CUDA GPU is visible on this machine; run `make test` (the CPU lane)")


def _refuse(message: str) -> None:
    """One line and exit status 2, before pytest prints anything."""
    print(f"tests: {message}", file=sys.stderr)
    os._exit(2)


def _weight(item: pytest.Item) -> float:
    """0 for a light test; a heavy one's minutes on the GPU lane where measured (`heavy(2.5)`), else 1."""
    marker = item.get_closest_marker("heavy")
    return 0.0 if marker is None else float(marker.args[0]) if marker.args else 1.0


def _group(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker("xdist_group")
    return str(marker.args[0]) if marker is not None else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Both lanes start the heavy tests first: pytest-xdist deals tests to its workers in collection
    order, and dealt late, the four longest (80-100 s on an H100) ran on after every other test was
    done; under pytest-xdist, dealt so that no worker starts with two of them (tests.lane.dealt). The
    GPU lane skips the tests that run no transfer on a device of their own choosing."""
    workers = getattr(config, "workerinput", {}).get("workercount")
    if workers:
        items[:] = dealt(items, int(workers), _weight, _group)
    else:
        items.sort(key=lambda item: -_weight(item))  # stable: the rest keep their order
    if not ON_GPU:
        return
    for item in items:
        marker = item.get_closest_marker("cpu_only")
        if marker is not None:
            item.add_marker(pytest.mark.skip(reason=f"CPU lane only: {marker.args[0]}"))
        elif item.get_closest_marker("browser") is not None:
            item.add_marker(pytest.mark.skip(reason="CPU lane only: the UI test drives chromium over a store; "
                                             "its runs' device does not change what the browser shows"))


@pytest.fixture(scope="session")
def device() -> str:
    """Where this lane's transfers run: "cpu" or "cuda"."""
    return DEVICE

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "experiments" / "images"


@pytest.fixture(autouse=True)
def _no_global_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test may write to the project's mlruns/: the default store is a temporary one."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/default/mlflow.db")


@pytest.fixture
def content_path() -> Path:
    return IMAGES / "grace_hopper.jpg"


@pytest.fixture
def style_path() -> Path:
    return IMAGES / "starry_night.jpg"


@pytest.fixture
def make_store() -> Callable[[Path], str]:
    """`make_store(folder)`: the URI of a new SQLite MLflow store in `folder`, a copy of one MLflow made
    once in this session (benchmarks.stores: 0.02 s against 0.6 s of MLflow's migrations)."""
    from benchmarks.stores import new_store

    return new_store


@pytest.fixture
def store(tmp_path: Path, make_store: Callable[[Path], str]) -> str:
    """The URI of a new SQLite MLflow store in a temporary folder."""
    return make_store(tmp_path / "store")


@pytest.fixture
def unmade_store(tmp_path: Path) -> str:
    """The URI of a SQLite MLflow store that does not exist yet: a command that must write nothing must
    not make it either."""
    return f"sqlite:///{tmp_path}/store/mlflow.db"
