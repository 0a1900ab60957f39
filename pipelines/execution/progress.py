"""The progress bar of a batch's fit: iteration, it/s, ETA and the runs' last losses, drawn at a pace a
GPU's 2-6 ms step does not feel, and rarely into a log (output that is not a terminal); and the
sweep's clock, on each of its lines."""

from __future__ import annotations

import sys
import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar

from pipelines.tracking.run_log import BatchLog


class LossBar(TQDMProgressBar):
    """Lightning's progress bar (iteration, it/s, ETA) with the last J, J_content, J_style read
    back (every few dozen steps: the step itself never waits for them); a batch shows its range.
    It redraws at most every REFRESH_SECONDS, and at the last step: Lightning's redraws it twice a
    step, 0.33-0.41 ms a step here (its hook timed over 400 steps of 1 and 8 images at 32 px)."""

    REFRESH_SECONDS = 0.1  # tqdm's own pace (mininterval), which Lightning's explicit redraws bypass
    # Into a file or a pipe every redraw stays: at 10 a second the lr sweep wrote 350 kB of them.
    LOG_REFRESH_SECONDS = 10.0

    def __init__(self, log: BatchLog) -> None:
        super().__init__()
        self.batch_log = log
        self._drawn = float("-inf")  # time.monotonic() of the last redraw
        # Lightning's bar writes to stdout.
        self.refresh_seconds = self.REFRESH_SECONDS if sys.stdout.isatty() else self.LOG_REFRESH_SECONDS

    # A run is one epoch of its steps: Lightning's "Training" and "Epoch 0" say nothing about it.
    @property
    def train_description(self) -> str:
        return "steps"

    def on_train_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        bar = self.train_progress_bar  # as Lightning's hook, with the bar's own name instead of the epoch's
        bar.reset(total=self.total_train_batches)
        bar.initial = 0
        bar.set_description(self.train_description)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = time.monotonic()
        if now - self._drawn < self.refresh_seconds and batch_idx + 1 != self.total_train_batches:
            return
        self._drawn = now
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer: pl.Trainer, module: pl.LightningModule
                    ) -> dict[str, int | str | float | dict[str, float]]:
        items = super().get_metrics(trainer, module)
        items.pop("v_num", None)
        lasts = [s.last for s in self.batch_log.samples if s.last]
        for key, label in (("loss/total", "J"), ("loss/content", "Jc"), ("loss/style", "Js")):
            values = sorted(last[key] for last in lasts if key in last)
            if values:
                items[label] = f"{values[0]:.3g}" if len(values) == 1 else f"{values[0]:.3g}–{values[-1]:.3g}"
        if len(self.batch_log.samples) > 1:
            items["runs"] = f"{len(self.batch_log.live)}/{len(self.batch_log.samples)} live"
        return items


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Clock:
    """Elapsed time and the ETA of the runs still to go, from the mean time of those done. A batch's
    runs end together, so they count as done once the last of them is in: counted one by one, the
    lr sweep's batch of 3 said `ETA 6:27` after its first run, `1:36` after its second, then `0:00`."""

    def __init__(self, batches: list[list[int]]) -> None:
        self.total, self.ran, self.start = sum(map(len, batches)), 0, time.perf_counter()
        self._batch = {index: batch for batch in batches for index in batch}
        self._left = {id(batch): len(batch) for batch in batches}

    def done(self, index: int) -> None:
        """The run of point `index` ended."""
        batch = self._batch[index]
        self._left[id(batch)] -= 1
        if not self._left[id(batch)]:
            self.ran += len(batch)

    def line(self) -> str:
        elapsed = time.perf_counter() - self.start
        eta = _clock(elapsed / self.ran * (self.total - self.ran)) if self.ran else "?"
        return f"elapsed {_clock(elapsed)} · ETA {eta}"
