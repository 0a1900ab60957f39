"""`python -m benchmarks.checkpoint`: what a resumable checkpoint costs a run of the default recipe.

The default recipe's L-BFGS keeps 100 curvature pairs of the image's size: most of its checkpoint
(510 MB of a 512 px run of Grace Hopper). A checkpoint is the run's state copied to the host when it is taken, then
serialized by the run's writer while the loop goes on. This runs a sweep of that one run (`nst
experiment`: sweeps are what resume) for one checkpoint's worth of steps (its checkpoint at step 100,
then one more step), with and without that checkpoint, each in a fresh process, and reports each
one's peak resident memory (ru_maxrss: a checkpoint lives on the host whatever the device), its wall
time and the checkpoint file's size. Then the run with the checkpoint is marked KILLED, as Ctrl-C
leaves it, and the same command resumes it from that checkpoint in a fresh process: its peak and wall.
Writes "A checkpoint's cost" in BENCHMARKS.md (BENCHMARKS-cuda.md on a GPU: `--device`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient

from benchmarks.device import ROOT, bench_parser, device_name, pick
from benchmarks.markdown import Section
from benchmarks.stores import new_store
from pipelines.tracking.space import size_text
from pipelines.tracking.writers import WRITER_ENV

HEADING = "## A checkpoint's cost"
NAME = "checkpointed"  # the sweep's
IMAGES = ROOT / "experiments" / "images"
# The child: one nst command, then its own peak resident memory in kB (Linux' ru_maxrss unit).
CHILD = ("import resource, sys\nfrom pipelines.cli import main\nrc = main(sys.argv[1:])\n"
         "print('maxrss', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nraise SystemExit(rc)")


def _sweep(size: int, steps: int, every: int, device: str, folder: Path) -> list[str]:
    """The arguments of `nst experiment` of the one run, into a fresh store in `folder`."""
    uri = new_store(folder)
    path = folder / f"{NAME}.yaml"
    path.write_text(f"""
name: {NAME}
base:
  content: {IMAGES / "grace_hopper.jpg"}
  style: {IMAGES / "starry_night.jpg"}
  size: {size}
  iterations: {steps}
  checkpoint_every: {every}
  keep_checkpoints: true
  snapshots: [0]
  device: {device}
grid:
  seed: [0]
""")
    return ["experiment", str(path), "--tracking-uri", uri, "--quiet"]


def _measured(arguments: list[str], writer: str) -> tuple[int, float, str]:
    """(peak resident bytes, wall s, its output) of one nst command in a fresh process, its rows and
    checkpoints written by a `writer` thread or process (NST_WRITER); a command that did not end well
    stops the bench with its error (its time would mean nothing)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, *arguments], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, WRITER_ENV: writer})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"bench-checkpoint: the run did not finish (exit {done.returncode}): "
                         f"{done.stderr.strip().splitlines()[-1:]}")
    return int(done.stdout.split("maxrss")[-1].split()[0]) * 1024, wall, done.stdout


def fresh_run(size: int, steps: int, every: int, device: str, folder: Path, writer: str = "thread"
              ) -> tuple[int, float, int]:
    """(peak resident bytes, wall s, checkpoint bytes) of the run's sweep in a fresh process, into a
    new store in `folder` (resumed_run resumes it there)."""
    peak, wall, _ = _measured(_sweep(size, steps, every, device, folder), writer)
    return peak, wall, sum(f.stat().st_size for f in folder.rglob("checkpoint/*.ckpt"))


def resumed_run(folder: Path, every: int, writer: str = "thread") -> tuple[int, float]:
    """(peak resident bytes, wall s) of the same command resuming fresh_run's run in `folder` from its
    checkpoint of step `every`, the run marked KILLED first; a command that did not resume stops the bench."""
    uri = f"sqlite:///{folder}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(NAME)
    assert experiment is not None, "resumed_run resumes the sweep fresh_run made"
    (run,) = client.search_runs([experiment.experiment_id], "tags.`mlflow.parentRunId` != ''")
    client.set_terminated(run.info.run_id, "KILLED")
    peak, wall, out = _measured(["experiment", str(folder / f"{NAME}.yaml"), "--tracking-uri", uri, "--quiet"], writer)
    if f"from its checkpoint of step {every}" not in out:
        raise SystemExit(f"bench-checkpoint: the run did not resume from step {every}: {out.strip()[-300:]}")
    return peak, wall


def _signed(size: int) -> str:
    return ("+" if size >= 0 else "-") + size_text(abs(size))


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("bench-checkpoint", __doc__)
    args = parser.parse_args(argv)
    device = pick(parser, args)
    gpu = device.type == "cuda"
    sizes, steps, every = ((32,), 11, 10) if args.smoke else ((512, 1024) if gpu else (512,), 101, 100)
    section = Section(args.out, [HEADING, "", f"`python -m benchmarks.checkpoint` on {device_name(device)}: "
                      f"a sweep of one run of the default recipe (L-BFGS) for {steps} steps, each in a fresh "
                      f"process, with its checkpoint at step {every} and with none (`checkpoint_every: 0`); "
                      f"then that run marked KILLED (as Ctrl-C leaves it) and resumed from its checkpoint by the "
                      "same command, in a fresh process.", "",
                      "The run's writer is a thread (a CPU's choice for a run alone) or a process (a GPU's, and a "
                      "CPU's for 8 runs or more), which gets the checkpoint as a file's path.", "",
                      "| size | writer | checkpoint | peak memory | wall | checkpoint file |",
                      "|---|---|---|---|---|---|"])
    for size in sizes:
        for writer in ("thread", "process"):
            with tempfile.TemporaryDirectory() as none, tempfile.TemporaryDirectory() as held:
                p0, w0, _ = fresh_run(size, steps, 0, device.type, Path(none), writer)
                p1, w1, saved = fresh_run(size, steps, every, device.type, Path(held), writer)
                p2, w2 = resumed_run(Path(held), every, writer)
            section.add(f"| {size} px | {writer} | none | {size_text(p0)} | {w0:.1f} s | - |")
            section.add(f"| {size} px | {writer} | at step {every} | {size_text(p1)} | {w1:.1f} s | "
                        f"{size_text(saved) if saved else '-'} |")
            section.add(f"| {size} px | {writer} | the checkpoint's cost | {_signed(p1 - p0)} | {w1 - w0:+.1f} s | |")
            section.add(f"| {size} px | {writer} | resumed from step {every}: {steps - every} step, against the "
                        f"whole run | {size_text(p2)} ({_signed(p2 - p1)}) | {w2:.1f} s | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
