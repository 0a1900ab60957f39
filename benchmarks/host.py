"""`python -m benchmarks.host`: what a step costs apart from its losses: the host's work a step.

On a GPU a small step is launch-bound: its time is the host's, Python launching kernels one by one.
Replayed from a CUDA graph, the lr sweep's losses and gradient cost 2.0 ms a step on an H100
(BENCHMARKS-cuda.md), so the lr sweep's 2000 steps fit in its 5 s target only if what the rest of a
tracked step asks of the host (Lightning's loop, the per-image update, the clamp, the stop masks, the
metrics handed to the writers, the checkpoints) stays under about 0.5 ms. This times exactly that:
the module's losses replaced by one cheap operation on the image (the same metric names, so every
run logs what it logs), then
- the bare loop (no Lightning, no MLflow: benchmarks.loops.bare_step), s/step;
- the tracked batch without checkpoints, marginal s/step (runs of N and 3N steps, each timed until
  its rows were in the store, differenced);
- the tracked batch with a checkpoint every 100 steps (the default), the same way: where steps are
  this fast the loop waits for its writers (each round of checkpoints waits for the rounds before
  it), so this is the pace the writers keep with every metric of every step and the checkpoints.
At B = 3 (the lr sweep's batch) and B = 64 (the 64-point grid's), 32 px. Writes "A step's host work"
in BENCHMARKS.md (BENCHMARKS-cuda.md on a GPU: `--device`).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

import torch
from torch import Tensor

from benchmarks.device import bench_parser, device_name, pick
from benchmarks.loops import batch_loop, point_configs, require_all, run_specs
from benchmarks.markdown import Section
from benchmarks.stores import new_store
from nst.module import StyleTransfer
from pipelines.execution.run import RunResult, execute_batch, quiet_lightning
from pipelines.tracking.fit_times import described

HEADING = "## A step's host work"
SIZE = 32


def _cheap_losses(module: StyleTransfer) -> dict[str, Tensor]:
    """The losses' metric names, each one value per image from one cheap operation on the image."""
    per_image = (module.image.float() * 1e-3).mean(dim=(1, 2, 3))
    names = ["loss/total", "loss/content", "loss/style", "loss/tv", *(f"loss/style/{n}" for n in module.style_layers)]
    return dict.fromkeys(names, per_image)


@contextmanager
def cheap_losses() -> Iterator[None]:
    with mock.patch.object(StyleTransfer, "losses", _cheap_losses):
        yield


def tracked_fit(b: int, steps: int, device: torch.device, checkpoint_every: int) -> tuple[RunResult, float]:
    """One tracked batch of `b` runs into a fresh SQLite store: (its first run's result, whose fit's seconds
    and their parts are the batch's; the wall seconds until every row of it was in the store); every run
    FINISHED, or the bench stops with the error."""
    specs = run_specs(point_configs(b), SIZE, steps, device, checkpoint_every=checkpoint_every, snapshots=[0])
    with tempfile.TemporaryDirectory() as tmp:
        uri = new_store(tmp)  # made before the clock starts
        start = time.perf_counter()
        results = execute_batch(specs, tracking_uri=uri, experiment="host", progress=False)
        wall = time.perf_counter() - start
    require_all(results, f"the tracked batch of {b} at {SIZE} px")
    return results[0], wall


def marginal(b: int, steps: int, device: torch.device, checkpoint_every: int) -> tuple[float, RunResult]:
    """(s/step of a tracked batch until its rows are in the store: runs of `steps` and 3 × `steps`, their
    walls differenced; the longer run's result). The wall, not the fit: without checkpoints the rows are
    handed over every 2 s (RunWriter.flush_seconds), after a short fit ends, and written outside it."""
    (_, short), (long, wall) = (tracked_fit(b, n, device, checkpoint_every) for n in (steps, 3 * steps))
    return (wall - short) / (2 * steps), long


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("bench-host", __doc__, smoke="toy lengths, seconds; checks the code, not the speed")
    args = parser.parse_args(argv)
    device = pick(parser, args)
    quiet_lightning()
    steps = 20 if args.smoke else 300
    section = Section(args.out, [
        HEADING, "", f"`python -m benchmarks.host` on {device_name(device)} ({torch.get_num_threads()} torch "
        "threads): the module's losses replaced by one cheap operation on the image, "
        f"{SIZE} px, so that a step's time is the host's work apart from the losses "
        "(its module docstring says why it matters on a GPU). Per step of the whole batch; tracked: marginal, "
        f"runs of {steps} and {3 * steps} steps differenced, each timed until its rows were in the store (every "
        "metric of every run logged, into fresh SQLite stores, written by this device's choice of writers).", "",
        "| batch | bare loop | tracked, no checkpoints | tracked, a checkpoint every 100 steps |", "|---|---|---|---|"])
    host, parts = {}, []
    with cheap_losses():
        for b in (3, 8) if args.smoke else (3, 64):
            bare = batch_loop(point_configs(b), SIZE, steps, device)
            (plain, _), (saved, run) = marginal(b, steps, device, 0), marginal(b, steps, device, 100)
            host[b] = plain, saved
            parts.append(f"{b} images, {3 * steps} steps with checkpoints, {described(run.fit_times, run.seconds)}")
            section.add(f"| {b} images | {bare.median * 1000:.2f} ms | {plain * 1000:.2f} ms | {saved * 1000:.2f} ms |")
    plain, saved = host[3]
    section.add("", f"The lr sweep's 2000 steps (a batch of 3), tracked apart from their losses, take "
                f"{2000 * plain:.1f} s until their rows are in the store, {2000 * saved:.1f} s with a checkpoint "
                "every 100 steps.",
                "", "Where a tracked fit's time went (pipelines.tracking.fit_times: the loop's tracking work, timed in "
                f"the loop): {'; '.join(parts)}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
