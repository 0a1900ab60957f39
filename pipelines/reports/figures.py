"""Report figures: the slide (rows of runs x columns of snapshots) and the loss curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt

from nst.images import to_pil
from pipelines.reports.readback import LOSSES, RunView


def snapshot_columns(runs: list[RunView]) -> list[int]:
    """Snapshot steps to show between the inputs and the final image: every logged step
    but 0 (the init) and the last (shown as 'final')."""
    steps = set.intersection(*(set(r.snapshots) for r in runs)) if runs else set()
    last = min(r.iterations for r in runs) if runs else 0
    return sorted(s for s in steps if 0 < s <= last)


def slide_figure(runs: list[RunView], path: Path, title: str, dpi: int = 110) -> Path:
    """One row per run: content, style, each snapshot, final; labelled like the slide."""
    steps = snapshot_columns(runs)
    columns = ["content", "style", *[f"iteration {s}" for s in steps], "final"]
    height, width = runs[0].final.shape[-2:]  # type: ignore[attr-defined]
    cell = 2.2
    fig, axes = plt.subplots(
        len(runs), len(columns), squeeze=False,
        figsize=(cell * len(columns) * width / height + 0.8, cell * len(runs) + 0.6),
    )
    for row, run in enumerate(runs):
        images = [run.content, run.style, *[run.snapshots[s] for s in steps], run.final]
        for col, image in enumerate(images):
            ax = axes[row][col]
            ax.imshow(to_pil(image))  # type: ignore[arg-type]
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                label = columns[col] if columns[col] != "final" else f"final ({run.iterations})"
                ax.set_title(label, fontsize=10)
            if col == 0:
                ax.set_ylabel(run.name, fontsize=10)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def loss_figure(runs: list[RunView], path: Path, title: str, dpi: int = 110) -> Path:
    """Total, content and style loss against iteration, log scale, one line per run."""
    fig, axes = plt.subplots(1, len(LOSSES), figsize=(5 * len(LOSSES), 3.8))
    for ax, key in zip(axes, LOSSES, strict=True):
        for run in runs:
            series = sorted(run.history.get(key, {}).items())
            if series:
                ax.plot([s for s, _ in series], [v for _, v in series], label=run.name, linewidth=1.3)
        ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_title(key.replace("loss/", "J_") if key != "loss/total" else "J (total)")
        ax.grid(True, which="both", alpha=0.25)
    axes[0].legend(fontsize=9)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def finals_figure(runs: list[RunView], path: Path, dpi: int = 110) -> Path:
    """The final images side by side, one per run, titled with the run's name."""
    height, width = runs[0].final.shape[-2:]  # type: ignore[attr-defined]
    cell = 2.0
    fig, axes = plt.subplots(1, len(runs), squeeze=False, figsize=(cell * len(runs) * width / height, cell + 0.4))
    for ax, run in zip(axes[0], runs, strict=True):
        ax.imshow(to_pil(run.final))  # type: ignore[arg-type]
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(run.name.removesuffix(" seed=0"), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
