"""`make bench-peer`: nst against the PyPI package pastiche on the same pair, size and step count.

pastiche optimizes its own objective; nst can state the same one exactly, so both images are
scored by one function:
    J = 0.01 * mse(F_relu4_2) + sum_l 10 / C_l^2 * mse(G_l / HW)   (pastiche's defaults)
      = nst with alpha = 0.04 (nst's content term is sum / 4CHW), beta = 1, gram_norm: hw,
        style weights 10 / C_l^2, init: content, L-BFGS.
pastiche runs as its command line (wall time of the process). nst runs as a tracked run (Lightning +
MLflow, every step logged); its time to reach pastiche's final J is read off the per-step metric
timestamps, from the moment `execute` was called (image loading and set-up included).
Writes the "Peer" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from mlflow import MlflowClient

from benchmarks.markdown import replace_section
from nst.images import load_image
from nst.module import StyleTransfer
from pipelines.config import RunConfig, run_config
from pipelines.run import execute, quiet_lightning

ROOT = Path(__file__).resolve().parents[1]
CONTENT, STYLE = ROOT / "experiments/images/grace_hopper.jpg", ROOT / "experiments/images/starry_night.jpg"
HEADING = "## Peer: pastiche"
CHANNELS = {"relu1_1": 64, "relu2_1": 128, "relu3_1": 256, "relu4_1": 512, "relu5_1": 512}


def pastiche_objective(size: int, steps: int, **extra: object) -> RunConfig:
    """nst's config for pastiche's default objective (module docstring)."""
    return run_config({
        "content": str(CONTENT), "style": str(STYLE), "size": size, "iterations": steps, "init": "content",
        "alpha": 0.04, "beta": 1.0, "gram_norm": "hw", "snapshots": [0], "checkpoint_every": 0,
        "layers": {"content": ["relu4_2"], "style": {k: 10.0 / c**2 for k, c in CHANNELS.items()}},
        "optimizer": {"name": "lbfgs", "lr": 1.0}, **extra})


def score(config: RunConfig, image_path: Path) -> float:
    """J of an image under `config`'s objective (same targets for every image scored)."""
    content = load_image(config.content, config.size)
    style = load_image(config.style, (content.shape[3], content.shape[2]))  # type: ignore[arg-type]
    init = load_image(image_path, (content.shape[3], content.shape[2]))
    module = StyleTransfer(content, style, config, init01=init)
    with torch.no_grad():
        return float(module.losses()["loss/total"])


def run_pastiche(size: int, steps: int, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "pastiche"), "--content", str(CONTENT), "--styles", str(STYLE),
                    "--output", str(out), "--size", str(size), "--num-steps", str(steps), "--seed", "0",
                    "--no-verbose"], check=True, capture_output=True)
    return time.perf_counter() - start


def run_nst(config: RunConfig, target: float, store: str) -> tuple[float, float | None, int | None, float]:
    """(wall time, seconds to reach J <= target or None, that step, final J) of a tracked run."""
    start = time.time()
    result = execute(config, tracking_uri=store, experiment="peer", progress=False)
    wall = time.time() - start
    history = sorted(MlflowClient(store).get_metric_history(result.run_id, "loss/total"), key=lambda m: m.step)
    reached = next((m for m in history if m.value <= target), None)
    seconds = reached.timestamp / 1000 - start if reached else None
    return wall, seconds, reached.step if reached else None, history[-1].value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench-peer", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    quiet_lightning()
    with tempfile.TemporaryDirectory() as tmp:
        store = f"sqlite:///{tmp}/mlflow.db"
        image = Path(tmp) / "pastiche.png"
        peer_seconds = run_pastiche(args.size, args.steps, image)
        target = score(pastiche_objective(args.size, args.steps), image)
        lines = [HEADING, "",
                 f"Grace Hopper × The Starry Night at {args.size} px, {args.steps} L-BFGS steps, pastiche's default",
                 "objective stated exactly in nst (see benchmarks/peer.py), both images scored by one function.",
                 f"pastiche {args.steps} steps: {peer_seconds:.1f} s wall, final J = {target:.4g}.", "",
                 "| nst setting | wall time | final J | reaches pastiche's J at | time to pastiche's J | "
                 "÷ pastiche's time |", "|---|---|---|---|---|---|"]
        settings = [("fp32, same steps", {}),
                    ("bf16 autocast", {"precision": "bf16"}),
                    (f"bf16, scales [{args.size // 2}, {args.size}], {args.steps // 2} steps each",
                     {"precision": "bf16", "scales": [args.size // 2], "iterations": args.steps // 2})]
        for label, extra in settings:
            wall, seconds, step, final = run_nst(pastiche_objective(args.size, args.steps, **extra), target, store)
            reach = f"step {step}" if step is not None else "not reached"
            ratio = f"{seconds / peer_seconds:.2f}×" if seconds is not None else "—"
            at = f"{seconds:.1f} s" if seconds is not None else "—"
            lines.append(f"| {label} | {wall:.1f} s | {final:.4g} | {reach} | {at} | {ratio} |")
            print(lines[-1], flush=True)
    replace_section(args.out, HEADING, lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
