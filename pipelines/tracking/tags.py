"""The names of nst's MLflow tags, in one place: the sweep writes them, the reports read them (and the
artifact folder of a run's checkpoints, which its checkpoint tags name, and the run statuses nst sets)."""

from __future__ import annotations

from collections.abc import Iterable

SWEEP_TAG = "nst.sweep"  # a sweep's runs (parent and children): the experiment file's name
SWEEP_KEY_TAG = "nst.sweep_key"  # the parent: a hash of the sweep's set of runs
FRESH_TAG = "nst.fresh"  # a parent made by --fresh: runs of this sweep older than it are never reused
RUN_KEY_TAG = "nst.run_key"  # a child: a hash of its resolved config (the same key, the same result)
VARIED_TAG = "nst.varied"  # the keys the sweep varies (parent) or this run's values of them (child)
POINT_TAG = "nst.point"  # a child's place in the file's expansion
VARIANT_TAG = "nst.variant"  # a child's variant label, when the file has variants
ERROR_TAG = "nst.error"  # why a run FAILED or was KILLED, in one line
BATCH_TAG = "nst.batch_size"  # how many runs optimized together as one image tensor with this one
CUDA_GRAPH_TAG = "nst.cuda_graph"  # under `cuda_graph: true`: "replayed", or why its steps ran op by op
CHECKPOINT_STEP_TAG = "nst.checkpoint_step"  # .a / .b: the step of the run's whole checkpoint in that slot
CHECKPOINT_FOLDER = "checkpoint"  # a run's artifacts folder of its checkpoints
FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"  # MLflow's run statuses that nst sets


def checkpoint_tags(tags: Iterable[str]) -> list[str]:
    """The tags among `tags` that name a run's checkpoints (its slots', and the one of runs of earlier nst)."""
    return [key for key in tags if key.startswith(CHECKPOINT_STEP_TAG)]
