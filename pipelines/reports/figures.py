"""Report figures: the slide (rows of runs x columns of snapshots) and the loss curves."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt

from nst.images import to_pil
from pipelines.reports.readback import LOSSES, RunView

FINALS_PER_ROW = 4  # the finals figure's images per row: a grid of 8 runs in one row left each a thumbnail


def _wrap(text: str, inches: float, fontsize: float) -> str:
    """`text` broken at spaces into lines that fit `inches` at `fontsize` (a character ~0.65 em wide, with
    room to spare): a run's name (`preserve_color=luminance style_loss=w2 lr=0.5 seed=0`) by a small image."""
    return textwrap.fill(text, width=max(10, int(inches * 72 / (fontsize * 0.65))), break_on_hyphens=False)


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
                ax.set_ylabel(_wrap(run.name, cell, 10), fontsize=10)
    title = _wrap(title, fig.get_size_inches()[0], 12)
    # The title 0.1 inch below the top and its own room under it, in inches: tight_layout's share of a
    # tall figure (8 runs) was too small for it, and it sat on the column titles.
    inches = fig.get_size_inches()[1]
    fig.suptitle(title, fontsize=12, y=1 - 0.1 / inches, va="top")
    top = 0.05 + 0.2 * (title.count("\n") + 1)  # tight_layout pads it further
    fig.tight_layout(rect=(0, 0, 1, 1 - top / inches))
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
    # Below the plots, not over the first: long run names in a legend inside it hid its curves.
    handles, labels = axes[0].get_legend_handles_labels()
    columns = min(3, len(labels)) or 1
    rows = math.ceil(len(labels) / columns)
    fig.set_size_inches(5 * len(LOSSES), 3.8 + 0.22 * rows)
    fig.legend(handles, labels, loc="lower center", ncol=columns, fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout(rect=(0, 0.22 * rows / (3.8 + 0.22 * rows), 1, 1))
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def finals_figure(runs: list[RunView], path: Path, dpi: int = 110) -> Path:
    """The final images, FINALS_PER_ROW to a row, one per run, titled with the run's name."""
    height, width = runs[0].final.shape[-2:]  # type: ignore[attr-defined]
    cell = 2.0
    cols = min(FINALS_PER_ROW, len(runs))
    rows = math.ceil(len(runs) / cols)
    names = [_wrap(run.name.removesuffix(" seed=0"), cell * width / height, 9) for run in runs]
    lines = max(name.count("\n") + 1 for name in names)
    fig, axes = plt.subplots(rows, cols, squeeze=False,
                             figsize=(cell * cols * width / height, (cell + 0.2 + 0.16 * lines) * rows))
    for ax in axes.flat[len(runs):]:
        ax.axis("off")
    for ax, run, name in zip(axes.flat, runs, names, strict=False):
        ax.imshow(to_pil(run.final))  # type: ignore[arg-type]
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(name, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
