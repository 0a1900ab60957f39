"""`make bench-batch`: a sweep's points optimized one at a time against together as one batch.

- per image: the step time of a bare batched loop (the module's losses and per-image Adam, no
  Lightning, no MLflow) at B = 1, 3, 8, 64 images, divided by B;
- tracked against bare: the marginal s/step of a tracked batch (every metric of every run logged,
  snapshots, checkpoints) against the bare loop of the same batch;
- whole sweeps, tracked into fresh stores, `--batch 1` against `--batch auto`: the lr sweep (3
  points at 128 px) and a 64-point grid at 256 px (4 lr × 4 β × 4 seeds). The wall time, the
  optimization time (the fits), and the largest relative difference in final J between the two.
  The 64 points one at a time are timed on the first 8 and scaled by 8 (said in the table);
- on a GPU, the bare step captured in a CUDA graph (torch.cuda.graph) against the same step
  launched op by op, the lever for launch-bound steps (fp32 and bf16, 128 to 512 px);
- nst's own runs with `cuda_graph: true` against op by op: a tracked batch's step and the lr sweep.
Writes "Batches" here, then "Writers" (benchmarks.writers), "CUDA graphs" (the last two above:
benchmarks.graphs), "A batch into a tracking server" and "A sweep signed in" (benchmarks.opening) in BENCHMARKS.md
(BENCHMARKS-cuda.md on a GPU: `--device`); the loops they time are benchmarks.loops. `--smoke`: toy
sizes; `--batches`, `--writers`, `--graphs`, `--opening`, `--signed-in`: only those sections.
"""

from __future__ import annotations

import logging
import tempfile
from contextlib import nullcontext
from pathlib import Path

import torch

from benchmarks.cluster import tracking_server
from benchmarks.device import bench_parser, device_name, pick
from benchmarks.graphs import graphs
from benchmarks.loops import ROOT, batch_loop, grid_file, point_configs, run_config_for, sweep, tracked_batch
from benchmarks.markdown import Section
from benchmarks.opening import opening, signed_in
from benchmarks.writers import writers
from nst.precision import resolve_precision
from pipelines.errors import UserError
from pipelines.execution.batches import auto_size
from pipelines.execution.run import quiet_lightning

HEADING = "## Batches"


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("bench-batch", __doc__)
    parser.add_argument("--graphs", action="store_true", help="only the CUDA graphs section (about 90 s on an H100)")
    parser.add_argument("--writers", action="store_true", help="only the Writers section (thread against process)")
    parser.add_argument("--opening", action="store_true", help="only the 'A batch into a tracking server' section")
    parser.add_argument("--signed-in", action="store_true", help="only the 'A sweep signed in' section")
    parser.add_argument("--batches", action="store_true", help="only the Batches section")
    args = parser.parse_args(argv)
    device = pick(parser, args)
    quiet_lightning()
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its "creating tables" notes per store
    sections = {"batches": batches, "writers": writers, "graphs": graphs, "opening": opening, "signed_in": signed_in}
    for name in [name for name in sections if getattr(args, name)] or sections:
        sections[name](device, args.smoke, args.out)
    return 0


