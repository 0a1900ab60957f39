"""MLflow, part 3: each run's checkpoints in the store, saved while a batch runs and found again to resume it.

`Checkpoints` saves each run's share of the batch's state as that run's own checkpoint, exactly
what the run would have saved alone, on the writer behind the run's rows. A run keeps its
last two, each named by a tag only once whole, so that whatever moment a kill -9 picks, the tags
name whole checkpoints and the runs of a batch share a step to resume from together
(pipelines.execution.batches.resume_steps).
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections import deque
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_utilities.core.apply_func import apply_to_collection
from mlflow import MlflowClient
from mlflow.entities import Run
from torch import Tensor

from nst import checkpoints
from pipelines.tracking import store
from pipelines.tracking.fit_times import CHECKPOINTS, WRITERS
from pipelines.tracking.run_log import BatchLog
from pipelines.tracking.run_writer import SavedFile, upload_file
from pipelines.tracking.tags import CHECKPOINT_FOLDER, CHECKPOINT_STEP_TAG

#: A run keeps its last two checkpoints, written in turn, each slot's step in its own tag: emptied
#: before the slot is rewritten, set once its upload is whole. A kill -9 at any moment leaves the tags
#: naming whole checkpoints only, and the runs of a batch killed between their saves still share a
#: step to resume from together. A FINISHED run never resumes: its checkpoints go once it is
#: (run_writer.drop_checkpoints).
CHECKPOINT_SLOTS = {slot: f"{CHECKPOINT_FOLDER}/{slot}.ckpt" for slot in ("a", "b")}
#: Rounds of checkpoints a batch written by one writer may hand over before the oldest is in the store.
ROUNDS_AHEAD = 4
LEGACY_CHECKPOINT = f"{CHECKPOINT_FOLDER}/last.ckpt"  # one file, before the slots (runs logged by earlier nst)


class Checkpoints(pl.Callback):
    """Every `every` steps, each live run's share of the batch's state (image, optimizer state, stop
    state; no VGG) saved as its checkpoint. Taken before a step, and saved by the writer
    behind that run's metric rows (RunWriter.after_rows): a checkpoint reaches the store only after
    every step before it (a resume leaves no gap), and the loop waits for neither. Consecutive
    checkpoints alternate between two slots (CHECKPOINT_SLOTS), so the other slot, and what its tag
    says, stay whole while one is rewritten. The runs may have writers of their own (a GPU's batch of
    many runs: pipelines.tracking.writers): a round of saves first waits until the round
    before is in the store, so the runs are never more than one checkpoint apart and a batch killed
    at any moment resumes together. One writer for every run needs no such wait: first in first out,
    the store always holds a prefix of what it was handed, so the runs share a step whatever the moment.
    There a round waits only for the one ROUNDS_AHEAD rounds before it, which bounds what waits in
    memory. On a GPU, where 100 steps take well under a second, a fresh writer process is up only after
    the loop's first checkpoints: waiting for the round before, an H100's tracked fit of 510 steps took
    11 s where its steps account for about 3.5 s (BENCHMARKS-cuda.md, "A tracked fit's one-off time")."""

    def __init__(self, every: int, log: BatchLog, folder: Path) -> None:
        self.every, self.batch_log, self.folder = every, log, folder  # folder: files for writer processes
        self.start = 0  # the step this fit started from
        self._rounds: deque[list[Future[Any]]] = deque()  # the saves of the rounds not yet known done

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.start = trainer.global_step

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        # Not at the step a resume starts from: that checkpoint is in the store, in the slot it would
        # go to, and rewriting it in place would open the window the slots close.
        if step == self.start or step % self.every:
            return
        self.batch_log.flush(module)  # type: ignore[arg-type]  # every row so far to its run, ahead of its checkpoint
        times = self.batch_log.times
        with times.timing(CHECKPOINTS):
            parts = checkpoints.split(_on_host(trainer._checkpoint_connector.dump_checkpoint()))
        live = self.batch_log.live
        ahead = ROUNDS_AHEAD if len({id(sample.writer.writer) for _, sample in live}) == 1 else 1
        with times.timing(WRITERS):
            while len(self._rounds) >= ahead:
                for saved in self._rounds.popleft():
                    saved.result()  # a save that failed raises here, as a failed write does at a flush
        with times.timing(CHECKPOINTS):
            self._hand_over(step, parts)

    def _hand_over(self, step: int, parts: list[checkpoints.Checkpoint]) -> None:
        """Each live run's part to its writer, behind its rows, in this round's slot: its tag emptied, the
        file, the tags set."""
        slot = "ab"[(step // self.every) % 2]
        tag = _slot_tag(slot)
        self._rounds.append([
            sample.writer.after_rows(upload_file, sample.run_id, _Serialized(parts[b], self.folder),
                                     CHECKPOINT_SLOTS[slot],
                                     before={tag: ""},  # being written: names nothing until whole
                                     after={tag: str(step), CHECKPOINT_STEP_TAG: str(step)})
            for b, sample in self.batch_log.live])


#: torch's L-BFGS keeps its curvature pairs as lists to which each step appends new tensors (and drops
#: the oldest); it never writes one in place. They are most of its state: 100 pairs of the image's size.
_APPENDED = ("old_dirs", "old_stps")


def _on_host(checkpoint: checkpoints.Checkpoint) -> checkpoints.Checkpoint:
    """Lightning's own checkpoint dict (what trainer.save_checkpoint writes) copied to the host now:
    it refers to the live image and optimizer state, which the next steps change. The L-BFGS pairs
    already on the host are the exception: referenced, not copied, since no step changes them (at
    512 px that copy was 540 MB at the peak; at 2048 px it would be 8.6 GB)."""
    kept: dict[tuple[int, Any, str], list[Tensor]] = {}
    states = []
    for i, optimizer in enumerate(checkpoint.get("optimizer_states", [])):
        state = {}
        for key, values in optimizer["state"].items():
            held = {name: values[name] for name in _APPENDED
                    if name in values and all(t.device.type == "cpu" for t in values[name])}
            kept |= {(i, key, name): list(tensors) for name, tensors in held.items()}
            state[key] = {name: v for name, v in values.items() if name not in held}
        states.append({**optimizer, "state": state})
    copied = apply_to_collection({**checkpoint, "optimizer_states": states}, Tensor,
                                 lambda t: t.detach().to("cpu", copy=True))
    for (i, key, name), tensors in kept.items():
        copied["optimizer_states"][i]["state"][key][name] = tensors
    return copied


class _Serialized:
    """A run's part of the state, serialized (torch.save) off the loop and straight into a file, never
    as bytes in memory (a 512 px L-BFGS checkpoint is 510-600 MB: in bytes, then pickled for a writer
    process, it had cost the loop's process 919 MB more at its peak): on a writer thread, into the file
    it uploads; for a writer process, as it is pickled (on that process's sender thread), into a file
    in `folder` (the batch's own) whose path is what travels and which the process moves into place
    (run_writer.SavedFile), so it needs no torch (64 parts at 256 px take 0.1 s to serialize here)."""

    def __init__(self, part: dict[str, Any], folder: Path) -> None:
        self.part, self.folder = part, folder

    def save(self, path: Path) -> None:
        torch.save(self.part, path)

    def __reduce__(self) -> tuple[type[SavedFile], tuple[str]]:
        self.folder.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(suffix=".ckpt", dir=self.folder)
        os.close(handle)
        self.save(Path(name))
        return SavedFile, (name,)


def _slot_tag(slot: str) -> str:
    return f"{CHECKPOINT_STEP_TAG}.{slot}"


def checkpoint_steps(tags: dict[str, str]) -> dict[int, str]:
    """A run's whole checkpoints by their steps (step -> artifact path), from its tags."""
    slots = {slot: tags[_slot_tag(slot)] for slot in CHECKPOINT_SLOTS if _slot_tag(slot) in tags}
    if not slots:  # none, or logged by an earlier nst: one file, named by the latest step
        return {int(tags[CHECKPOINT_STEP_TAG]): LEGACY_CHECKPOINT} if CHECKPOINT_STEP_TAG in tags else {}
    return {int(step): CHECKPOINT_SLOTS[slot] for slot, step in slots.items() if step}


def present_checkpoints(client: MlflowClient, run: Run) -> tuple[set[int], set[int]]:
    """The steps of the run's whole checkpoints (as its tags name them), as two sets: those whose file
    is in the store, and those whose file is gone (deleted by hand, say), empty, or, in a store on this
    disk, cut short (not a whole zip archive, which torch.save writes: its directory is at the end)."""
    steps = checkpoint_steps(run.data.tags)
    if not steps:
        return set(), set()
    local = store.local_folder(run.info.artifact_uri)
    if local is not None:
        there = {step for step, path in steps.items() if (local / path).is_file() and zipfile.is_zipfile(local / path)}
    else:
        sizes = {item.path: item.file_size for item in client.list_artifacts(run.info.run_id, CHECKPOINT_FOLDER)}
        there = {step for step, path in steps.items() if sizes.get(path)}
    return there, set(steps) - there


def download_checkpoint(client: MlflowClient, run_id: str, folder: Path, step: int | None = None) -> Path | None:
    """The run's checkpoint of `step` (None: its latest) as a local file; None when it has none."""
    steps = checkpoint_steps(client.get_run(run_id).data.tags)
    if not steps or step == 0:
        return None
    if step is None:
        step = max(steps)
    if step not in steps:
        raise ValueError(f"run {run_id} holds no checkpoint of step {step} (its steps: {sorted(steps)})")
    return Path(client.download_artifacts(run_id, steps[step], str(folder)))


def stacked_checkpoint(files: list[Path | None], folder: Path) -> Path | None:
    """The batch's checkpoint for Lightning, from its runs' own (saved at the same step): a run alone's
    file as it is, several runs' stacked into one file in `folder`; None when the batch starts afresh.
    (Loaded and saved again, a resumed 512 px run of the default recipe (L-BFGS) alone read and wrote
    its 510 MB more, and held them through the fit: 8.6 GB at 2048 px.)"""
    resume = [file for file in files if file is not None]
    if not resume:
        return None
    if len(resume) != len(files):
        raise ValueError("a batch resumes from checkpoints of all its runs or of none")  # batches group them so
    if len(resume) == 1:
        return resume[0]
    path = folder / "batch.ckpt"
    torch.save(checkpoints.stack([torch.load(file, map_location="cpu", weights_only=False) for file in resume]), path)
    return path
