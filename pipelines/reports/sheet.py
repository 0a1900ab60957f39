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
from pipelines.errors import UserError
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
        # round(...) + 0.0: a value just below zero reads 0.00, not -0.00.
        quality = [f"SSIM {round(self.ssim, 2) + 0.0:.2f}" if self.ssim is not None else "",
                   f"style {round(self.gram, 2) + 0.0:.2f}" if self.gram is not None else ""]
        return " · ".join([f"{minutes}:{seconds:02d}", *filter(None, quality)])


def _label(key: str, value: str) -> str:
    """A run's value as a label: an image path says which image, not where it lies; a variant's name
    says itself; any other value says whose it is, as the run's name does (`lr=0.1`, `style_loss=w2`)."""
    if "/" in value:
        return Path(value).stem
    if key == "variant":
        return value
    try:
        value = f"{float(value):g}"
    except ValueError:
        pass
    return f"{key.rsplit('.', 1)[-1]}={value}"


def layout(sweep: SweepView, rows: list[str] | None, cols: list[str] | None) -> tuple[list[str], list[str]]:
    """The varied keys down the rows and across the columns. Given keys may be short (`lr` for
    `optimizer.lr`) and must be ones the sweep varies. Not given: photos down and paintings across, and
    every other key with more than one value among the runs on one side or the other (the first one
    down when nothing else is), so that every run gets a cell of its own."""
    keys = list(sweep.runs[0].varied)
    varying = [k for k in keys if len({run.varied.get(k) for run in sweep.runs}) > 1]

    def full(key: str, option: str) -> str:
        found = [k for k in keys if k == key or k.endswith(f".{key}")]
        if len(found) != 1:
            raise UserError(f"{option} {key}: not a key this sweep varies; it varies {', '.join(keys) or 'nothing'}")
        return found[0]

    given_rows = [full(k, "--rows") for k in rows] if rows is not None else None
    given_cols = [full(k, "--cols") for k in cols] if cols is not None else None
    if given_rows is not None and given_cols is not None:
        return given_rows, given_cols
    if given_rows is not None or given_cols is not None:  # the other side: every varying key left
        taken = set(given_rows or given_cols or [])
        rest = [k for k in varying if k not in taken]
        return (given_rows, rest) if given_rows is not None else (rest, given_cols or [])
    down = [k for k in ("content",) if k in varying]
    across = [k for k in ("style",) if k in varying]
    others = [k for k in varying if k not in ("content", "style")]
    for i, key in enumerate(others):
        (down if not down and (across or i < len(others) - 1) else across).append(key)
    return down, across


def cells(sweep: SweepView, rows: list[str] | None = None, cols: list[str] | None = None) -> list[Cell]:
    """One cell per run, labelled by the values of the `rows` and `cols` keys (`layout`); two runs
    that would share a cell are refused, naming what tells them apart."""
    rows, cols = layout(sweep, rows, cols)
    found: dict[tuple[str, str], Cell] = {}
    for run in sweep.runs:
        cell = Cell(" × ".join(_label(k, run.varied.get(k, "?")) for k in rows),
                    " × ".join(_label(k, run.varied.get(k, "?")) for k in cols), run)
        other = found.setdefault((cell.row, cell.col), cell).view
        if other is not run:
            apart = [k for k in run.varied if run.varied[k] != other.varied.get(k)]
            raise UserError(f"runs {other.name!r} and {run.name!r} would share a cell: add "
                            f"{', '.join(apart)} to --rows or --cols")
    return list(found.values())


def _order(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))  # the sweep's order (the experiment file's)


CELL_INCHES = 3.2  # a cell's width; its height follows its row's images
LABEL_INCHES = 0.4  # a cell's caption and a column's title
TITLE_INCHES = 0.5


def _aspect(cell: Cell) -> float:
    """Height over width of the cell's final image."""
    height, width = cell.view.final.shape[-2:]  # type: ignore[attr-defined]
    return height / width


def write_sheet(found: list[Cell], out: Path, title: str, images: bool = False, dpi: int = 80, left_out: str = ""
                ) -> Path:
    """sheet.jpg and sheet.md in `out` (and the images, with `images`); returns sheet.md's path. `left_out`:
    the sentence naming the points with no FINISHED run (SweepView.left_out), said under the table."""
    out.mkdir(parents=True, exist_ok=True)
    row_labels, col_labels = _order([c.row for c in found]), _order([c.col for c in found])
    grid = {(c.row, c.col): c for c in found}
    # Each row as tall as its tallest image is at the cells' width: a landscape photo's row is shorter
    # than a portrait's (rows of one height left landscape rows in white space twice their images' height).
    tall = [max((_aspect(grid[(row, col)]) for col in col_labels if (row, col) in grid), default=1.0)
            for row in row_labels]
    figure, axes = plt.subplots(len(row_labels), len(col_labels), squeeze=False,
                                figsize=(CELL_INCHES * len(col_labels),
                                         sum(CELL_INCHES * t + LABEL_INCHES for t in tall) + TITLE_INCHES),
                                gridspec_kw={"height_ratios": [CELL_INCHES * t + LABEL_INCHES for t in tall]})
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
    if left_out:
        lines += ["", left_out]
    if images:
        for cell in found:
            name = f"{cell.row}__{cell.col}".replace(" × ", "_").replace(" ", "_")
            to_pil(cell.view.final).save(out / f"{name}.jpg", quality=90)  # type: ignore[arg-type]
    path = out / "sheet.md"
    path.write_text("\n".join(lines) + "\n")
    return path
