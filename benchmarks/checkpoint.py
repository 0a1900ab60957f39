"""`python -m benchmarks.checkpoint`: what a resumable checkpoint costs a run of the default recipe.

The default recipe's L-BFGS keeps 100 curvature pairs of the image's size: most of its checkpoint
(510 MB of a 512 px run of Grace Hopper). A checkpoint is the run's state copied to the host when it is taken, then
serialized by the run's writer while the loop goes on. This runs `nst run` with the default recipe
for one checkpoint's worth of steps (its checkpoint at step 100, then one more step), with and without
that checkpoint, each in a fresh process, and reports each one's peak resident memory (ru_maxrss: a
checkpoint lives on the host whatever the device), its wall time and the checkpoint file's size.
Writes "A checkpoint's cost" in BENCHMARKS.md (BENCHMARKS-cuda.md on a GPU: `--device`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.device import ROOT, bench_parser, device_name, pick
from benchmarks.markdown import Section
from benchmarks.stores import new_store
from pipelines.tracking.space import size_text
from pipelines.tracking.writers import WRITER_ENV

HEADING = "## A checkpoint's cost"
IMAGES = ROOT / "experiments" / "images"
# The child: one `nst run`, then its own peak resident memory in kB (Linux' ru_maxrss unit).
CHILD = ("import resource, sys\nfrom pipelines.cli import main\nrc = main(sys.argv[1:])\n"
         "print('maxrss', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nraise SystemExit(rc)")


def fresh_run(size: int, steps: int, every: int, device: str, folder: Path, writer: str = "thread"
              ) -> tuple[int, float, int]:
    """(peak resident bytes, wall s, checkpoint bytes) of one `nst run` in a fresh process, its rows and
    checkpoints written by a `writer` thread or process (NST_WRITER); a run that did not FINISH stops
    the bench with its error (its time would mean nothing)."""
    uri = new_store(folder)
    command = [sys.executable, "-c", CHILD, "run", "--content", str(IMAGES / "grace_hopper.jpg"),
               "--style", str(IMAGES / "starry_night.jpg"), "--tracking-uri", uri, "--quiet",
               *(f"--set={kv}" for kv in (f"size={size}", f"iterations={steps}", f"checkpoint_every={every}",
                                          "keep_checkpoints=true", "snapshots=[0]", f"device={device}"))]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env={**os.environ, WRITER_ENV: writer})
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"bench-checkpoint: the run did not finish (exit {done.returncode}): "
                         f"{done.stderr.strip().splitlines()[-1:]}")
    peak = int(done.stdout.split("maxrss")[-1].split()[0]) * 1024
    held = sum(f.stat().st_size for f in folder.rglob("checkpoint/*.ckpt"))
    return peak, wall, held


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("bench-checkpoint", __doc__)
    args = parser.parse_args(argv)
    device = pick(parser, args)
    gpu = device.type == "cuda"
    sizes, steps, every = ((32,), 11, 10) if args.smoke else ((512, 1024) if gpu else (512,), 101, 100)
    section = Section(args.out, [HEADING, "", f"`python -m benchmarks.checkpoint` on {device_name(device)}: "
                      f"`nst run` of the default recipe (L-BFGS) for {steps} steps, each in a fresh process, "
                      f"with its checkpoint at step {every} and with none (`checkpoint_every: 0`).", "",
                      "The run's writer is a thread (a CPU's choice for a run alone) or a process (a GPU's, and a "
                      "CPU's for 8 runs or more), which gets the checkpoint as a file's path.", "",
                      "| size | writer | checkpoint | peak memory | wall | checkpoint file |",
                      "|---|---|---|---|---|---|"])
    for size in sizes:
        for writer in ("thread", "process"):
            measured = {}
            for kind, n in (("none", 0), (f"at step {every}", every)):
                with tempfile.TemporaryDirectory() as tmp:
                    peak, wall, held = measured[kind] = fresh_run(size, steps, n, device.type, Path(tmp), writer)
                section.add(f"| {size} px | {writer} | {kind} | {size_text(peak)} | {wall:.1f} s | "
                            f"{size_text(held) if held else '-'} |")
            (p0, w0, _), (p1, w1, _) = measured.values()
            grew = ("+" if p1 >= p0 else "-") + size_text(abs(p1 - p0))
            section.add(f"| {size} px | {writer} | the checkpoint's cost | {grew} | {w1 - w0:+.1f} s | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
