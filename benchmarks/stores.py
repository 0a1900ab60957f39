"""New SQLite MLflow stores, fast: each a copy of one that MLflow made once in this process. Making a
store runs MLflow's schema migrations (about 0.6 s on this CPU); a copy of its file takes 0.02 s. A
bench that gives every timed batch a fresh store (so no run finds another's rows) would otherwise pay
the migrations each time. The template's Default experiment keeps its artifacts in the template's
folder; nst's experiments keep theirs beside the copy (pipelines.tracking.store)."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path


@functools.cache
def _template() -> Path:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    folder = Path(tempfile.mkdtemp(prefix="nst-store-template-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    SqlAlchemyStore(f"sqlite:///{folder}/mlflow.db", (folder / "artifacts").as_uri()).engine.dispose()
    return folder / "mlflow.db"


def new_store(folder: Path | str) -> str:
    """The URI of a new SQLite MLflow store in `folder` (made if missing)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_template(), folder / "mlflow.db")
    return f"sqlite:///{folder}/mlflow.db"
