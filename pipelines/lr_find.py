"""`nst lr-find`: short, low-resolution probes over a log range of learning rates, one MLflow sweep.

The rule (fixed before any measurement, the same words as the report's claims):
1. run every lr in the range for the same few steps at a low resolution (default 64 px, 60 steps);
2. a probe *keeps the content* when its final image's coarse edge correlation with the photo
   (Sobel magnitudes at 1/4 scale, pipelines.config.claims) is >= 0.5, the threshold below which the
   `loses_content` claim holds;
3. among the probes that keep the content and did not diverge, find the one with the lowest J after
   the probe's steps — the lr that lowers J fastest while keeping the content — and recommend the
   probe one step below it. The fastest probe sits at the edge of stability of a 60-step run; a real
   run is ten times longer and keeps eroding the content there (measured: docs/lr_find/check.md, where
   the first version of this rule, without the step down, was 3.3x off on one of two pairs).
When no probe keeps the content, the smallest lr is recommended with that warning.
"""

from __future__ import annotations

import json
import math
import shlex
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from mlflow import MlflowClient

from nst.images import load_image
from nst.quality import edge_correlation
from pipelines.config.claims import EDGE_KEPT
from pipelines.config.grid import load_experiment
from pipelines.execution.run import FINISHED
from pipelines.execution.sweep import SKIPPED, run_experiment

EDGE_SCALE = 4


@dataclass(frozen=True)
class Probe:
    lr: float
    status: str
    loss: float | None  # J after the probe's steps
    drop: float | None  # J(end) / J(0)
    edges: float | None  # coarse edge correlation of the final image with the content

    @property
    def keeps_content(self) -> bool:
        return self.edges is not None and self.edges >= EDGE_KEPT


def log_range(low: float, high: float, points: int) -> list[float]:
    """`points` learning rates evenly spaced in log from `low` to `high`, 2 significant digits."""
    if points == 1:
        return [low]
    ratio = (high / low) ** (1 / (points - 1))
    return [float(f"{low * ratio**i:.2g}") for i in range(points)]


def _kept(probes: list[Probe]) -> list[Probe]:
    finished = [p for p in probes if p.status == FINISHED and p.loss is not None and math.isfinite(p.loss)]
    return [p for p in finished if p.keeps_content]


def fastest_keeping_content(probes: list[Probe]) -> Probe | None:
    """The run with the lowest J among those that keep the content (none if none does)."""
    kept = _kept(probes)
    return min(kept, key=lambda p: p.loss) if kept else None  # type: ignore[arg-type, return-value]


def recommend(probes: list[Probe]) -> tuple[Probe, str]:
    """The rule of this module's docstring; returns the probe and why it was chosen."""
    kept = _kept(probes)
    fastest = fastest_keeping_content(probes)
    if fastest is not None:
        below = [p for p in kept if p.lr < fastest.lr]
        if not below:
            return fastest, f"the fastest probe that keeps the content (edge corr. >= {EDGE_KEPT}) is the smallest lr"
        return max(below, key=lambda p: p.lr), (
            f"one probe below lr {fastest.lr:g}, the fastest of the {len(kept)} probes that keep the content "
            f"(edge corr. >= {EDGE_KEPT}): a full run is longer and erodes the content at the fastest")
    fallback = min(probes, key=lambda p: p.lr)
    return fallback, "no probe kept the content; the smallest lr is the safest start — try a lower range"


def experiment_yaml(name: str, base: dict[str, Any], lrs: list[float]) -> str:
    spec = {"name": name,
            "description": f"lr finder: {len(lrs)} probes from lr {lrs[0]:g} to {lrs[-1]:g} (pipelines/lr_find.py)",
            "base": base, "grid": {"optimizer.lr": lrs}}
    return yaml.safe_dump(spec, sort_keys=False)


def _probe(client: MlflowClient, run_id: str, lr: float, status: str, content_path: str, size: int) -> Probe:
    if status not in (FINISHED, SKIPPED):
        return Probe(lr, status, None, None, None)
    history = sorted(client.get_metric_history(run_id, "loss/total"), key=lambda m: m.step)
    with tempfile.TemporaryDirectory() as tmp:
        final = load_image(client.download_artifacts(run_id, "final.png", tmp), size)
    content = load_image(content_path, (final.shape[3], final.shape[2]))
    edges = edge_correlation(final, content, EDGE_SCALE)
    first, last = history[0].value, history[-1].value
    return Probe(lr, FINISHED, last, last / first if first else None, edges)


