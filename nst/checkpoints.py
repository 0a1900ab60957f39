"""A batch's checkpoint taken apart into one checkpoint per image, and put back together.

Each image of a batch is its own run, and each run keeps its own checkpoint: exactly what the
run would have saved alone (a batch of one). Resuming stacks the checkpoints of runs stopped at
the same step into one batch again, in any grouping. What is per image: the image, the optimizer's
per-sample state and learning rates (nst.optim keeps them as lists), and the module's per-image
stop state (`checkpoint["nst"][SAMPLES]`); everything else (the step, the scale) is shared.
"""

from __future__ import annotations

from typing import Any

import torch

SAMPLES = "samples"  # checkpoint["nst"][SAMPLES]: one dict per image
#: Keys of a per-sample optimizer's param group that hold one value per image.
PER_SAMPLE_GROUP_KEYS = ("lrs", "momenta")
#: The module's state_dict entries that hold one row per image (the averaged image: iterate averaging).
PER_SAMPLE_STATE = ("image", "average_image", "average_weight")

Checkpoint = dict[str, Any]


def _take_optimizer(state: dict[str, Any], b: int) -> dict[str, Any]:
    return {
        "state": {k: {name: [values[b]] for name, values in s.items()} for k, s in state["state"].items()},
        "param_groups": [{k: [v[b]] if k in PER_SAMPLE_GROUP_KEYS else v for k, v in g.items()}
                         for g in state["param_groups"]],
    }


def _take(checkpoint: Checkpoint, b: int) -> Checkpoint:
    # clone(): torch.save of a view would write the whole batch's storage into every run's file.
    state = {k: v[b : b + 1].clone() if k in PER_SAMPLE_STATE else v for k, v in checkpoint["state_dict"].items()}
    return {**checkpoint,
            "state_dict": state,
            "optimizer_states": [_take_optimizer(s, b) for s in checkpoint["optimizer_states"]],
            "nst": {**checkpoint["nst"], SAMPLES: [checkpoint["nst"][SAMPLES][b]]}}


def split(checkpoint: Checkpoint) -> list[Checkpoint]:
    """One checkpoint per image of the batch, each as that image's run alone would have saved it."""
    n = len(checkpoint["nst"][SAMPLES])
    return [checkpoint] if n == 1 else [_take(checkpoint, b) for b in range(n)]


def _stack_optimizer(states: list[dict[str, Any]]) -> dict[str, Any]:
    first = states[0]
    return {
        "state": {k: {name: [v for s in states for v in s["state"][k][name]] for name in st}
                  for k, st in first["state"].items()},
        "param_groups": [{k: [v for s in states for v in s["param_groups"][i][k]] if k in PER_SAMPLE_GROUP_KEYS
                          else v for k, v in g.items()} for i, g in enumerate(first["param_groups"])],
    }


def stack(parts: list[Checkpoint]) -> Checkpoint:
    """The batch checkpoint of several runs' checkpoints saved at the same step (the inverse of split)."""
    if len(parts) == 1:
        return parts[0]
    steps = {p["global_step"] for p in parts}
    if len(steps) != 1:
        raise ValueError(f"checkpoints of one batch must be at one step, got steps {sorted(steps)}")
    first = parts[0]
    return {**first,
            "state_dict": {k: torch.cat([p["state_dict"][k] for p in parts]) if k in PER_SAMPLE_STATE else v
                           for k, v in first["state_dict"].items()},
            "optimizer_states": [_stack_optimizer([p["optimizer_states"][i] for p in parts])
                                 for i in range(len(first["optimizer_states"]))],
            "nst": {**first["nst"], SAMPLES: [s for p in parts for s in p["nst"][SAMPLES]]}}
