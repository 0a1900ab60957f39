"""One tracked batch of runs: RunConfigs -> images, module, Trainer, MLflow runs -> RunResults.

A batch is several runs of a sweep that share the content, style, size, layers and optimizer
(pipelines.execution.batches groups them): they optimize together as one image tensor, each
image its own MLflow run with its own metrics, snapshots, checkpoint and status. A single run
(`nst run`) is a batch of one. Everything a user can get wrong about the inputs (files, weights;
pipelines.execution.inputs) is checked before any MLflow run is created, so bad input leaves
nothing in the store.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import warnings
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from mlflow import MlflowClient

from nst.determinism import deterministic
from nst.module import StyleTransfer
from nst.targets import build_backbone
from nst.vgg import VGGFeatures, WeightsError
from pipelines.config.runs import RunConfig
from pipelines.errors import UserError
from pipelines.execution import pids
from pipelines.execution.failures import describe_failure, release_memory
from pipelines.execution.inputs import Inputs, load_init, load_inputs, resolve_device
from pipelines.execution.opening import end_live, open_runs
from pipelines.execution.probe import quality_probe
from pipelines.execution.progress import LossBar
from pipelines.tracking import checkpoint_store, space, store, writers
from pipelines.tracking.run_log import FAILED, FINISHED, KILLED, BatchLog, Sample  # noqa: F401 - statuses


@dataclass
class RunResult:
    run_id: str
    status: str
    seconds: float
    losses: dict[str, float] = field(default_factory=dict)
    final_image: str | None = None
    error: str | None = None
    logging_seconds: float = 0.0  # of `seconds`, spent logging per-step metrics
    writer_seconds: float = 0.0  # CPU time the writer spent writing them, beside the loop
    #: Of `seconds`, the loop's tracking work by part (pipelines.tracking.fit_times), the batch's whole
    fit_times: dict[str, float] = field(default_factory=dict)


@dataclass
class RunSpec:
    """One run of a batch: its config, where it goes in the store, and the run it resumes (if any)."""

    config: RunConfig
    run_name: str | None = None
    parent_run_id: str | None = None
    tags: dict[str, Any] | None = None
    description: str | None = None
    resume_run_id: str | None = None
    resume_step: int | None = None  # the step of the checkpoint to resume from (None: the run's latest)


def quiet_lightning() -> None:
    """Lightning's start-up chatter (GPU/TPU lines, tips, dataloader hints) says nothing here."""
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # Resuming mid-"epoch" is exact here: the data loader only counts steps; the state is the image.
    warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch.*")


def execute(
    config: RunConfig,
    *,
    tracking_uri: str,
    experiment: str,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, Any] | None = None,
    description: str | None = None,
    progress: bool = True,
    resume_run_id: str | None = None,
) -> RunResult:
    """One style transfer, tracked: a batch of one (execute_batch)."""
    spec = RunSpec(config, run_name, parent_run_id, tags, description, resume_run_id)
    return execute_batch([spec], tracking_uri=tracking_uri, experiment=experiment, progress=progress)[0]


def execute_batch(specs: list[RunSpec], *, tracking_uri: str, experiment: str,
                  progress: bool = True, writer: str = "auto", pool: writers.WriterPool | None = None
                  ) -> list[RunResult]:
    """Run a batch of style transfers, each tracked as its own run. Raises UserError for bad input
    (before any run exists) and KeyboardInterrupt after marking the live runs KILLED; other failures
    end the live runs FAILED with the reason, so a sweep can go on. A spec with `resume_run_id`
    continues that run from its last checkpoint, without writing any step twice. `writer`: where the
    runs' metrics, snapshots and checkpoints are written (`thread`, `process`; `auto`: pipelines.tracking.writers),
    by processes from `pool` when given (a sweep's, kept from batch to batch)."""
    quiet_lightning()
    store.quiet_store_errors()
    config = specs[0].config  # its shared settings are every spec's (StyleTransfer checks)
    device = resolve_device(config.device)
    # Writers opened first: a writer process starts up (about a second) while the inputs load. The batch's
    # folder outlives them: its input images are uploaded by their first writes.
    with batch_folder() as tmp, \
            writers.open_writers(writer, device, len(specs), pool, store.remote(tracking_uri)) as writes:
        client = MlflowClient(tracking_uri)
        inputs = load_inputs(config)
        inits = [load_init(s.config, inputs.size, client) for s in specs]
        try:
            backbone = build_backbone(config)
        except WeightsError as exc:
            raise UserError(str(exc)) from None
        # The input is good: each writer opens its client of the store while the runs open and the loop starts.
        writers.connect(writes, tracking_uri)
        with space.stop_when_full(tracking_uri):  # opening the runs, or ending them: the sweep stops there
            return _execute(specs, tracking_uri, experiment, progress, writes, client, inputs, inits, backbone,
                            device, Path(tmp))


BATCH_FOLDER = "nst-batch-"  # + the process id: a batch's temporary folder


