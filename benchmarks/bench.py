"""`make bench`: where an iteration's time goes, measured side by side in one run.

- overhead: s/iteration of a tracked run (Lightning + MLflow, every step logged, snapshots,
  checkpoints) against a bare PyTorch loop of the same math, at 128 and 256 px;
- roofline: effective GFLOP/s of VGG forward + input-backward (conv FLOPs counted up to the
  deepest layer used) against this machine's measured fp32 / bf16 matmul peak;
- precision: fp32 against bf16 autocast (Gram matrices and losses stay fp32): speed ratio and
  the difference in final loss;
- memory: peak RSS of a fresh process at 512, 1024 and 2048 px (peak GPU memory on a GPU).
Writes BENCHMARKS.md (or --out) with the machine, versions, date, medians and spread;
`--device cuda` (or `auto` where one is visible) runs the same on a GPU into BENCHMARKS-cuda.md.
`--smoke` runs every code path at toy sizes in seconds (CI); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib.metadata import version
from pathlib import Path
from typing import NamedTuple

import torch

from benchmarks.device import bench_parser, describe, memory_kind, peak_memory_gib, pick, reset_peak, sync
from benchmarks.markdown import keep_others
from benchmarks.stores import new_store
from nst.config import Precision, TransferConfig
from nst.determinism import deterministic
from nst.images import load_image
from nst.module import StyleTransfer
from nst.precision import resolve_precision
from nst.targets import build_backbone
from pipelines.config.runs import run_config
from pipelines.execution.run import FINISHED, RunResult, execute, quiet_lightning

IMAGES = Path(__file__).resolve().parents[1] / "experiments" / "images"
CONTENT, STYLE = IMAGES / "grace_hopper.jpg", IMAGES / "starry_night.jpg"
CPU = torch.device("cpu")


@dataclass(frozen=True)
class Timing:
    median: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.median * 1000:.1f} ms ({self.low * 1000:.1f}–{self.high * 1000:.1f})"


def _timing(samples: list[float]) -> Timing:
    return Timing(statistics.median(samples), min(samples), max(samples))


def _pair(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    content = load_image(CONTENT, size)
    return content, load_image(STYLE, (content.shape[3], content.shape[2]))


class BenchmarkError(SystemExit):
    """A measured run did not finish: its timing would mean nothing, so the benchmark stops with why."""


def require_finished(result: RunResult, what: str) -> RunResult:
    if result.status != FINISHED:
        raise BenchmarkError(f"bench: {what} ended {result.status}, not timed: {result.error}")
    return result


class Loop(NamedTuple):
    timing: Timing  # s/iteration after the warm-up
    loss: float  # J after the last step
    first: float  # seconds of the first step (which pays for any compilation)
    image: torch.Tensor  # the final image, on the CPU


def bare_loop(config: TransferConfig, size: int, steps: int, warmup: int = 2,
              lever: Callable[[StyleTransfer], None] | None = None,
              device: torch.device = CPU) -> Loop:
    """The same math as a run without Lightning or MLflow, timed. `lever` may change the module first."""
    torch.manual_seed(0)
    content, style = _pair(size)
    # Built on the device, as `nst run` builds it (the VGG is held outside the module's registry).
    module = StyleTransfer(content.to(device), style.to(device), config, backbone=build_backbone(config).to(device))
    if lever is not None:
        lever(module)
    optimizer = torch.optim.Adam([module.image], lr=config.optimizer.lr)
    samples, total, first = [], float("nan"), 0.0
    for i in range(warmup + steps):
        sync(device)
        start = time.perf_counter()
        optimizer.zero_grad()
        loss = module.losses()["loss/total"]
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            module.image.clamp_(0, config.pixel_scale)
        total = float(loss.detach())  # waits for the step's kernels on a GPU as well
        sync(device)
        elapsed = time.perf_counter() - start
        first = first or elapsed
        if not math.isfinite(total):
            raise BenchmarkError(f"bench: the bare loop at {size} px diverged at step {i} (J = {total}), not timed")
        if i >= warmup:
            samples.append(elapsed)
    return Loop(_timing(samples), total, first, module.image.detach().cpu())


def _tracked(size: int, steps: int, device: torch.device) -> tuple[float, float]:
    """(seconds, seconds spent logging per-step metrics) of one `nst run` into a fresh store."""
    with tempfile.TemporaryDirectory() as tmp:
        config = run_config({"content": str(CONTENT), "style": str(STYLE), "size": size, "iterations": steps,
                             "snapshots": [0, steps // 2], "checkpoint_every": 100, "device": device.type})
        result = execute(config, tracking_uri=new_store(tmp), experiment="bench", progress=False)
        require_finished(result, f"the tracked run at {size} px")
        return result.seconds, result.logging_seconds


def tracked_run(size: int, steps: int, repeats: int, device: torch.device) -> tuple[Timing, float, float]:
    """`nst run` (everything tracked) into temporary SQLite stores at `steps` and 3x`steps`:
    the marginal s/iteration (the difference of the two over 2x`steps` steps, so start-up
    and the last flush cancel out), the start-up cost in s, and the share of the run spent
    logging per-step metrics (buffering + SQLite writes)."""
    marginal, fixed, shares = [], [], []
    for _ in range(repeats):
        short, _ = _tracked(size, steps, device)
        long, logging = _tracked(size, 3 * steps, device)
        per_step = (long - short) / (2 * steps)
        marginal.append(per_step)
        fixed.append(short - steps * per_step)
        shares.append(logging / long)
    return _timing(marginal), statistics.median(fixed), statistics.median(shares)


def determinism(config: TransferConfig, size: int, steps: int, device: torch.device) -> list[str]:
    """Two bare runs from the same seed, with the default kernels and with `deterministic: true`:
    are their final images the same bits, and what do deterministic kernels cost per iteration."""
    rows, default = [], None
    for enabled in (False, True):
        with deterministic(enabled):
            first, second = (bare_loop(config, size, steps, device=device) for _ in range(2))
        gap = float((first.image - second.image).abs().max())  # 0-255 units
        same = "yes" if torch.equal(first.image, second.image) else f"no: up to {gap:.2g} of 255 apart"
        default = default or first.timing.median
        rows.append(f"| {'deterministic: true' if enabled else 'default'} | {first.timing} | {second.timing} "
                    f"| {first.timing.median / default:.2f}× | {same} |")
    return rows


def conv_flops(config: TransferConfig, height: int, width: int) -> float:
    """FLOPs of VGG forward + input-backward up to the deepest layer the losses use
    (2 per multiply-add; the input-backward costs about as much as the forward)."""
    vgg = build_backbone(config)
    flops, h, w = 0.0, height, width
    for name, layer in zip(vgg.names, vgg.layers, strict=True):
        if isinstance(layer, torch.nn.Conv2d):
            flops += 2 * layer.in_channels * layer.out_channels * 9 * h * w
        elif name.startswith("pool"):
            h, w = h // 2, w // 2
    return 2 * flops


def matmul_size(device: torch.device, smoke: bool = False) -> int:
    """The side of the square product matmul_peak times: a GPU needs a larger one to saturate."""
    return 256 if smoke else 8192 if device.type == "cuda" else 2048


def matmul_peak(dtype: torch.dtype, n: int, device: torch.device, repeats: int = 5, tf32: bool = False) -> float:
    """GFLOP/s of torch.mm at n×n (`tf32`: fp32 through TF32 tensor cores, where the device has them)."""
    a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    try:
        torch.mm(a, b)
        samples = []
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            torch.mm(a, b)
            sync(device)
            samples.append(time.perf_counter() - start)
    finally:
        torch.set_float32_matmul_precision(before)
    return 2 * n**3 / min(samples) / 1e9


def peak_rss(size: int, precision: str, device: torch.device, steps: int = 2) -> tuple[float, float]:
    """(peak memory in GiB, s/iteration) of `steps` bare iterations at `size`, measured in a
    fresh process so that nothing else this benchmark did counts."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench", "--rss", str(size), "--precision", precision, "--steps", str(steps),
         "--device", device.type],
        capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1],
    ).stdout.split()
    return float(out[-2]), float(out[-1])