def batches(device: torch.device, smoke: bool, out: Path) -> None:
    """The Batches section: per image at each B, tracked against bare, whole sweeps one at a time and batched."""
    gpu = device.type == "cuda"
    sizes = (32,) if smoke else (128, 256, 512) if gpu else (128, 256)
    counts = (1, 3) if smoke else (1, 3, 8, 64)
    section = Section(out, [HEADING, "",
             f"`make bench-batch` on {device_name(device)}, default precision "
             f"({resolve_precision('auto', device.type)}). Per image: the bare loop's s/step at B images ÷ B.", "",
             "| size | " + " | ".join(f"B = {b}" for b in counts) + f" | B = {counts[-1]}: speed-up per image |",
             "|---|" + "---|" * (len(counts) + 1)])
    for size in sizes:
        per_image: dict[int, float] = {}
        for b in counts:
            if gpu or smoke or size <= 128 or b <= 8:  # 64 at 256 px: seconds a step on a CPU, for nothing
                steps = 2 if smoke else 10 if gpu or b < 8 else 3
                per_image[b] = batch_loop(point_configs(b), size, steps, device).median / b
                print(size, b, per_image[b], flush=True)
        cells = [f"{per_image[b] * 1000:.2f} ms" if b in per_image else "—" for b in counts]
        ratio = f"{per_image[1] / per_image[counts[-1]]:.1f}×" if counts[-1] in per_image else "—"
        section.add(f"| {size} px | " + " | ".join(cells) + f" | {ratio} |")

    section.lines += [
        "", "Tracked against bare, per step of the whole batch (marginal: runs of N and 3N steps, differenced;",
        "every run's metrics of every step logged, snapshots, checkpoints every 100 steps), the runs written",
        "where this device writes them (`auto`: \"Writers\" below measures a thread against processes).", "",
        "| batch, store | bare loop | tracked | overhead | writer's CPU per step |",
        "|---|---|---|---|---|"]
    shapes = [(32, 3, 3)] if smoke else [(128, 3, 100), (256, 64, 100)] if gpu else [(128, 3, 10), (128, 8, 5)]
    for i, (size, b, steps) in enumerate(shapes):
        bare = batch_loop(point_configs(b), size, steps, device).median
        stores: list[tuple[str, str | None]] = [("SQLite", None)]
        if i == len(shapes) - 1:  # the largest batch again, into a tracking server: its SQL work in other processes
            stores.append(("a tracking server (SQLite behind it)", "server"))
        for label, store in stores:
            try:
                with tracking_server(db="sqlite") if store else nullcontext() as url:
                    tracked, writer = tracked_batch(point_configs(b), size, steps, device, server=url)
                row = (f"| {b} × {size} px, {label} | {bare * 1000:.1f} ms | {tracked * 1000:.1f} ms "
                       f"| {tracked / bare - 1:+.1%} | {writer * 1000:.1f} ms |")
            except UserError as exc:  # no server on this machine (mlflow-skinny alone): the row says so
                row = f"| {b} × {size} px, {label} | {bare * 1000:.1f} ms | not measured: {exc} | — | — |"
            section.add(row)

    lr_steps = 4 if smoke else 2000 if gpu else 200
    grid_size, grid_steps, first, n = (32, 3, 2, 2) if smoke else (256, 100, 8, 4) if gpu else (256, 3, 8, 4)
    section.lines += ["", "Whole sweeps into a fresh SQLite store, `--batch 1` against `--batch auto` "
              f"(auto here: {auto_size(run_config_for(grid_size, 1, device), device.type)} at {grid_size} px, "
              f"{auto_size(run_config_for(128, 1, device), device.type)} at 128 px).", "",
              "| sweep | one at a time: wall | optimization | batched: wall | optimization | faster (wall) "
              "| final J, largest difference |", "|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        lr_keys = {"iterations": lr_steps, "device": device.type, **({"size": 32} if smoke else {})}
        cases: list[tuple[str, Path, dict[str, object], int | None]] = [
            (f"lr_sweep, {lr_steps} steps", ROOT / "experiments" / "lr_sweep.yaml", lr_keys, None),
            (f"{n**3} points at {grid_size} px, {grid_steps} steps",
             grid_file(Path(tmp), grid_size, grid_steps, n), {"device": device.type}, first)]
        for label, path, overrides, subset in cases:
            one_wall, one_fit, one_j, _ = sweep(path, overrides, 1, subset)
            wall, fit, j, _ = sweep(path, overrides, "auto")
            scale = len(j) / len(one_j)
            note = f" (first {subset} × {scale:.0f})" if subset else ""
            gap = max(abs(j[k] / v - 1) for k, v in one_j.items())
            section.add(f"| {label} | {one_wall * scale:.1f} s{note} | {one_fit * scale:.1f} s | {wall:.1f} s "
                        f"| {fit:.1f} s | {one_wall * scale / wall:.1f}× | {gap:.1e} |")


if __name__ == "__main__":
    raise SystemExit(main())
