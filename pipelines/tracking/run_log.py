"""MLflow, part 2: what the runs of a batch log while Lightning optimizes them.

A batch is one Lightning fit of one image tensor; each image in it is its own MLflow run.
`BatchLog` collects every step's losses on the device (a step never waits for the device to
report them) and every `CHUNK` steps, and at snapshots, checkpoints and the end, brings them to
the host in one copy. Each run gets its own rows (`RunWriter`: buffered, written by a thread or a
process beside the optimization), its snapshot images with their quality metrics (the images written
there too, behind their rows), and its end:
FAILED when its image diverged, FINISHED when it converged or ran all its steps, each as soon as
it is known (a FINISHED run's final.png and status by its writer too, behind its rows; the batch's
end waits for them: `settle`). (Each run's checkpoints: pipelines.tracking.checkpoint_store.)

Metric step k is the loss of the image after k updates, also across a resume; snapshot step s
is the image after s updates (step 0: the initial image).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from mlflow import MlflowClient
from torch import Tensor

from nst.images import to_pil
from nst.module import StyleTransfer
from nst.stopping import NEVER
from pipelines.tracking import store
from pipelines.tracking.fit_times import READ_BACK, ROWS, SNAPSHOTS, FitTimes
from pipelines.tracking.run_writer import RunWriter, drop_checkpoints, end_run, log_image
from pipelines.tracking.tags import ERROR_TAG, FAILED, FINISHED, KILLED

CHUNK = 50  # steps whose losses stay on the device before they are read back in one copy
STOP_TAG = "nst.stop_reason"
#: How MLflow names a `log_image(key="generated", step=s)` file (plus a .webp thumbnail).
SNAPSHOT_FILE = re.compile(r"^generated\+step\+(\d+)\+.*(?<!compressed)\.png$")

Probe = Callable[[Tensor], list[dict[str, float]]]  # images (n, 3, H, W) -> each one's quality metrics


@dataclass
class Sample:
    """One image of the batch: its run, its metrics, its snapshots still to log, how it ended."""

    run_id: str
    writer: RunWriter
    snapshots: set[int]
    artifact_uri: str = ""  # where its artifacts go (final.png's place, without asking the store again)
    status: str | None = None  # FINISHED / FAILED / KILLED once the run is over
    error: str | None = None
    final_image: str | None = None
    last: dict[str, float] = field(default_factory=dict)  # its last logged losses
    end: float = float("inf")  # its first step not to log (it diverged or converged before it)
    image_end: float = float("inf")  # its last snapshot step
    measured: set[int] = field(default_factory=set)  # snapshot steps whose quality metrics the store holds


class BatchLog(pl.Callback):
    """Every step's losses, each run's rows and snapshots, and each run's end (module docstring)."""

    def __init__(self, client: MlflowClient, samples: list[Sample], probe: Probe | None,
                 describe: Callable[[BaseException], str], keep_checkpoints: bool = False) -> None:
        self.client, self.samples, self.probe, self.describe = client, samples, probe, describe
        self.keep_checkpoints = keep_checkpoints  # else a FINISHED run's go (run_writer.drop_checkpoints)
        self._rows: list[Tensor] = []  # (metrics, images) per step, on the device
        self._meta: list[tuple[int, list[float]]] = []  # (step, learning rates) per row, on the host
        self._keys: list[str] = []
        self.interrupted = False
        self.times = FitTimes()  # the loop's tracking work, by part (the Checkpoints callback adds its own)

    @property
    def live(self) -> list[tuple[int, Sample]]:
        return [(b, s) for b, s in enumerate(self.samples) if s.status is None]

    # -- every step ---------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.global_step == 0:  # not again when resuming from a checkpoint
            with self.times.timing(SNAPSHOTS):
                self._snapshot(module, 0)  # type: ignore[arg-type]

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, *args: Any) -> None:
        m: StyleTransfer = module  # type: ignore[assignment]
        self._keys = self._keys or list(m.last_losses)
        self._rows.append(torch.stack([m.last_losses[k] for k in self._keys]))
        self._meta.append((trainer.global_step - 1, m.last_lrs))
        step = trainer.global_step  # the images now hold `step` updates
        scale_end = len(m.sizes) > 1 and step % m.config.iterations == 0
        snapshot = any(step in s.snapshots for _, s in self.live)
        if len(self._rows) >= CHUNK or snapshot or scale_end or step >= m.total_steps:
            self.flush(m)
            with self.times.timing(SNAPSHOTS):
                self._snapshot(m, step)
            self._end_early(m)
            if not self.live:
                trainer.should_stop = True

    # -- reading the device back ----------------------------------------------------------------
    def flush(self, module: StyleTransfer, *, due_only: bool = True, wait: bool = False) -> None:
        """Bring the buffered losses to the host (one copy) and give each live run its rows; the
        runs hand them to the writer as RunWriter.flush does (`due_only`, `wait`)."""
        if self._rows:
            with self.times.timing(READ_BACK):
                values = torch.stack(self._rows).cpu().tolist()  # [row][metric][image]
                self._rows = []
                self._note_ends(module)
            with self.times.timing(ROWS):
                self._hand_over(module, values)
        with self.times.timing(ROWS):
            for _, sample in self.live:
                sample.writer.flush(due_only=due_only, wait=wait)

    def _hand_over(self, module: StyleTransfer, values: list[list[list[float]]]) -> None:
        """Each live run's rows of the buffered steps (`values`: [row][metric][image]) to its writer."""
        for row, (step, lrs) in zip(values, self._meta, strict=True):
            scale = module.sizes[module.scale_of_step(step)] if len(module.sizes) > 1 else None
            for b, sample in self.live:
                if step >= sample.end:
                    continue
                metrics = {k: row[i][b] for i, k in enumerate(self._keys)} | {"lr": lrs[b]}
                if scale is not None:
                    metrics["scale"] = float(scale)
                sample.writer.log(metrics, step)
                sample.last = metrics
        self._meta = []

    def _note_ends(self, module: StyleTransfer) -> None:
        """Where each image stopped (diverged at step k: steps < k are its; converged at k: <= k)."""
        diverged, stopped = module.stops.diverged_at.tolist(), module.stops.stopped_at.tolist()
        for b, sample in self.live:
            if diverged[b] != NEVER:
                sample.end = sample.image_end = diverged[b]
            elif stopped[b] != NEVER:
                sample.end = sample.image_end = stopped[b] + 1

    def _snapshot(self, module: StyleTransfer, step: int) -> None:
        """Snapshot images (and their quality metrics) of the runs due one at `step`; in a pyramid,
        each scale's last image as `scales/<i>_<size>px.png`."""
        per_scale = module.config.iterations
        scale_end = len(module.sizes) > 1 and step and step % per_scale == 0
        due = [(b, s) for b, s in self.live if step <= s.image_end and (step in s.snapshots or scale_end)]
        if not due:
            return  # most steps: no image is read out (that costs a clamp and a copy)
        images = module.result01()
        snapshot = [b for b, s in due if step in s.snapshots]
        measured = self.probe(images[snapshot]) if self.probe is not None and snapshot else []
        for b, sample in due:
            image = to_pil(images[b : b + 1])  # on the host now: the loop goes on changing the images
            # Logged behind the step's rows (its quality metrics among them): after a kill -9, a
            # snapshot whose image is in the store has its metrics there too (a resume redoes the rest).
            if step in sample.snapshots:
                if measured and step not in sample.measured:  # a resume redoing an image: its metrics are in
                    sample.writer.log(measured[snapshot.index(b)], step)
                sample.writer.after_rows(log_image, sample.run_id, image, key="generated", step=step)
            if scale_end:
                index = step // per_scale - 1
                name = f"scales/{index + 1}_{module.sizes[index]}px.png"
                sample.writer.after_rows(log_image, sample.run_id, image, name)

    # -- how runs end ---------------------------------------------------------------------------
    def _end_early(self, module: StyleTransfer) -> None:
        """End the runs whose image diverged (FAILED) or converged (FINISHED) before the batch ends."""
        ended = [(b, s) for b, s in self.live if s.end != float("inf")]
        if not ended:
            return
        reasons, diverged, images = module.stops.reasons(), module.stops.diverged_at.tolist(), module.result01()
        for b, sample in ended:
            image01 = images[b : b + 1]
            if diverged[b] != NEVER:
                # The loss went non-finite before the update, so the image is still the last finite one.
                self.client.log_image(sample.run_id, to_pil(image01), "last_finite.png")
                self.end(sample, FAILED, reasons[b] or "diverged")
            else:
                self.finish(sample, image01, reasons[b] or "")

    def finish(self, sample: Sample, image01: Tensor, reason: str) -> None:
        """A run that got its result: final.png, why it stopped, FINISHED, handed to its writer behind
        its rows (run_writer.end_run): the loop does not wait for them, and a batch's runs end in parallel
        on their writers (64 one at a time took 0.5 s of a batch's end on this CPU, 7 s against a
        tracking server). `settle` says whether they were written."""
        sample.writer.after_rows(end_run, sample.run_id, to_pil(image01), {STOP_TAG: reason}, FINISHED)
        if not self.keep_checkpoints:
            sample.writer.after_rows(drop_checkpoints, sample.run_id)  # once it is FINISHED: it never resumes
        sample.final_image = final_path(sample.artifact_uri)
        sample.status = FINISHED

    def settle(self) -> None:
        """Wait until every run's writes are in the store. A run whose writes failed (its end among
        them) ends FAILED with the error, without its final image (a run ended otherwise has its reason)."""
        for sample in self.samples:
            if sample.status != FINISHED:
                continue
            try:
                sample.writer.flush()
            except Exception as exc:  # noqa: BLE001 - this run's writes failed; the others' are checked too
                sample.final_image = None
                self._mark(sample, FAILED, f"its rows or its end could not be written: {exc}")

    def end(self, sample: Sample, status: str, error: str) -> None:
        """A run that stopped without a result (FAILED, KILLED): its metrics so far, and why."""
        try:
            sample.writer.flush()
        finally:
            self._mark(sample, status, error)

    def _mark(self, sample: Sample, status: str, error: str) -> None:
        self.client.set_tag(sample.run_id, ERROR_TAG, error)
        self.client.set_terminated(sample.run_id, status)
        sample.status, sample.error = status, error

    def on_exception(self, trainer: pl.Trainer, module: pl.LightningModule, exception: BaseException) -> None:
        """Ctrl-C: every live run KILLED, every step computed so far written; an error: FAILED."""
        self.interrupted = isinstance(exception, KeyboardInterrupt)
        try:
            self.flush(module)  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - a broken device: the runs still get their status
            self._rows, self._meta = [], []
        status, error = (KILLED, "interrupted (Ctrl-C)") if self.interrupted else (FAILED, self.describe(exception))
        for _, sample in self.live:
            self.end(sample, status, error)


def final_path(artifact_uri: str) -> str:
    """Where a run's final.png lies: a local path when its artifacts are on this disk, else its URI."""
    folder = store.local_folder(artifact_uri)
    return str(folder / "final.png") if folder else f"{artifact_uri}/final.png"


def logged_steps(client: MlflowClient, run_id: str, key: str = "loss/total") -> set[int]:
    """The steps of `key` in the store."""
    return {m.step for m in client.get_metric_history(run_id, key)}


def logged_snapshot_steps(client: MlflowClient, run_id: str) -> set[int]:
    """Steps whose `generated` image the run already holds."""
    names = (Path(a.path).name for a in client.list_artifacts(run_id, "images"))
    return {int(m.group(1)) for m in map(SNAPSHOT_FILE.match, names) if m}
