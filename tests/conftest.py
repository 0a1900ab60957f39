"""Shared fixtures: the shipped sample images, a temporary MLflow store, a tiny config."""

from __future__ import annotations

from pathlib import Path

import pytest

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
def store(tmp_path: Path) -> str:
    """A fresh SQLite MLflow store URI in a temporary folder."""
    folder = tmp_path / "store"
    folder.mkdir()
    return f"sqlite:///{folder}/mlflow.db"
