"""MLflow, part 1: the store (URI, checks, artifact root), experiments, params and tags.

Part 2, `pipelines.tracking.run_log`, is what logs during a run (metrics, snapshots, status,
checkpoints). Nothing else in the project talks to MLflow.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from mlflow import MlflowClient
from mlflow.entities import Param
from mlflow.exceptions import MlflowException

from pipelines.errors import UserError

#: The default store, relative to the working directory (the project root under `make`).
DEFAULT_STORE = Path("mlruns")
_PARAMS_PER_BATCH = 100  # MLflow's limit per log_batch call
_PARAM_MAX_CHARS = 6000


def resolve_tracking_uri(uri: str | None = None) -> str:
    """`--tracking-uri`, else MLFLOW_TRACKING_URI, else SQLite in ./mlruns (created)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        uri = f"sqlite:///{(DEFAULT_STORE / 'mlflow.db').resolve()}"
    check_store(uri)
    return uri


#: MLflow's HTTP client retries for minutes by default; a user waits at most ~10 s for "unreachable".
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "4",
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def check_store(uri: str) -> None:
    """Fail fast, with the fix, when the store cannot be used: an unwritable SQLite folder or
    an unreachable tracking server (answered within ~10 s, not after MLflow's retries)."""
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".nst-write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise UserError(f"store folder {folder} is not writable ({exc.strerror}); "
                            "pick another with --tracking-uri or fix its permissions") from None
        # MLflow creates and migrates the schema on first use; two processes doing that at
        # once corrupt the migration. One at a time, under a lock file beside the database.
        with open(folder / ".nst-init.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            MlflowClient(uri).search_experiments(max_results=1)
    elif uri.startswith(("http://", "https://")):
        for key, value in HTTP_ENV.items():
            os.environ.setdefault(key, value)
        try:
            MlflowClient(uri).search_experiments(max_results=1)
        except Exception as exc:  # noqa: BLE001 - any failure to talk to it means the same here
            raise UserError(f"tracking server {uri} is unreachable ({type(exc).__name__}); "
                            "start it (make server) or fix --tracking-uri / MLFLOW_TRACKING_URI") from None


def artifact_root(uri: str) -> str | None:
    """Artifacts of a SQLite store live beside its database; a server chooses its own."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
    return None


#: Without it MLflow 3's UI opens an experiment on its GenAI trace overview, not on the runs.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    """The id of experiment `name`, created (or restored) when needed."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=_experiment_artifacts(uri, name),
                                            tags=EXPERIMENT_KIND)
        except MlflowException:  # another process created it a moment ago
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    if "mlflow.experimentKind" not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
    return experiment.experiment_id


def _experiment_artifacts(uri: str, name: str) -> str | None:
    root = artifact_root(uri)
    return f"{root}/{name}" if root else None


def local_artifact_dir(client: MlflowClient, run_id: str) -> Path | None:
    """The run's artifact folder when it is on this machine's disk."""
    parsed = urlparse(client.get_run(run_id).info.artifact_uri)
    return Path(unquote(parsed.path)) if parsed.scheme in ("", "file") else None


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    items = [Param(k, str(v)[:_PARAM_MAX_CHARS]) for k, v in params.items()]
    for i in range(0, len(items), _PARAMS_PER_BATCH):
        client.log_batch(run_id, params=items[i : i + _PARAMS_PER_BATCH])
