"""MLflow, part 2: what a run logs while Lightning trains it.

The Lightning module only calls `self.log(...)`; `BufferedMLFlowLogger` keeps those metrics
in memory and writes them in batches (a SQLite write costs milliseconds, an iteration tens).
The callbacks log the generated image at the snapshot steps (for the UI's step slider),
record why a run stopped, and save resumable checkpoints (image + optimizer state, no VGG).
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from mlflow import MlflowClient
from mlflow.entities import Metric
from pytorch_lightning.loggers import MLFlowLogger
from torch import Tensor

from nst.images import to_pil
from nst.module import DivergedError

_METRICS_PER_BATCH = 1000  # MLflow's limit per log_batch call
CHECKPOINT = "checkpoint/last.ckpt"  # artifact path of a run's latest checkpoint
#: How MLflow names a `log_image(key="generated", step=s)` file (plus a .webp thumbnail).
SNAPSHOT_FILE = re.compile(r"^generated\+step\+(\d+)\+.*(?<!compressed)\.png$")


class BufferedMLFlowLogger(MLFlowLogger):
    """MLFlowLogger that buffers metrics and writes them at most once per `flush_seconds`.

    Every step still reaches the store: `finalize` (success, failure or Ctrl-C) flushes the
    rest. `status_override` lets the caller say KILLED where Lightning only knows "failed".
    Metric step k is the loss of the image after k updates, also across a resume. Steps up to
    `skip_through` are already in the store (a resumed run recomputes them bit for bit) and
    are not written twice.
    """

    def __init__(self, *, tracking_uri: str, run_id: str, flush_seconds: float = 2.0,
                 skip_through: int = -1) -> None:
        super().__init__(tracking_uri=tracking_uri, run_id=run_id, log_model=False)
        self.flush_seconds = flush_seconds
        self.skip_through = skip_through
        self.seconds = 0.0  # time spent logging metrics (buffering and writing), for the bench
        self._buffer: list[Metric] = []
        self._last_flush = time.monotonic()
        self.status_override: str | None = None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        step = step or 0
        if step <= self.skip_through:
            return
        start = time.perf_counter()
        now = int(time.time() * 1000)
        self._buffer.extend(
            Metric(key=k, value=float(v), timestamp=now, step=step)
            for k, v in metrics.items()
            if k != "epoch"  # Lightning's own bookkeeping; a style transfer has one "epoch"
        )
        self.seconds += time.perf_counter() - start
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        start = time.perf_counter()
        buffer, self._buffer = self._buffer, []
        for i in range(0, len(buffer), _METRICS_PER_BATCH):
            self.experiment.log_batch(self.run_id, metrics=buffer[i : i + _METRICS_PER_BATCH])
        self._last_flush = time.monotonic()
        self.seconds += time.perf_counter() - start

    def finalize(self, status: str = "success") -> None:
        if not self._initialized:
            return
        self.flush()
        super().finalize(self.status_override or status)


class Snapshots(pl.Callback):
    """At the snapshot steps: the image (`log_image(key="generated", step=s)`) and its quality
    metrics (`probe`); in a pyramid, the last image of each scale as `scales/<i>_<size>px.png`.

    Step s is the image after s optimizer updates: step 0 is the initial image.
    """

    def __init__(self, client: MlflowClient, run_id: str, steps: Iterable[int], done: Iterable[int],
                 logger: BufferedMLFlowLogger, probe: Callable[[Tensor], dict[str, float]] | None = None) -> None:
        self.client, self.run_id, self.steps = client, run_id, set(steps) - set(done)
        self.logger, self.probe = logger, probe

    def _log(self, module: pl.LightningModule, step: int) -> None:
        sizes, per_scale = module.sizes, module.config.iterations  # type: ignore[attr-defined]
        scale_end = len(sizes) > 1 and step and step % per_scale == 0
        if step not in self.steps and not scale_end:
            return  # most steps: no image is read out (that costs a clamp and a copy)
        image01 = module.result01()  # type: ignore[operator]
        if step in self.steps:
            self.client.log_image(self.run_id, to_pil(image01), key="generated", step=step)
            if self.probe is not None:
                self.logger.log_metrics(self.probe(image01), step)
        if scale_end:
            index = step // per_scale - 1
            self.client.log_image(self.run_id, to_pil(image01), f"scales/{index + 1}_{sizes[index]}px.png")

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.global_step == 0:  # not again when resuming from a checkpoint
            self._log(module, 0)

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, *args: Any) -> None:
        self._log(module, trainer.global_step)


class RunStatus(pl.Callback):
    """Records why a run stopped: KILLED on Ctrl-C, the error as the `nst.error` tag."""

    def __init__(self, client: MlflowClient, run_id: str, logger: BufferedMLFlowLogger,
                 describe: Callable[[BaseException], str] = lambda exc: f"{type(exc).__name__}: {exc}") -> None:
        self.client, self.run_id, self.logger, self.describe = client, run_id, logger, describe

    def on_exception(self, trainer: pl.Trainer, module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt):
            self.logger.status_override = "KILLED"
            self.client.set_tag(self.run_id, "nst.error", "interrupted (Ctrl-C)")
            return
        self.client.set_tag(self.run_id, "nst.error", self.describe(exception))
        if isinstance(exception, DivergedError):
            # The loss went non-finite before the step, so the image is still the last finite one.
            self.client.log_image(self.run_id, to_pil(module.result01()), "last_finite.png")  # type: ignore[operator]


class StepMetrics(pl.Callback):
    """Hands the module's `last_metrics` to the logger after every step, under the step whose
    image they measured (global_step - 1 once the optimizer has stepped)."""

    def __init__(self, logger: BufferedMLFlowLogger) -> None:
        self.logger = logger

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, *args: Any) -> None:
        self.logger.log_metrics(module.last_metrics, trainer.global_step - 1)  # type: ignore[arg-type]


class Checkpoints(pl.Callback):
    """Every `every` steps: flush the metrics, then save image + optimizer state as the run's
    `checkpoint/last.ckpt` artifact. Saved before a step, so every metric before it is in the
    store and a resume from it leaves no gap."""

    def __init__(self, client: MlflowClient, run_id: str, every: int, logger: BufferedMLFlowLogger) -> None:
        self.client, self.run_id, self.every, self.logger = client, run_id, every, logger

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        step = trainer.global_step
        if step == 0 or step % self.every:
            return
        self.logger.flush()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "last.ckpt"
            trainer.save_checkpoint(path)
            self.client.log_artifact(self.run_id, str(path), "checkpoint")


def last_logged_step(client: MlflowClient, run_id: str) -> int:
    """The highest step of `loss/total` in the store, -1 when none."""
    return max((m.step for m in client.get_metric_history(run_id, "loss/total")), default=-1)


def logged_snapshot_steps(client: MlflowClient, run_id: str) -> set[int]:
    """Steps whose `generated` image the run already holds."""
    names = (Path(a.path).name for a in client.list_artifacts(run_id, "images"))
    return {int(m.group(1)) for m in map(SNAPSHOT_FILE.match, names) if m}


def download_checkpoint(client: MlflowClient, run_id: str, folder: Path) -> Path | None:
    """The run's last checkpoint as a local file, or None when it has none."""
    if not any(a.path == CHECKPOINT for a in client.list_artifacts(run_id, "checkpoint")):
        return None
    return Path(client.download_artifacts(run_id, CHECKPOINT, str(folder)))