def find_lr(base: dict[str, Any], lrs: list[float], *, tracking_uri: str, name: str = "lr_find",
            say: Callable[[str], None] = print) -> tuple[list[Probe], Probe, str, str]:
    """Run the probes as one sweep; returns (probes, recommended, why, parent run id). The probes vary
    Adam's lr on the seed's formulation unless `base` names another preset: the default recipe is
    L-BFGS, which has no lr to find (probes of it diverge from lr 2.2 up)."""
    base = {"preset": "seed", **base}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.yaml"
        path.write_text(experiment_yaml(name, base, lrs))
        experiment = load_experiment(path)
        sweep = run_experiment(experiment, tracking_uri=tracking_uri, progress=False, say=say)
    client = MlflowClient(tracking_uri)
    probes = [_probe(client, result.run_id, point.config.optimizer.lr, result.status, point.config.content,
                     point.config.size) for point, result in sweep.results]
    best, why = recommend(probes)
    client.set_tag(sweep.parent_run_id, "nst.lr_find.recommended", f"{best.lr:g}")
    return probes, best, why, sweep.parent_run_id


def run_command(content: str, styles: list[str], overrides: dict[str, Any], lr: float) -> str:
    """The arguments of the `nst run` that uses the recommended lr on the formulation the probes ran: the seed's Adam
    unless --set named another preset. (`--set optimizer.lr=…` alone would give it to the default recipe's
    L-BFGS, whose probes diverge from lr 2.2 up.)"""
    keys = {k: v for k, v in overrides.items() if k not in ("preset", "optimizer.lr")}
    words = ["run", "--content", content, *(w for s in styles for w in ("--style", s)),
             "--preset", str(overrides.get("preset", "seed"))]
    for key, value in {**keys, "optimizer.lr": f"{lr:g}"}.items():
        # --set reads YAML, and JSON is YAML: lists, numbers and booleans come back as given.
        words += ["--set", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
    return shlex.join(words)


def ascii_plot(probes: list[Probe], best: Probe, width: int = 40, mark: str = "recommended",
               what: str = "J after probe") -> str:
    """J after the probe against lr, as bars on a log scale (shorter is lower), one row per lr."""
    losses = [p.loss for p in probes if p.loss is not None and p.loss > 0 and math.isfinite(p.loss)]
    low, high = (math.log10(min(losses)), math.log10(max(losses))) if losses else (0.0, 1.0)
    span = (high - low) or 1.0
    rows = [f"{'lr':>8}  {what + ' (log scale)':<{width}}  {'J':>10}  edges  content"]
    for p in probes:
        if p.loss is None or not math.isfinite(p.loss) or p.loss <= 0:
            rows.append(f"{p.lr:>8g}  {'(' + p.status.lower() + ')':<{width}}")
            continue
        bar = "#" * max(1, round((math.log10(p.loss) - low) / span * (width - 1)) + 1)
        content = "kept" if p.keeps_content else "LOST"
        star = f"  <- {mark}" if p is best else ""
        rows.append(f"{p.lr:>8g}  {bar:<{width}}  {p.loss:>10.3g}  {p.edges:5.2f}  {content}{star}")
    return "\n".join(rows)


def plot(probes: list[Probe], best: Probe, path: Path) -> Path:
    """J after the probe and the edge correlation against lr (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [p for p in probes if p.loss is not None and math.isfinite(p.loss)]
    fig, left = plt.subplots(figsize=(6, 3.6), dpi=100)
    left.loglog([p.lr for p in done], [p.loss for p in done], "o-", color="tab:blue", label="J after probe")
    left.set_xlabel("learning rate")
    left.set_ylabel("J after the probe", color="tab:blue")
    right = left.twinx()
    right.semilogx([p.lr for p in done], [p.edges for p in done], "s--", color="tab:orange", label="edge corr.")
    right.axhline(EDGE_KEPT, color="tab:orange", lw=0.8, ls=":")
    right.set_ylabel("coarse edge corr. with the photo", color="tab:orange")
    left.axvline(best.lr, color="black", lw=1)
    left.set_title(f"lr finder: recommended lr = {best.lr:g}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
