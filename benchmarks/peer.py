"""`make bench-peer`: nst against the PyPI package pastiche on the same pair, size and step count.

pastiche optimizes its own objective; nst states the same one:
    J = 0.01 * mse(F_relu4_2) + sum_l 10 / C_l^2 * mse(G_l / HW)   (pastiche's defaults)
      = nst with alpha = 0.04 (nst's content term is sum / 4CHW), beta = 1, gram_norm: hw,
        style weights 10 / C_l^2, init: content, L-BFGS, the style image sized as pastiche sizes it
        (the content's pixel count, its own aspect ratio).
Both start from the content photo. The two tools resize images differently (bilinear against
Lanczos), so their J at step 0 differ by some percent; "pastiche's final loss" is therefore taken as
the fraction of its own starting J it reached (as pastiche prints them), and nst's time to reach it
is the time until nst's J falls to the same fraction of nst's starting J.
pastiche runs as its command line (wall time of the process). nst runs as a tracked run (Lightning +
MLflow, every step logged); its time is read off the per-step metric timestamps, from the moment
`execute` was called (image loading and set-up included). Writes "Peer" in BENCHMARKS.md
(BENCHMARKS-cuda.md on a GPU, where both tools run on it: `--device`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient

from benchmarks.bench import require_finished
from benchmarks.device import add_device_argument, pick
from benchmarks.markdown import Section
from pipelines.config.runs import RunConfig, run_config
from pipelines.execution.run import execute, quiet_lightning

ROOT = Path(__file__).resolve().parents[1]
CONTENT, STYLE = ROOT / "experiments/images/grace_hopper.jpg", ROOT / "experiments/images/starry_night.jpg"
HEADING = "## Peer: pastiche"
CHANNELS = {"relu1_1": 64, "relu2_1": 128, "relu3_1": 256, "relu4_1": 512, "relu5_1": 512}


def _pastiche_style_scale(size: int) -> float:
    """pastiche resizes the style to the content's pixel count, keeping the style's aspect ratio."""
    from PIL import Image

    cw, ch = Image.open(CONTENT).size
    content_w, content_h = (size, round(size * ch / cw)) if cw >= ch else (round(size * cw / ch), size)
    sw, sh = Image.open(STYLE).size
    h = round((content_w * content_h * sh / sw) ** 0.5)
    return max(h, round(sw / sh * h)) / size


def pastiche_objective(size: int, steps: int, **extra: object) -> RunConfig:
    """nst's config for pastiche's default objective (module docstring)."""
    return run_config({
        "content": str(CONTENT), "style": str(STYLE), "size": size, "iterations": steps, "init": "content",
        "style_scale": _pastiche_style_scale(size),
        "alpha": 0.04, "beta": 1.0, "gram_norm": "hw", "snapshots": [0], "checkpoint_every": 0,
        "layers": {"content": ["relu4_2"], "style": {k: 10.0 / c**2 for k, c in CHANNELS.items()}},
        "optimizer": {"name": "lbfgs", "lr": 1.0}, **extra})


def run_pastiche(size: int, steps: int, out: Path, device: str) -> tuple[float, float, float]:
    """(wall time, J at step 0, J at the last step) as pastiche prints them."""
    start = time.perf_counter()
    done = subprocess.run([str(Path(sys.executable).parent / "pastiche"), "--content", str(CONTENT), "--styles",
                           str(STYLE), "--output", str(out), "--size", str(size), "--num-steps", str(steps),
                           "--seed", "0", "--info-step", str(steps), "--device", device],
                          check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    rows = [line.split() for line in done.stdout.splitlines() + done.stderr.splitlines()]
    losses = {int(r[0]): float(r[2]) for r in rows if len(r) == 3 and r[0].isdigit()}
    return seconds, losses[0], losses[steps]


def run_nst(config: RunConfig, fraction: float, start_loss: float | None, store: str,
            steps: int) -> dict[str, float | None]:
    """A tracked run; when J (at the full size: a pyramid's last scale) first falls to `fraction` of
    `start_loss` (default: this run's own J at step 0), and how long that took."""
    start = time.time()
    result = require_finished(execute(config, tracking_uri=store, experiment="peer", progress=False),
                              f"nst at {config.size} px ({config.precision})")
    wall = time.time() - start
    history = sorted(MlflowClient(store).get_metric_history(result.run_id, "loss/total"), key=lambda m: m.step)
    start_loss = start_loss or history[0].value
    full_size_from = config.iterations * (len(config.sizes) - 1)
    reached = next((m for m in history if m.step >= full_size_from and m.value <= fraction * start_loss), None)
    at_steps = history[min(steps, len(history)) - 1]
    return {"wall": wall, "start": history[0].value, "same_steps": at_steps.timestamp / 1000 - start,
            "final": at_steps.value / start_loss,
            "seconds": reached.timestamp / 1000 - start if reached else None,
            "step": reached.step if reached else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench-peer", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=100)
    add_device_argument(parser)
    args = parser.parse_args(argv)
    device = pick(parser, args).type
    quiet_lightning()
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{tmp}/mlflow.db"
        image = Path(tmp) / "pastiche.png"
        peer_seconds, peer_first, peer_last = run_pastiche(args.size, args.steps, image, device)
        fraction = peer_last / peer_first
        section = Section(args.out, [HEADING, "",
                 f"Grace Hopper × The Starry Night at {args.size} px, {args.steps} L-BFGS steps from the photo,",
                 "pastiche's default objective stated in nst (benchmarks/peer.py says how, and why J is",
                 "compared as a fraction of each tool's own starting J).",
                 f"pastiche: {peer_seconds:.1f} s wall, J {peer_first:.4g} → {peer_last:.4g} "
                 f"({fraction:.2e} of the start).", "",
                 f"| nst setting | time for {args.steps} steps | J ÷ J(0) at step {args.steps} | reaches pastiche's "
                 "fraction at | time to it | ÷ pastiche's time |", "|---|---|---|---|---|---|"])
        # nst may run past pastiche's step count (1.5x) so that "time to reach" is defined when both
        # descend at the same rate per step; "same steps" reads the time at pastiche's last step.
        more = args.steps * 3 // 2
        settings = [("fp32", {"precision": "fp32", "iterations": more}),
                    ("bf16 autocast", {"precision": "bf16", "iterations": more}),
                    (f"bf16, scales [{args.size // 2}, {args.size}], up to {args.steps} steps each",
                     {"precision": "bf16", "scales": [args.size // 2], "iterations": args.steps}),
                    (f"bf16, scales [{args.size // 4}, {args.size // 2}, {args.size}], up to {args.steps} steps each",
                     {"precision": "bf16", "scales": [args.size // 4, args.size // 2], "iterations": args.steps})]
        start_loss = None  # J(0) at the full size, from the first run: every setting starts from the photo
        for label, extra in settings:
            config = pastiche_objective(args.size, args.steps, device=device, **extra)
            got = run_nst(config, fraction, start_loss, store, args.steps)
            start_loss = start_loss or got["start"]
            seconds, step = got["seconds"], got["step"]
            reach = f"step {step}" if step is not None else "not reached"
            ratio = f"{seconds / peer_seconds:.2f}×" if seconds is not None else "—"
            at = f"{seconds:.1f} s" if seconds is not None else "—"
            section.add(f"| {label} | {got['same_steps']:.1f} s | {got['final']:.2e} | {reach} | {at} | {ratio} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
