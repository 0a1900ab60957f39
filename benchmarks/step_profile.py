"""`python -m benchmarks.step_profile`: where a batched step's time goes, operator by operator.

torch.profiler over a few steps of the bare batched loop (benchmarks.loops.batch_loop's step: the
losses, backward, per-image Adam, clamp) for a launch-bound batch (3 × 128 px) and an
arithmetic-bound one (8 × 512 px on a GPU, 3 × 128 px only on the CPU). For each: the wall time of a
step, the time the device spent running kernels (its share of the wall: far below 100% means the
host's launches set the pace, and a CUDA graph pays), and the operators that take the most device
time (each kernel counted once, under the operator that launched it); then each case again under
each switch worth weighing (TF32 matmuls for the Gram matrices, cuDNN autotuning, the
images in channels-last too, PyTorch's NCHW layout instead of nst's NHWC weights, and fp32 instead of
bf16 where bf16 is the default: the other precision `auto` could pick, and the Gram matrices from fp32
copies of bf16 maps, as before nst took them from the maps on a GPU). With each case, its floor
(benchmarks.floor): the bytes and FLOPs of its kernels at this device's copy bandwidth and matmul peak.
It says which lever is worth building against the 512 px target before anyone builds one, and whether
any kernel choice can reach it. Writes "Where a step's time goes" in
BENCHMARKS.md (BENCHMARKS-cuda.md on a GPU: `--device`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.bench import matmul_peak, matmul_size
from benchmarks.device import bench_parser, device_name, pick, sync
from benchmarks.floor import copy_bandwidth, step_floor
from benchmarks.loops import bare_step, point_configs
from benchmarks.markdown import Section
from nst import losses
from nst.precision import resolve_precision

HEADING = "## Where a step's time goes"
TOP = 10  # operators listed per case


@contextmanager
def _flag(owner: object, name: str, value: bool) -> Iterator[None]:
    saved = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, saved)


#: Switches worth weighing for an arithmetic-bound step, each timed against the default on the last case:
#: a setting held while it runs, what the step is built with (bare_step's keywords), and its points'
#: config keys.
VARIANTS: dict[str, tuple[Callable[[], AbstractContextManager[None]], dict[str, Any], dict[str, Any]]] = {
    # The Gram matrices are fp32 matmuls (their inputs are bf16 features under autocast, exact in TF32);
    # torch runs fp32 matmuls without TF32 by default, and its convolutions with it.
    "TF32 matmuls (`torch.backends.cuda.matmul.allow_tf32`)": (
        lambda: _flag(torch.backends.cuda.matmul, "allow_tf32", True), {}, {}),
    "cuDNN autotuning (`torch.backends.cudnn.benchmark`)": (
        lambda: _flag(torch.backends.cudnn, "benchmark", True), {}, {}),
    # nst's VGG weights are NHWC (chosen on a CPU), so its activations are; the images stay NCHW. Tensor cores
    # take bf16 convolutions in NHWC, where NCHW would have cuDNN transpose around them: both ways weighed.
    "channels-last images too (`torch.channels_last`)": (nullcontext, {"memory_format": torch.channels_last}, {}),
    "NCHW weights and images (PyTorch's default layout)": (
        nullcontext, {"memory_format": torch.contiguous_format}, {}),
    # `auto` is bf16 on a GPU; cuDNN runs fp32 convolutions in TF32 by default. On an H100 one 512 px image
    # stepped in 5.0 ms in fp32 against 6.8 ms in bf16 (BENCHMARKS-cuda.md, "Precision"): weighed in a batch.
    "fp32 (`precision: fp32`)": (nullcontext, {}, {"precision": "fp32"}),
    "fp32 and TF32 matmuls": (
        lambda: _flag(torch.backends.cuda.matmul, "allow_tf32", True), {}, {"precision": "fp32"}),
    # On a GPU a bf16 map's Gram is a bf16 product summed in fp32 (nst.losses); before, an fp32 copy's.
    "the Gram from an fp32 copy of each bf16 map (before; the CPU's way)": (
        lambda: _flag(losses, "BF16_PRODUCTS_ON_CUDA", False), {}, {}),
}


def profile_step(b: int, size: int, steps: int, device: torch.device, step_keys: dict[str, Any] | None = None,
                 config_keys: dict[str, Any] | None = None) -> tuple[float, float, list[tuple[str, float]], float]:
    """(wall s/step, device busy s/step, [(operator, its device s/step)] most first, final J summed over
    the images) of the bare batched step (built with `step_keys`, bare_step's, over b points with
    `config_keys`): `steps` timed, then `steps` more profiled."""
    step = bare_step(point_configs(b, **(config_keys or {})), size, device, **(step_keys or {}))

    for _ in range(3):  # lazy initialization and cuDNN's first choices, outside the measurements
        step()
    sync(device)
    start = time.perf_counter()  # the wall time without the profiler, which slows each launch
    for _ in range(steps):
        loss = step()
    sync(device)
    wall = (time.perf_counter() - start) / steps
    gpu = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if gpu else [])]) as prof:
        for _ in range(steps):
            step()
        sync(device)
    # Self time: each kernel (or, on the CPU, each op's own work) counted once, under the op that ran it.
    ops = [(e.key, (e.self_device_time_total if gpu else e.self_cpu_time_total) / 1e6 / steps)
           for e in prof.key_averages() if e.key.startswith("aten::")]
    ops = sorted((op for op in ops if op[1] > 0), key=lambda op: -op[1])
    return wall, sum(t for _, t in ops), ops, float(loss)


def _peak(device: torch.device, smoke: bool) -> tuple[str, float]:
    """(what, FLOP/s) of the matmul peak at the default precision (fp32 on a GPU: through TF32, as cuDNN's
    convolutions run it)."""
    n = matmul_size(device, smoke)
    if resolve_precision("auto", device.type) == "bf16":
        return "bf16", matmul_peak(torch.bfloat16, n, device) * 1e9
    tf32 = device.type == "cuda"
    return "TF32" if tf32 else "fp32", matmul_peak(torch.float32, n, device, tf32=tf32) * 1e9


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("step-profile", __doc__, smoke="a toy size: checks the code, not the numbers")
    args = parser.parse_args(argv)
    device = pick(parser, args)
    gpu = device.type == "cuda"
    cases = [(2, 32)] if args.smoke else [(3, 128), (8, 512)] if gpu else [(3, 128)]
    name = device_name(device)
    section = Section(args.out, [HEADING, "",
             f"`python -m benchmarks.step_profile` on {name}, default precision "
             f"({resolve_precision('auto', device.type)}): torch.profiler over the bare batched step (losses,",
             "backward, per-image Adam, clamp). Busy: the time the device ran kernels (on the CPU: the operators'",
             "own time), per step; its share of the wall time below 100% is time the device waited for the host.",
             "Each operator's share is of the busy time, its kernels counted once.", ""])
    steps = 2 if args.smoke else 10
    with profile(activities=[ProfilerActivity.CPU]):  # the profiler's own start-up, once, outside the numbers
        torch.ones(1).add_(1)
    bandwidth, (kind, peak) = copy_bandwidth(device), _peak(device, args.smoke)
    for b, size in cases:
        wall, busy, ops, loss = profile_step(b, size, steps, device)
        section.add(f"**{b} × {size} px**: {wall * 1000:.2f} ms a step, busy {busy * 1000:.2f} ms "
                    f"({busy / wall:.0%} of the wall).", "", "| operator | per step | share of busy |", "|---|---|---|",
                    *(f"| `{op}` | {t * 1000:.3f} ms | {t / busy:.1%} |" for op, t in ops[:TOP]), "")
        floor = step_floor(b, size, device)
        moving, computing = floor.seconds(bandwidth, peak)
        heaviest = ", ".join(f"`{op}` {n / 1e9:.2f}" for op, n in floor.heaviest[:4])
        section.add(f"Its floor, op by op (benchmarks.floor): {floor.kernels} kernels reading and writing "
                    f"{floor.bytes / 1e9:.2f} GB (most: {heaviest} GB) and {floor.flops / 1e9:.1f} GFLOP a step. "
                    f"At this device's copy bandwidth ({bandwidth / 1e9:.0f} GB/s) and {kind} matmul peak "
                    f"({peak / 1e12:.1f} TFLOP/s): {moving * 1000:.2f} ms moving + {computing * 1000:.2f} ms computing "
                    f"= {(moving + computing) * 1000:.2f} ms a step, {(moving + computing) / b * 1000:.2f} ms an "
                    f"image, against {wall / b * 1000:.2f} ms an image measured.", "")
        # Weighed in each case: a launch-bound step (3 × 128 px) and an arithmetic-bound one (8 × 512 px)
        # may want different settings. On an H100 the bare 3 × 128 px step took 4.37 ms in fp32 against 5.91
        # in bf16 op by op (BENCHMARKS-cuda.md, "CUDA graphs"), one 512 px image 5.0 against 6.8 ms.
        section.lines += [f"Switches at {b} × {size} px, each alone (the same steps; final J against the default's):",
                          "", "| switch | a step | busy | final-J difference |", "|---|---|---|---|",
                          f"| none (the default) | {wall * 1000:.2f} ms | {busy * 1000:.2f} ms | — |"]
        for label, (switch, step_keys, config_keys) in VARIANTS.items():
            with switch():
                v_wall, v_busy, _, v_loss = profile_step(b, size, steps, device, step_keys, config_keys)
            section.add(f"| {label} | {v_wall * 1000:.2f} ms | {v_busy * 1000:.2f} ms | "
                        f"{abs(v_loss / loss - 1):.1e} |")
        section.add("")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