def _rss_child(size: int, precision: Precision, steps: int, device: torch.device) -> None:
    config = TransferConfig(iterations=steps, precision=precision)
    reset_peak(device)
    timing = bare_loop(config, size, steps, warmup=0, device=device).timing
    print(peak_memory_gib(device), timing.median)


def machine(device: torch.device = CPU) -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"pytorch-lightning {version('pytorch-lightning')}, mlflow {version('mlflow')}, "
            f"Python {platform.python_version()}{describe(device)}")


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("bench", __doc__)
    parser.add_argument("--rss", type=int, help=argparse.SUPPRESS)  # child process of the memory table
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = pick(parser, args)
    if args.rss:
        _rss_child(args.rss, args.precision, args.steps, device)
        return 0
    quiet_lightning()
    smoke = args.smoke
    sizes = (32, 48) if smoke else (128, 256)
    steps, repeats = (3, 1) if smoke else (30, 3)
    base = TransferConfig(iterations=steps, optimizer=replace(TransferConfig().optimizer, lr=1.0))
    lines = [
        "# Benchmarks", "",
        f"`make bench`, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC. Machine: {machine(device)}.",
        "Times are per iteration: median of the samples (min–max in brackets).", "",
        "## Overhead: tracked run against a bare loop", "",
        "The tracked run is `nst run` as users run it: Lightning's loop, every metric of every step logged to",
        "SQLite (buffered), snapshots and checkpoints. Its s/iteration is marginal: runs of N and 3N steps,",
        "differenced, so the one-off start-up (Trainer set-up, first snapshot, last flush) is shown apart.",
        "The bare loop is the same math with torch alone. Metric logging is the share of the 3N-step run",
        "spent buffering and writing the per-step metrics. Both run at the default `precision: auto`",
        f"({resolve_precision('auto', device.type)} on this machine).", "",
        "| size | bare loop | tracked run | overhead per iteration | start-up, once | metric logging |",
        "|---|---|---|---|---|---|",
    ]
    for size in sizes:
        bare = bare_loop(base, size, steps * repeats, device=device).timing
        tracked, start_up, logging_share = tracked_run(size, steps, repeats, device)
        overhead = tracked.median / bare.median - 1
        lines.append(f"| {size} px | {bare} | {tracked} | {overhead:+.1%} | {start_up:.2f} s "
                     f"| {logging_share:.2%} of the run |")
    n = matmul_size(device, smoke)
    fp32_peak = matmul_peak(torch.float32, n, device)
    bf16_peak = matmul_peak(torch.bfloat16, n, device)
    peaks = f"fp32 {fp32_peak:.0f} GFLOP/s, bf16 {bf16_peak:.0f} GFLOP/s"
    # cuDNN runs fp32 convolutions through TF32 tensor cores by default: their share is of that peak.
    tf32 = device.type == "cuda" and torch.backends.cudnn.allow_tf32
    if tf32:
        fp32_peak = matmul_peak(torch.float32, n, device, tf32=True)
        peaks += f", fp32 through TF32 {fp32_peak:.0f} GFLOP/s (what cuDNN's fp32 convolutions use here)"
    lines += ["", "## Roofline", "", f"Measured matmul peak ({n}×{n}): {peaks}.", "",
              "| size | precision | conv GFLOP/iteration | s/iteration | GFLOP/s | of the matmul peak |",
              "|---|---|---|---|---|---|"]
    notes = ["", "GFLOP/s counts a direct convolution's multiply-adds (2 FLOPs each) for the forward pass and",
             "again for the gradient with respect to the input (the weights are frozen). A share above 100% means",
             "the convolution kernels beat torch.mm's GEMM at the same precision on this device"
             + (" (fp32 rows: against the TF32 peak)." if tf32 else ".")]
    precision_rows = []
    for size in ((48, 64) if smoke else (256, 512)):
        content = load_image(CONTENT, size)
        flops = conv_flops(base, *content.shape[-2:])
        results = {}
        precisions: tuple[tuple[Precision, float], ...] = (("fp32", fp32_peak), ("bf16", bf16_peak))
        for precision, peak in precisions:
            timing, final, _, _ = bare_loop(replace(base, precision=precision), size, 2 if smoke else 10,
                                            device=device)
            results[precision] = (timing, final)
            rate = flops / timing.median / 1e9
            lines.append(f"| {size} px | {precision} | {flops / 1e9:.1f} | {timing} | {rate:.0f} | {rate / peak:.0%} |")
        (t32, j32), (t16, j16) = results["fp32"], results["bf16"]
        speedup, loss_gap = t32.median / t16.median, abs(j16 / j32 - 1)
        precision_rows.append(f"| {size} px | {t32} | {t16} | {speedup:.2f}× | {loss_gap:.2%} |")
    lines += notes
    lines += ["", "## Precision: fp32 against bf16 autocast", "",
              "Same start, same steps; the loss is J after the last step of each.", "",
              "| size | fp32 | bf16 | speed-up | final-loss difference |", "|---|---|---|---|---|", *precision_rows]
    lines += ["", "## Memory", "",
              f"The {memory_kind(device)} of a fresh process doing two bare iterations at each size, the",
              "style image resized to the content's size (Grace Hopper: 437×512, so `size` is the height).", "",
              "| size | precision | peak memory | s/iteration |", "|---|---|---|---|"]
    for size in ((64,) if smoke else (512, 1024, 2048)):  # a smoke: one fresh process per precision
        for precision in ("fp32", "bf16"):
            gib, seconds = peak_rss(size, precision, device, 1 if smoke else 2)
            lines.append(f"| {size} px | {precision} | {gib:.1f} GiB | {seconds:.1f} s |")
    size = 48 if smoke else 256
    lines += ["", "## Determinism", "",
              f"Two bare runs of {steps} steps at {size} px from the same seed, run after run in one process, at",
              "the default precision: the final images compared bit for bit, and the time per iteration with",
              "torch's deterministic kernels (`deterministic: true`: nst.determinism) against the default ones.", "",
              "| kernels | first run | second run | time vs default | bit-identical |", "|---|---|---|---|---|",
              *determinism(base, size, steps, device)]
    args.out.write_text(keep_others(args.out, "\n".join(lines) + "\n"))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
