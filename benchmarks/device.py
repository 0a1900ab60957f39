"""Where the benchmarks run: `--device auto|cpu|cuda`, as for runs (`auto`: CUDA when visible).

One script serves both: tensors and the VGG move to the device, timings wait for the device
(CUDA is asynchronous), peak memory is the process's resident memory on the CPU and the
allocator's peak on a GPU, and a GPU run writes its own file so it never overwrites the CPU's.
"""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

import torch

from pipelines.errors import UserError
from pipelines.execution.inputs import resolve_device

ROOT = Path(__file__).resolve().parents[1]


def bench_parser(prog: str, doc: str | None, smoke: str = "toy sizes, seconds; checks the code, not the speed"
                 ) -> argparse.ArgumentParser:
    """A benchmark's arguments: --smoke, --device and --out (a script adds its own)."""
    parser = argparse.ArgumentParser(prog=prog, description=(doc or "").splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help=smoke)
    add_device_argument(parser)
    return parser


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where to run (default auto: CUDA when visible)")
    parser.add_argument("--out", type=Path, help="default BENCHMARKS.md, BENCHMARKS-cuda.md on a GPU")


def pick(parser: argparse.ArgumentParser, args: argparse.Namespace) -> torch.device:
    """The device the arguments ask for, and `args.out` set to its default file;
    a device that is not there ends the script with one line (exit 2)."""
    try:
        device = torch.device(resolve_device(args.device))
    except UserError as error:
        print(f"{parser.prog}: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.out is None:
        args.out = ROOT / ("BENCHMARKS.md" if device.type == "cpu" else f"BENCHMARKS-{device.type}.md")
    return device


def sync(device: torch.device) -> None:
    """Wait for queued kernels, so that a timer read after this has seen them finish."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float:
    """Peak resident memory of this process (CPU) or peak allocated memory of the GPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def memory_kind(device: torch.device) -> str:
    return ("peak GPU memory (torch.cuda.max_memory_allocated)" if device.type == "cuda"
            else "peak resident memory (ru_maxrss)")


def device_name(device: torch.device) -> str:
    """The device in a benchmark's sentence: the GPU's name, or "this CPU"."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "this CPU"


def describe(device: torch.device) -> str:
    """The accelerator in words, for the machine line ('' on the CPU)."""
    if device.type != "cuda":
        return ""
    props = torch.cuda.get_device_properties(device)
    return f", GPU {props.name} ({props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda})"
