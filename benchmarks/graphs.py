"""`make bench-batch`'s "CUDA graphs" (alone: `python -m benchmarks.batch --graphs`): on a GPU the bare
step captured in one CUDA graph against launched op by op; nst's own runs with `cuda_graph: true`
against op by op (a tracked batch's step, the lr sweep batched)."""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.device import device_name
from benchmarks.loops import ROOT, batch_loop, graphed_loop, point_configs, sweep, tracked_batch
from benchmarks.markdown import Section
from nst.precision import resolve_precision
from pipelines.tracking.fit_times import described

HEADING = "## CUDA graphs"


def graphs(device: torch.device, smoke: bool, out: Path) -> None:
    """The "CUDA graphs" section: on a GPU the bare step captured against launched op by op; nst's own
    runs with `cuda_graph: true` against op by op (a tracked batch's step, the lr sweep batched)."""
    section = Section(out, [HEADING, "", f"`make bench-batch` (or `python -m benchmarks.batch --graphs`) on "
             f"{device_name(device)}, default precision "
             f"({resolve_precision('auto', device.type)})."])
    if device.type == "cuda":
        section.lines += [
            "", "The bare step captured in a CUDA graph (one launch per step) against launched op by op:", "",
            "| batch | op by op | CUDA graph | faster |", "|---|---|---|---|"]
        for size, b, precision in [(32, 3, "bf16")] if smoke else [(128, 3, "fp32"), (128, 3, "bf16"),
                                                                    (256, 8, "bf16"), (512, 8, "bf16")]:
            configs = point_configs(b, precision=precision)
            try:
                plain = batch_loop(configs, size, 20, device).median
                graphed = graphed_loop(configs, size, 20, device).median
                row = (f"| {b} × {size} px, {precision} | {plain * 1000:.2f} ms | {graphed * 1000:.2f} ms "
                       f"| {plain / graphed:.2f}× |")
            except Exception as exc:  # noqa: BLE001 - a step that cannot be captured is a finding, not a crash
                row = (f"| {b} × {size} px, {precision} | — | capture failed: {type(exc).__name__}: "
                       f"{str(exc)[:120]} | — |")
            section.add(row)
    section.lines += [
        "", "nst's runs with `cuda_graph: true` (each step's losses and gradient replayed from one captured",
        "CUDA graph, nst.graphs) against op by op; on the CPU the setting changes nothing (the steps run",
        "op by op either way). A tracked step is marginal: runs of N and 3N steps, differenced.", "",
        "| what | op by op | `cuda_graph: true` | faster | final J, largest difference |",
        "|---|---|---|---|---|"]
    size, b, steps = (32, 3, 3) if smoke else (128, 3, 100) if device.type == "cuda" else (128, 3, 10)
    plain, graphed = (tracked_batch(point_configs(b), size, steps, device, cuda_graph=g)[0] for g in (False, True))
    section.add(f"| tracked {b} × {size} px, per step | {plain * 1000:.1f} ms | {graphed * 1000:.1f} ms "
                f"| {plain / graphed:.2f}× | — |")
    lr_steps = 4 if smoke else 2000 if device.type == "cuda" else 50
    overrides = {"iterations": lr_steps, "device": device.type, **({"size": 32} if smoke else {})}
    path = ROOT / "experiments" / "lr_sweep.yaml"
    plain_sweep, graphed_sweep = (sweep(path, overrides | {"cuda_graph": g}, "auto") for g in (False, True))
    (wall, fit, j, _), (g_wall, g_fit, g_j, _) = plain_sweep, graphed_sweep
    gap = max(abs(g_j[k] / v - 1) for k, v in j.items())
    section.add(f"| lr_sweep batched, {lr_steps} steps: optimization (wall) | {fit:.1f} s ({wall:.1f} s) "
                f"| {g_fit:.1f} s ({g_wall:.1f} s) | {fit / g_fit:.2f}× | {gap:.1e} |")
    section.add("", "Where the lr sweep's fit went (pipelines.tracking.fit_times: the loop's tracking work, timed in "
                f"the loop), op by op, {described(plain_sweep.fit_times, fit)}; with `cuda_graph: true`, "
                f"{described(graphed_sweep.fit_times, g_fit)}.")
