"""`nst report`: figures, a measurement table and claim verdicts for a sweep, from MLflow.

Writes `report.md`, `slide.png`, `losses.png` and `measurements.csv` to reports/<experiment>/
(or --out) and logs them on the sweep's parent run under `report/`.
"""

from __future__ import annotations

import csv
import datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from nst.quality import edge_correlation, mean_abs_change, ssim
from nst.scales import resize
from pipelines.config import claims as verdicts
from pipelines.errors import UserError
from pipelines.reports.figures import finals_figure, loss_figure, slide_figure
from pipelines.reports.readback import RunView, SweepView, load_sweep
from pipelines.tracking import store

EDGE_SCALE = 4  # coarse edges: the layout a viewer recognizes, not the brush strokes


@dataclass(frozen=True)
class Row:
    run: str
    step: int
    j_content: float | None
    j_style: float | None
    move: float | None
    ssim: float
    edges: float


def measure(run: RunView) -> list[Row]:
    """One row per snapshot (and the final image) of a run."""
    images = dict(sorted(run.snapshots.items()))
    images[run.iterations] = run.final
    start = images.get(0)
    rows = []
    for step, image in images.items():
        # A pyramid's early snapshots are smaller: compare them at their own size.
        content = resize(run.content, tuple(image.shape[-2:]))  # type: ignore[attr-defined, arg-type]
        same_size = start is not None and start.shape == image.shape  # type: ignore[attr-defined]
        rows.append(Row(
            run.name, step,
            run.loss_at("loss/content", step), run.loss_at("loss/style", step),
            mean_abs_change(image, start) if same_size else None,  # type: ignore[arg-type]
            ssim(image, content),  # type: ignore[arg-type]
            edge_correlation(image, content, EDGE_SCALE),  # type: ignore[arg-type]
        ))
    return rows


def _matches(run: RunView, where: dict[str, str]) -> bool:
    def same(a: str, b: str) -> bool:
        try:
            return float(a) == float(b)
        except ValueError:
            return a == b

    return all(k in run.varied and same(run.varied[k], v) for k, v in where.items())


def judge_claims(sweep: SweepView, claims: list[dict] | None = None) -> list[verdicts.Verdict]:
    """Verdicts on `claims` (default: the sweep's own) from the sweep's runs."""
    out = []
    for claim in sweep.spec.get("claims") or [] if claims is None else claims:
        kind, where, step = verdicts.select(claim)
        run = next((r for r in sweep.runs if _matches(r, where)), None)
        label = " ".join(f"{k}={v}" for k, v in where.items())
        if run is None or 0 not in run.snapshots:
            missing = "a FINISHED run with a step-0 snapshot"
            out.append(verdicts.Verdict(kind, label, missing, "no such run", False))
            continue
        at = run.snapshots.get(step, run.final)
        s0, s_end = run.loss_at("loss/style", 0), run.loss_at("loss/style", run.iterations)
        m = verdicts.Measures(
            move=mean_abs_change(at, run.snapshots[0]),  # type: ignore[arg-type]
            step=step if step in run.snapshots else run.iterations,
            style_ratio=(s_end / s0) if s0 and s_end is not None else float("nan"),
            edges=edge_correlation(run.final, run.content, EDGE_SCALE),  # type: ignore[arg-type]
        )
        out.append(verdicts.judge(kind, run.name, m))
    return out


def _fmt(value: float | None, spec: str = ".4g") -> str:
    return "–" if value is None else format(value, spec)


def _table(rows: list[Row]) -> list[str]:
    lines = [
        "| run | step | J_content | J_style | mean abs(x_t − x_0) | SSIM(x_t, content) | edge corr. (1/4 scale) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r.run} | {r.step} | {_fmt(r.j_content)} | {_fmt(r.j_style)} | {_fmt(r.move, '.2f')} "
                     f"| {r.ssim:.3f} | {r.edges:.3f} |")
    return lines


def _verdict_lines(found: list[verdicts.Verdict]) -> list[str]:
    lines = ["| claim | run | criterion (fixed before the run) | measured | verdict |", "|---|---|---|---|---|"]
    lines += [f"| {v.claim} | {v.run} | {v.criterion} | {v.measured} | **{v.label}** |" for v in found]
    return lines


def _contrast(client: MlflowClient, name: str, sweep: SweepView) -> list[str]:
    """The same claims judged on another experiment's latest sweep (e.g. pixels in 0-1)."""
    try:
        other = load_sweep(client, name)
    except UserError:
        return [f"Not run in this store yet: `make experiment CONFIG={name}.yaml`, then report again."]
    lines = [str(other.spec.get("description", "")).strip(), "", f"Sweep `{other.parent.info.run_id}`.", ""]
    lines += _verdict_lines(judge_claims(other, sweep.spec.get("claims")))
    lines += ["", *_table([row for run in other.runs for row in measure(run) if row.step in (0, 2000)])]
    return lines



