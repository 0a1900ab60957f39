"""`nst sheet`: a sweep's final images as a matrix, rows and columns by what the runs vary, each
image captioned with its time and its quality metrics (SSIM to the photo, distance of its style
statistics to the painting's). The recipes' comparison (rows: photo × painting, columns: recipe)
and the gallery's contact sheet (rows: photos, columns: paintings) are both sheets.

Writes `sheet.jpg` (paintings and photos: a JPEG is a tenth of a PNG) and `sheet.md` (the same
numbers as a table) to --out, and with --images each final image as `<row>__<column>.jpg` beside
them. Everything comes from the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from nst.images import to_pil
from pipelines.reports.readback import RunView, SweepView


@dataclass(frozen=True)
class Cell:
    row: str
    col: str
    view: RunView

    @property
    def seconds(self) -> float:
        info = self.view.run.info
        return ((info.end_time or info.start_time) - info.start_time) / 1000

    @property
    def ssim(self) -> float | None:
        return self.view.run.data.metrics.get("quality/ssim_content")

    @property
    def gram(self) -> float | None:
        return self.view.run.data.metrics.get("quality/gram_distance")

    def caption(self) -> str:
        minutes, seconds = divmod(round(self.seconds), 60)
        quality = [f"SSIM {self.ssim:.2f}" if self.ssim is not None else "",
                   f"style {self.gram:.2f}" if self.gram is not None else ""]
        return " · ".join([f"{minutes}:{seconds:02d}", *filter(None, quality)])


def _label(value: str) -> str:
    """A run's value as a label: an image path says which image, not where it lies."""
    return Path(value).stem if "/" in value else value


def cells(sweep: SweepView, rows: list[str], cols: list[str]) -> list[Cell]:
    """One cell per run, labelled by the values of the `rows` and `cols` keys it varies."""
    return [Cell(" × ".join(_label(run.varied.get(k, "?")) for k in rows),
                 " × ".join(_label(run.varied.get(k, "?")) for k in cols), run) for run in sweep.runs]


def _order(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))  # the sweep's order (the experiment file's)


def write_sheet(found: list[Cell], out: Path, title: str, images: bool = False, dpi: int = 80) -> Path:
    """sheet.jpg and sheet.md in `out` (and the images, with `images`); returns sheet.md's path."""
    out.mkdir(parents=True, exist_ok=True)
    row_labels, col_labels = _order([c.row for c in found]), _order([c.col for c in found])
    grid = {(c.row, c.col): c for c in found}
    figure, axes = plt.subplots(len(row_labels), len(col_labels), squeeze=False,
                                figsize=(3.2 * len(col_labels), 3.6 * len(row_labels)))
    for i, row in enumerate(row_labels):
        for j, col in enumerate(col_labels):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if (row, col) in grid:
                cell = grid[(row, col)]
                ax.imshow(to_pil(cell.view.final))  # type: ignore[arg-type]
                ax.set_xlabel(cell.caption(), fontsize=9)
            if i == 0:
                ax.set_title(col, fontsize=10)
            if j == 0:
                ax.set_ylabel(row, fontsize=10)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    figure.savefig(out / "sheet.jpg", dpi=dpi, pil_kwargs={"quality": 88})
    plt.close(figure)
    lines = [f"# {title}", "", "Each cell: wall time of the run · SSIM of the final image to the photo "
             "(`quality/ssim_content`) · distance of its style statistics to the painting's "
             "(`quality/gram_distance`, 0 = the painting's).", "", "![sheet](sheet.jpg)", "",
             "| | " + " | ".join(col_labels) + " |", "|---|" + "---|" * len(col_labels)]
    for row in row_labels:
        lines.append(f"| {row} | " + " | ".join(grid[(row, col)].caption() if (row, col) in grid else "—"
                                                 for col in col_labels) + " |")
    if images:
        for cell in found:
            name = f"{cell.row}__{cell.col}".replace(" × ", "_").replace(" ", "_")
            to_pil(cell.view.final).save(out / f"{name}.jpg", quality=90)  # type: ignore[arg-type]
    path = out / "sheet.md"
    path.write_text("\n".join(lines) + "\n")
    return path
