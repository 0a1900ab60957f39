"""All MLflow code: the store, runs, buffered metrics, image snapshots and status.

The Lightning module only calls `self.log(...)`; `BufferedMLFlowLogger` keeps those metrics
in memory and writes them in batches (a SQLite write costs milliseconds, an iteration tens),
and `Snapshots` logs the generated image at the snapshot steps for the UI's step slider.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytorch_lightning as pl
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from pytorch_lightning.loggers import MLFlowLogger

from nst.images import to_pil
from nst.module import DivergedError
from pipelines.errors import UserError

#: The default store, relative to the working directory (the project root under `make`).
DEFAULT_STORE = Path("mlruns")
_PARAMS_PER_BATCH = 100  # MLflow's limit per log_batch call
_METRICS_PER_BATCH = 1000
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
        return client.create_experiment(name, artifact_location=_experiment_artifacts(uri, name), tags=EXPERIMENT_KIND)
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


def set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, Any]) -> None:
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_text(client: MlflowClient, run_id: str, text: str, name: str) -> None:
    client.log_text(run_id, text, name)


class BufferedMLFlowLogger(MLFlowLogger):
    """MLFlowLogger that buffers metrics and writes them at most once per `flush_seconds`.

    Every step still reaches the store: `finalize` (success, failure or Ctrl-C) flushes the
    rest. `status_override` lets the caller say KILLED where Lightning only knows "failed".
    """

    def __init__(self, *, tracking_uri: str, run_id: str, flush_seconds: float = 2.0) -> None:
        super().__init__(tracking_uri=tracking_uri, run_id=run_id, log_model=False)
        self.flush_seconds = flush_seconds
        self._buffer: list[Metric] = []
        self._last_flush = time.monotonic()
        self.status_override: str | None = None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        self._buffer.extend(
            Metric(key=k, value=float(v), timestamp=now, step=step or 0)
            for k, v in metrics.items()
            if k != "epoch"  # Lightning's own bookkeeping; a style transfer has one "epoch"
        )
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        buffer, self._buffer = self._buffer, []
        for i in range(0, len(buffer), _METRICS_PER_BATCH):
            self.experiment.log_batch(self.run_id, metrics=buffer[i : i + _METRICS_PER_BATCH])
        self._last_flush = time.monotonic()

    def finalize(self, status: str = "success") -> None:
        if not self._initialized:
            return
        self.flush()
        super().finalize(self.status_override or status)


class Snapshots(pl.Callback):
    """Logs the generated image at the snapshot steps (`log_image(key="generated", step=s)`).

    Step s is the image after s optimizer updates: step 0 is the initial image.
    """

    def __init__(self, client: MlflowClient, run_id: str, steps: Iterable[int]) -> None:
        self.client, self.run_id, self.steps = client, run_id, set(steps)

    def _log(self, module: pl.LightningModule, step: int) -> None:
        if step in self.steps:
            image = to_pil(module.image01())  # type: ignore[operator]
            self.client.log_image(self.run_id, image, key="generated", step=step)

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._log(module, 0)

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, *args: Any) -> None:
        self._log(module, trainer.global_step)


class RunStatus(pl.Callback):
    """Records why a run stopped: KILLED on Ctrl-C, the error as the `nst.error` tag."""

    def __init__(self, client: MlflowClient, run_id: str, logger: BufferedMLFlowLogger) -> None:
        self.client, self.run_id, self.logger = client, run_id, logger

    def on_exception(self, trainer: pl.Trainer, module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt):
            self.logger.status_override = "KILLED"
            self.client.set_tag(self.run_id, "nst.error", "interrupted (Ctrl-C)")
            return
        self.client.set_tag(self.run_id, "nst.error", f"{type(exception).__name__}: {exception}"[:5000])
        if isinstance(exception, DivergedError):
            # The loss went non-finite before the step, so the image is still the last finite one.
            self.client.log_image(self.run_id, to_pil(module.image01()), "last_finite.png")  # type: ignore[operator]