def _what_varies(runs: Sequence[RunView]) -> str:
    """The varied keys that take more than one value among the runs (a sweep's one seed is no axis)."""
    keys = [k for k in runs[0].varied if len({run.varied[k] for run in runs}) > 1]
    return ", ".join(keys or list(runs[0].varied))


def build_report(client: MlflowClient, experiment: str, out: Path | None = None,
                 parent_id: str | None = None, tracking_uri: str = "", dpi: int = 110,
                 say: Callable[[str], None] = print) -> Path:
    """Build the report of the latest (or the given) sweep of `experiment`; returns report.md. A
    reader who may not write to the store (a signed-in server's read-only user) gets the files here
    and `say`s why the parent run keeps no copy; the points left out (none of their runs FINISHED) are
    `say`d too."""
    sweep = load_sweep(client, experiment, parent_id)
    folder = out or Path("reports") / sweep.experiment
    folder.mkdir(parents=True, exist_ok=True)
    names = ", ".join(r.name for r in sweep.runs)
    # The rows carry the runs' names: a title listing many long ones ran across the whole figure.
    title = f"{sweep.experiment}: {names}" if len(names) <= 100 else f"{sweep.experiment}: {len(sweep.runs)} runs"
    slide_figure(sweep.runs, folder / "slide.png", title, dpi)
    loss_figure(sweep.runs, folder / "losses.png", f"{sweep.experiment}: losses per iteration", dpi)
    finals_figure(sweep.runs, folder / "finals.png", dpi)
    rows = [row for run in sweep.runs for row in measure(run)]
    with open(folder / "measurements.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["run", "step", "J_content", "J_style", "mean_abs_change_255", "ssim_content", "edge_corr_4"])
        writer.writerows([r.run, r.step, r.j_content, r.j_style, r.move, r.ssim, r.edges] for r in rows)

    pid = sweep.parent.info.run_id
    lines = [
        f"# Report: {sweep.experiment}",
        "",
        str(sweep.spec.get("description", "")).strip()
        or f"A sweep varying {_what_varies(sweep.runs)} (its experiment file has no `description:`).",
        "",
        f"Sweep (parent run) `{pid}`, {len(sweep.runs)} finished runs; built "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC from the MLflow store"
        + (f" `{tracking_uri}`" if tracking_uri else "") + " (metrics and image artifacts; nothing re-optimized)."
        + (f" {sweep.left_out()}" if sweep.not_finished else ""),
        "",
        "## The final images",
        "",
        "![finals](finals.png)",
        "",
        "## The runs, snapshot by snapshot",
        "",
        "![slide](slide.png)",
        "",
        "## Losses",
        "",
        "![losses](losses.png)",
        "",
        "## Measurements",
        "",
        "x_t is the image after t updates (x_0 the initial image; the last row of each run is the final image,",
        "whose loss columns show the last logged iteration). Mean abs(x_t − x_0) is in 0–255 units.",
        "SSIM is on luminance; the edge correlation is the Pearson correlation of Sobel edge magnitudes",
        f"of x_t and the content photo after {EDGE_SCALE}×{EDGE_SCALE} averaging: the layout, not the brush strokes.",
        "",
        *_table(rows),
    ]
    found = judge_claims(sweep)
    if found:
        lines += ["", "## Claims", "", verdicts.__doc__.split("\n\n", 1)[1].strip(), "", *_verdict_lines(found)]
        failed = [v for v in found if not v.passed]
        summary = "All claims hold." if not failed else f"{len(failed)} of {len(found)} claims do not hold: " + \
            "; ".join(f"{v.claim} ({v.run}): measured {v.measured}, the criterion needs {v.criterion}"
                      for v in failed) + "."
        lines += ["", summary]
    contrast = sweep.spec.get("contrast")
    if contrast and found:
        lines += ["", f"## Contrast: {contrast}", "", *_contrast(client, str(contrast), sweep)]
    notes = str(sweep.spec.get("notes", "")).strip()
    if notes:
        lines += ["", "## Notes", "", notes]
    (folder / "report.md").write_text("\n".join(lines) + "\n")
    try:
        for name in ("report.md", "slide.png", "losses.png", "finals.png", "measurements.csv"):
            client.log_artifact(pid, str(folder / name), "report")
    except (MlflowException, OSError) as exc:  # requests' errors are OSErrors
        refused = store.denied(tracking_uri or client.tracking_uri, exc)
        if refused is None:
            raise
        say(f"report: not logged on the sweep's parent run, {refused}")
    if sweep.not_finished:  # said where the user looks too, not only in report.md
        say(f"report: {sweep.left_out()}")
    return folder / "report.md"
