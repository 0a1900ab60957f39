"""`make bench-levers`: what each speed lever buys, measured side by side on the same bare loop.

Each lever is applied to the VGG of an otherwise identical bare Adam loop (the math of a run, no
Lightning, no MLflow) at the same size, and reported as s/iteration against the baseline, with
the final-loss difference (a lever must not change the result beyond float noise; bf16 is
measured in BENCHMARKS.md's precision table). Writes the "Levers" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from benchmarks.bench import Timing, _pair, _timing
from benchmarks.markdown import replace_section
from nst.config import TransferConfig
from nst.module import StyleTransfer

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Levers"

Lever = Callable[[StyleTransfer], None]


def channels_last(module: StyleTransfer) -> None:
    """NHWC weights: oneDNN's preferred layout on CPU (outputs follow the weights' format)."""
    module.vgg.to(memory_format=torch.channels_last)


def inplace_relus(module: StyleTransfer) -> None:
    """ReLUs in place where their input is not a layer the losses read: fewer allocations."""
    wanted = {*module.content_layers, *module.style_weights}
    for i, layer in enumerate(module.vgg.layers):
        previous = module.vgg.names[i - 1] if i else ""
        if isinstance(layer, nn.ReLU) and previous not in wanted:
            module.vgg.layers[i] = nn.ReLU(inplace=True)


def compiled(module: StyleTransfer) -> None:
    """torch.compile (inductor, C++ codegen on CPU) of the VGG's forward; compile time counted apart."""
    object.__setattr__(module, "vgg", torch.compile(module.vgg))


def measure(config: TransferConfig, size: int, steps: int, lever: Lever | None) -> tuple[Timing, float, float]:
    """(s/iteration after the first steps, seconds of the first step, final J)."""
    torch.manual_seed(0)
    module = StyleTransfer(*_pair(size), config)
    if lever is not None:
        lever(module)
    optimizer = torch.optim.Adam([module.image], lr=config.optimizer.lr)
    samples, first, total = [], 0.0, float("nan")
    for i in range(steps + 2):
        start = time.perf_counter()
        optimizer.zero_grad()
        loss = module.losses()["loss/total"]
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            module.image.clamp_(0, config.pixel_scale)
        total = float(loss.detach())
        elapsed = time.perf_counter() - start
        if i == 0:
            first = elapsed
        elif i >= 2:
            samples.append(elapsed)
    return _timing(samples), first, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench-levers", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    config = TransferConfig(iterations=args.steps, optimizer=replace(TransferConfig().optimizer, lr=1.0))
    levers: list[tuple[str, Lever | None]] = [("baseline (fp32, NCHW, truncated VGG, frozen weights)", None),
                                             ("channels_last", channels_last),
                                             ("in-place ReLUs", inplace_relus),
                                             ("torch.compile", compiled)]
    lines = [HEADING, "",
             f"Bare Adam loop at {args.size} px, fp32, {args.steps} timed steps after 2 warm-up steps (the first",
             "step, which pays for compilation, is shown apart).", "",
             "| lever | s/iteration | vs baseline | first step | final-J difference |", "|---|---|---|---|---|"]
    base_time, base_loss = None, None
    for label, lever in levers:
        timing, first, loss = measure(config, args.size, args.steps, lever)
        base_time, base_loss = base_time or timing.median, base_loss or loss
        lines.append(f"| {label} | {timing} | {base_time / timing.median:.2f}× | {first:.1f} s "
                     f"| {abs(loss / base_loss - 1):.1e} |")
        print(lines[-1], flush=True)
    replace_section(args.out, HEADING, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
