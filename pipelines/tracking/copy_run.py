"""A run copied under another sweep's parent: what an edited experiment file keeps.

A value added to a grid makes a new sweep (its key is the hash of its set of runs), with a new parent
run; its points that an earlier version of the file already ran are the same runs (the same run key:
the same config and images' bytes). One that FINISHED there is copied rather than optimized again:
the params, every step of every metric, the artifacts (final.png, the snapshots, config.yaml, the
inputs) and the start and end times, so the new sweep's report, sheet and UI page hold every point;
its checkpoints stay behind (a FINISHED run never resumes). One interrupted there (a kill -9 left it
RUNNING, Ctrl-C KILLED) is copied with its checkpoints and their tags, as a KILLED run that the new
sweep resumes from its checkpoint; it started anew before, losing what the earlier command had done
(a whole batch of a sweep cut short and then edited). The copy names its source in `nst.copied_from`.
The earlier sweep keeps its runs as they were (MLflow runs have one parent each: moving them would
rewrite that sweep's record).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME, MLFLOW_RUN_NOTE

from pipelines.tracking import store
from pipelines.tracking.run_writer import whole_steps
from pipelines.tracking.tags import (
    CHECKPOINT_FOLDER,
    FINISHED,
    KILLED,
    POINT_TAG,
    SWEEP_TAG,
    VARIANT_TAG,
    VARIED_TAG,
    checkpoint_tags,
)

COPIED_FROM_TAG = "nst.copied_from"
#: Tags that say where a run stands in its sweep: the copy gets its new sweep's.
_PLACE = (MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME, MLFLOW_RUN_NOTE, SWEEP_TAG, POINT_TAG, VARIED_TAG, VARIANT_TAG)


def copy_run(client: MlflowClient, source: Run, run_name: str, tags: Mapping[str, str]) -> Run:
    """`source` copied as a new run with `run_name` and `tags` (its parent, its place in the sweep):
    FINISHED without its checkpoints if `source` FINISHED, else KILLED with them, to resume."""
    finished = source.info.status == FINISHED
    left = {*_PLACE, *(checkpoint_tags(source.data.tags) if finished else ())}
    kept = {k: v for k, v in source.data.tags.items() if k not in left}
    info = store.create_run(client, source.info.experiment_id, start_time=source.info.start_time,
                            tags={**kept, **tags, COPIED_FROM_TAG: source.info.run_id}, run_name=run_name)
    run_id = info.run_id
    store.log_params(client, run_id, source.data.params)
    for key in source.data.metrics:
        for chunk in whole_steps(client.get_metric_history(source.info.run_id, key)):
            client.log_batch(run_id, metrics=chunk)
    with tempfile.TemporaryDirectory() as tmp:
        for item in client.list_artifacts(source.info.run_id):
            if item.path != CHECKPOINT_FOLDER or not finished:
                client.download_artifacts(source.info.run_id, item.path, tmp)
        if any(Path(tmp).iterdir()):
            client.log_artifacts(run_id, tmp)
    client.set_terminated(run_id, FINISHED if finished else KILLED, end_time=source.info.end_time if finished else None)
    return client.get_run(run_id)