def batch_folder() -> tempfile.TemporaryDirectory[str]:
    """The batch's own temporary folder: its input images, a resume's stacked checkpoint, checkpoints on
    their way to a writer process (each up to a checkpoint's size: 510 MB at 512 px under the default
    recipe). A kill -9 leaves it behind; the next batch on this machine removes those whose process is gone."""
    for stale in Path(tempfile.gettempdir()).glob(f"{BATCH_FOLDER}*"):
        pid = stale.name.removeprefix(BATCH_FOLDER).split("-", 1)[0]
        if pid.isdigit() and not pids.alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    return tempfile.TemporaryDirectory(prefix=f"{BATCH_FOLDER}{os.getpid()}-")


def _execute(specs: list[RunSpec], tracking_uri: str, experiment: str, progress: bool, executors: list[Executor],
             client: MlflowClient, inputs: Inputs, inits: list[torch.Tensor | None], backbone: VGGFeatures,
             device: str, folder: Path) -> list[RunResult]:
    """execute_batch once its inputs are checked: the runs opened, fitted and ended (`folder`: the batch's own)."""
    config = specs[0].config
    inputs.write(folder / "inputs")
    # Looked up (or created) once for the batch: 64 lookups cost 0.2 s on this CPU.
    exp_id = store.experiment_id(client, experiment, tracking_uri) if any(
        not s.resume_run_id for s in specs) else ""
    samples, checkpoints = open_runs(client, specs, inputs, exp_id, device, folder, executors)
    # From here on the runs exist: whatever happens, each ends FINISHED, FAILED or KILLED, never RUNNING.
    start = time.perf_counter()
    try:
        with deterministic(config.deterministic):
            resume_from = checkpoint_store.stacked_checkpoint(checkpoints, folder)
            seconds, fit_times = _fit(client, specs, samples, resume_from, inputs, inits, backbone, device, progress,
                                      folder)
    except KeyboardInterrupt:
        end_live(client, samples, KILLED, "interrupted (Ctrl-C)")
        raise
    except Exception as exc:  # noqa: BLE001 - a failed batch must not stop the sweep
        if space.no_space(exc):  # but a full store does: every run after it would fail the same way
            space.suspend(client, samples)
            raise space.store_full(tracking_uri, exc) from None
        end_live(client, samples, FAILED, describe_failure(exc, config, device, len(specs)))
        seconds, fit_times = time.perf_counter() - start, {}
    finally:
        release_memory(device)
    if any(space.no_space(s.error) for s in samples):  # a write failed, and BatchLog ended its run FAILED
        space.suspend(client, samples)
        raise space.store_full(tracking_uri)
    return [RunResult(s.run_id, s.status or FAILED, seconds, {k: v for k, v in s.last.items() if k.startswith("loss/")},
                      s.final_image, s.error, logging_seconds=s.writer.seconds,
                      writer_seconds=s.writer.writer_seconds, fit_times=fit_times) for s in samples]


def _fit(client: MlflowClient, specs: list[RunSpec], samples: list[Sample], resume_from: Path | None,
         inputs: Inputs, inits: list[torch.Tensor | None], backbone: VGGFeatures, device: str, progress: bool,
         folder: Path) -> tuple[float, dict[str, float]]:
    """Optimize the batch under Lightning (from the batch checkpoint `resume_from`, when it resumes);
    returns the seconds it took and, of them, its tracking work's by part. Every run ends in here."""
    config = specs[0].config
    torch.manual_seed(config.seed)
    # Built where it runs: the targets are computed on the GPU, not on the CPU and then moved.
    on = torch.device(device)
    module = StyleTransfer(inputs.content.to(on), [s.to(on) for s in inputs.styles], [s.config for s in specs],
                           backbone=backbone.to(on), init01=[None if i is None else i.to(on) for i in inits],
                           cuda_graph=config.cuda_graph is not False)  # auto or true
    probe = quality_probe(module, inputs.content, inputs.styles, config)
    log = BatchLog(client, samples, probe, describe=lambda exc: describe_failure(exc, config, device, len(specs)),
                   keep_checkpoints=config.keep_checkpoints)
    callbacks: list[pl.Callback] = [log]
    if config.checkpoint_every:
        callbacks.append(checkpoint_store.Checkpoints(config.checkpoint_every, log, folder / "checkpoints"))
    if progress:  # Lightning's own bar shows only self.log()-ed values; this one reads the runs' last losses
        callbacks.append(LossBar(log))
    trainer = pl.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        max_steps=module.total_steps,
        max_epochs=1,
        logger=False,  # each image's run is logged by BatchLog
        callbacks=callbacks,
        enable_checkpointing=False,  # Checkpoints does it, as each run's MLflow artifact
        enable_model_summary=False,
        enable_progress_bar=progress,
        num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    try:
        trainer.fit(module, ckpt_path=resume_from)
    except SystemExit:
        # Lightning turns Ctrl-C into on_exception + sys.exit(1); BatchLog marked the runs KILLED.
        if log.interrupted:
            raise KeyboardInterrupt from None
        raise
    seconds, fit_times = time.perf_counter() - start, dict(log.times.seconds)
    log.flush(module, due_only=False, wait=False)
    images = module.result01()
    for b, sample in log.live:
        log.finish(sample, images[b : b + 1], f"ran all {module.total_steps} steps")
    log.settle()  # every run's rows and end in the store (its writer's), or the run FAILED saying why
    return seconds, fit_times
