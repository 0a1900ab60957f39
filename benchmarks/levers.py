"""`make bench-levers`: what each speed lever buys, measured side by side on the same bare loop.

Rows that start "without" undo choices already built in (channels_last, truncation, frozen
weights) to show their worth.

Each lever is applied to the VGG of an otherwise identical bare Adam loop (the math of a run, no
Lightning, no MLflow) at the same size, and reported as s/iteration against the baseline, with
the final-loss difference (a lever must not change the result beyond float noise; bf16 is
measured in BENCHMARKS.md's precision table). Writes the "Levers" section of BENCHMARKS.md
(BENCHMARKS-cuda.md on a GPU: `--device`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from benchmarks.bench import bare_loop
from benchmarks.device import add_device_argument, memory_kind, peak_memory_gib, pick, reset_peak
from benchmarks.markdown import Section
from nst.config import TransferConfig
from nst.layers import LAYER_NAMES
from nst.module import StyleTransfer
from nst.vgg import load_vgg19

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## Levers"

Lever = Callable[[StyleTransfer], None]


def nchw(module: StyleTransfer) -> None:
    """Undone on purpose: NCHW weights (PyTorch's default) instead of nst's channels_last."""
    module.vgg.layers.to(memory_format=torch.contiguous_format)


def inplace_relus(module: StyleTransfer) -> None:
    """ReLUs in place where their input is not a layer the losses read: fewer allocations."""
    wanted = {*module.content_layers, *module.style_weights}
    for i, layer in enumerate(module.vgg.layers):
        previous = module.vgg.names[i - 1] if i else ""
        if isinstance(layer, nn.ReLU) and previous not in wanted:
            module.vgg.layers[i] = nn.ReLU(inplace=True)


def checkpointed(module: StyleTransfer) -> None:
    """Activation checkpointing per VGG block: keep only block inputs, recompute the rest in backward."""
    from torch.utils.checkpoint import checkpoint

    vgg = module.vgg
    blocks: list[list[int]] = [[]]
    for i, name in enumerate(vgg.names):
        blocks[-1].append(i)
        if name.startswith("pool"):
            blocks.append([])

    def run_block(x: torch.Tensor, indices: list[int], wanted: frozenset[str]) -> tuple[torch.Tensor, dict]:
        out = {}
        for i in indices:
            x = vgg.layers[i](x)
            if vgg.names[i] in wanted:
                out[vgg.names[i]] = x
        return x, out

    def forward(rgb01: torch.Tensor, layers: Iterable[str]) -> dict[str, torch.Tensor]:
        wanted = frozenset(layers)
        x, found = vgg.normalize(rgb01), {}
        for indices in (b for b in blocks if b):
            x, out = checkpoint(run_block, x, indices, wanted, use_reentrant=False)
            found.update(out)
        return found

    object.__setattr__(vgg, "forward", forward)


def untruncated(module: StyleTransfer) -> None:
    """Undone on purpose: all 16 of VGG-19's convolutions run on every pass, as a network built for
    classification would; shows what cutting after the deepest layer buys. Stops at relu5_4: pool5
    costs nothing worth measuring, and at the smoke test's tiny sizes it would have no pixel left."""
    vgg = load_vgg19(module.config.backbone.weights, module.config.backbone.pooling, LAYER_NAMES[-2],
                     module.config.backbone.convention).to(module.image.device)
    stop_early = vgg.forward

    def forward(rgb01: torch.Tensor, layers: object) -> dict[str, torch.Tensor]:
        # Asking for the last layer too makes VGGFeatures run them all; only the asked-for ones return.
        wanted = list(layers)  # type: ignore[call-overload]
        found = stop_early(rgb01, [*wanted, vgg.names[-1]])
        return {name: found[name] for name in wanted}

    object.__setattr__(vgg, "forward", forward)
    object.__setattr__(module, "vgg", vgg)


def unfrozen(module: StyleTransfer) -> None:
    """Undone on purpose: the VGG's weights require grad, so every backward also computes their
    gradients (the optimizer still moves only the image); shows what freezing them buys."""
    module.vgg.requires_grad_(True)


def compiled(module: StyleTransfer) -> None:
    """torch.compile (inductor, C++ codegen on CPU) of the VGG's forward; compile time counted apart."""
    object.__setattr__(module, "vgg", torch.compile(module.vgg))


def autotuned(module: StyleTransfer) -> None:
    """cuDNN tries its convolution algorithms on the first step and keeps the fastest for each shape
    (a run's shapes never change). Process-wide, so it is the table's last row; the CPU has no cuDNN.
    Weighed because on an H100 a 512 px image cost 5.0 ms a step alone but 6.6 ms per image in a
    batch of 3: cuDNN's default pick for some shapes is far from its best."""
    torch.backends.cudnn.benchmark = True


LEVERS: dict[str, Lever | None] = {"baseline": None, "checkpointed": checkpointed}
ALL: dict[str, tuple[str, Lever | None]] = {
    "baseline": ("baseline (fp32, channels_last, truncated VGG, frozen weights)", None),
    "nchw": ("without channels_last: NCHW weights", nchw),
    "inplace": ("in-place ReLUs", inplace_relus),
    "checkpointed": ("activation checkpointing per block", checkpointed),
    "compile": ("torch.compile", compiled),
    "untruncated": ("without truncation: all 16 of VGG-19's convolutions every pass", untruncated),
    "unfrozen": ("without frozen weights: their gradients computed too", unfrozen),
    "autotuned": ("cudnn.benchmark: the fastest convolution algorithm per shape, measured", autotuned),
}


def _rss_child(size: int, lever: str, device: torch.device) -> None:
    config = TransferConfig(iterations=1, precision="fp32")
    reset_peak(device)
    timing = bare_loop(config, size, 1, lever=LEVERS[lever], device=device).timing
    print(peak_memory_gib(device), timing.median)


def peak_rss(size: int, lever: str, device: torch.device) -> tuple[float, float]:
    """(GiB, s/iteration) of a fresh process running 3 steps with `lever` at `size`."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.levers", "--rss-child", str(size), "--lever", lever,
                          "--device", device.type], capture_output=True, text=True, check=True, cwd=ROOT).stdout.split()
    return float(out[-2]), float(out[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench-levers", description=__doc__.splitlines()[0])
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--lever", default="baseline", help=argparse.SUPPRESS)
    parser.add_argument("--memory-size", type=int, default=1024)
    parser.add_argument("--only", help="comma-separated levers (default all): " + ",".join(ALL))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    add_device_argument(parser)
    args = parser.parse_args(argv)
    device = pick(parser, args)
    if args.rss_child:
        _rss_child(args.rss_child, args.lever, device)
        return 0
    config = TransferConfig(iterations=args.steps, precision="fp32",
                            optimizer=replace(TransferConfig().optimizer, lr=1.0))
    chosen = args.only.split(",") if args.only else list(ALL)
    levers = [(label, lever) for key, (label, lever) in ALL.items() if key in chosen]
    section = Section(args.out, [HEADING, "",
             f"Bare Adam loop at {args.size} px, fp32, {args.steps} timed steps after 2 warm-up steps (the first",
             "step, which pays for compilation, is shown apart).", "",
             "| lever | s/iteration | vs baseline | first step | final-J difference |", "|---|---|---|---|---|"])
    base_time, base_loss = None, None
    # A discarded run first: whichever lever ran first in a fresh process was 6-10% slower (two runs
    # showed the baseline losing to the untruncated VGG), a warm-up of the process, not of the lever.
    bare_loop(config, args.size, 2, device=device)
    for label, lever in levers:
        timing, loss, first, _ = bare_loop(config, args.size, args.steps, lever=lever, device=device)
        base_time, base_loss = base_time or timing.median, base_loss or loss
        section.add(f"| {label} | {timing} | {base_time / timing.median:.2f}× | {first:.1f} s "
                    f"| {abs(loss / base_loss - 1):.1e} |")
    section.lines += ["", f"Memory, the lever for large images: {memory_kind(device)} of a fresh process at",
              f"{args.memory_size} px (fp32, 3 steps).", "", "| lever | peak memory | s/iteration |", "|---|---|---|"]
    for name in LEVERS:
        gib, seconds = peak_rss(args.memory_size, name, device)
        section.add(f"| {name} | {gib:.2f} GiB | {seconds:.1f} s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
