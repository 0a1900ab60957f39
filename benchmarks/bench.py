"""`make bench`: where an iteration's time goes, measured side by side in one run.

- overhead: s/iteration of a tracked run (Lightning + MLflow, every step logged, snapshots,
  checkpoints) against a bare PyTorch loop of the same math, at 128 and 256 px;
- roofline: effective GFLOP/s of VGG forward + input-backward (conv FLOPs counted up to the
  deepest layer used) against this machine's measured fp32 / bf16 matmul peak;
- precision: fp32 against bf16 autocast (Gram matrices and losses stay fp32): speed ratio and
  the difference in final loss.
Writes BENCHMARKS.md (or --out) with the machine, versions, date, medians and spread.
`--smoke` runs every code path at toy sizes in seconds (CI); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from importlib.metadata import version
from pathlib import Path

import torch

from nst.config import TransferConfig
from nst.images import load_image
from nst.module import StyleTransfer, build_backbone
from pipelines.config import run_config
from pipelines.run import execute, quiet_lightning

IMAGES = Path(__file__).resolve().parents[1] / "experiments" / "images"
CONTENT, STYLE = IMAGES / "grace_hopper.jpg", IMAGES / "starry_night.jpg"


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


def bare_loop(config: TransferConfig, size: int, steps: int, warmup: int = 2) -> tuple[Timing, float]:
    """s/iteration of the same math without Lightning or MLflow, and the final J."""
    module = StyleTransfer(*_pair(size), config)
    optimizer = torch.optim.Adam([module.image], lr=config.optimizer.lr)
    samples, total = [], float("nan")
    for i in range(warmup + steps):
        start = time.perf_counter()
        optimizer.zero_grad()
        loss = module.losses()["loss/total"]
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            module.image.clamp_(0, config.pixel_scale)
        total = float(loss.detach())
        if i >= warmup:
            samples.append(time.perf_counter() - start)
    return _timing(samples), total


def tracked_run(size: int, steps: int, repeats: int) -> Timing:
    """s/iteration of `nst run` (everything tracked) into a temporary SQLite store."""
    samples = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            config = run_config({"content": str(CONTENT), "style": str(STYLE), "size": size,
                                 "iterations": steps, "snapshots": [0, steps // 2], "checkpoint_every": 100})
            result = execute(config, tracking_uri=f"sqlite:///{tmp}/mlflow.db", experiment="bench", progress=False)
            samples.append(result.seconds / steps)
    return _timing(samples)


def conv_flops(config: TransferConfig, height: int, width: int) -> float:
    """FLOPs of VGG forward + input-backward up to the deepest layer the losses use
    (2 per multiply-add; the input-backward costs about as much as the forward)."""
    vgg = build_backbone(config)
    flops, h, w = 0.0, height, width
    for name, layer in zip(vgg.names, vgg.layers, strict=True):
        if name.startswith("conv"):
            flops += 2 * layer.in_channels * layer.out_channels * 9 * h * w
        elif name.startswith("pool"):
            h, w = h // 2, w // 2
    return 2 * flops


def matmul_peak(dtype: torch.dtype, n: int, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        samples.append(time.perf_counter() - start)
    return 2 * n**3 / min(samples) / 1e9


def machine() -> str:
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
            f"Python {platform.python_version()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="toy sizes, seconds; checks the code, not the speed")
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    args = parser.parse_args(argv)
    quiet_lightning()
    smoke = args.smoke
    sizes = (32, 48) if smoke else (128, 256)
    steps, repeats = (3, 1) if smoke else (30, 3)
    base = TransferConfig(iterations=steps, optimizer=replace(TransferConfig().optimizer, lr=1.0))
    lines = [
        "# Benchmarks", "",
        f"`make bench`, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC. Machine: {machine()}.",
        "Times are per iteration: median of the samples (min–max in brackets).", "",
        "## Overhead: tracked run against a bare loop", "",
        "The tracked run is `nst run` as users run it: Lightning's loop, every metric of every step logged to",
        "SQLite (buffered), snapshots and a checkpoint. The bare loop is the same math with torch alone.", "",
        "| size | bare loop | tracked run | overhead |", "|---|---|---|---|",
    ]
    for size in sizes:
        bare, _ = bare_loop(base, size, steps * repeats)
        tracked = tracked_run(size, steps, repeats)
        lines.append(f"| {size} px | {bare} | {tracked} | {tracked.median / bare.median - 1:+.1%} |")
    fp32_peak = matmul_peak(torch.float32, 256 if smoke else 2048)
    bf16_peak = matmul_peak(torch.bfloat16, 256 if smoke else 2048)
    lines += ["", "## Roofline", "",
              f"Measured matmul peak (2048×2048): fp32 {fp32_peak:.0f} GFLOP/s, bf16 {bf16_peak:.0f} GFLOP/s.", "",
              "| size | precision | conv GFLOP/iteration | s/iteration | GFLOP/s | of the matmul peak |",
              "|---|---|---|---|---|---|"]
    precision_rows = []
    for size in ((48, 64) if smoke else (256, 512)):
        content = load_image(CONTENT, size)
        flops = conv_flops(base, *content.shape[-2:])
        results = {}
        for precision, peak in (("fp32", fp32_peak), ("bf16", bf16_peak)):
            timing, final = bare_loop(replace(base, precision=precision), size, 2 if smoke else 10)
            results[precision] = (timing, final)
            rate = flops / timing.median / 1e9
            lines.append(f"| {size} px | {precision} | {flops / 1e9:.1f} | {timing} | {rate:.0f} | {rate / peak:.0%} |")
        (t32, j32), (t16, j16) = results["fp32"], results["bf16"]
        speedup, loss_gap = t32.median / t16.median, abs(j16 / j32 - 1)
        precision_rows.append(f"| {size} px | {t32} | {t16} | {speedup:.2f}× | {loss_gap:.2%} |")
    lines += ["", "## Precision: fp32 against bf16 autocast", "",
              "Same start, same steps; the loss is J after the last step of each.", "",
              "| size | fp32 | bf16 | speed-up | final-loss difference |", "|---|---|---|---|---|", *precision_rows]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
