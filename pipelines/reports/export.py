"""`nst run --out FILE`: the run's final image, from the store, saved where the user asked, in the
format its name says (.png, .jpg, .webp, .tif, …). The run's own final.png stays in the store.

The path is checked before the run starts (a format Pillow cannot write, a folder, one of the run's
input images, a folder nst cannot write into: one line, exit 2, nothing run), and the file is written
whole or not at all: into a temporary file beside it, then renamed over it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.errors import UserError

if TYPE_CHECKING:
    from mlflow import MlflowClient

# Pillow's JPEG defaults (quality 75, colour at half resolution) blur the strokes and smear the colours a
# style transfer is made of: at 95 with full-resolution colour, a stylized crop was 2.5 of 255 off on
# average against 3.8 with half-resolution colour (1.5x the bytes).
JPEG = {"quality": 95, "subsampling": 0}


def _format(path: Path) -> str:
    """Pillow's format for the file name's suffix, or UserError naming the common ones."""
    from PIL import Image

    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        what = f"no image format Pillow writes ends in {path.suffix!r}" if path.suffix else "no suffix names its format"
        raise UserError(f"--out {path}: {what}; give a name ending in .png, .jpg, .webp or .tif")
    return fmt


def check_out(path: Path, inputs: Iterable[str]) -> Path:
    """The absolute path to write, after checking it can be written, before the run starts."""
    path = path.expanduser().absolute()
    if path.is_dir():
        raise UserError(f"--out {path}: is a folder; give a file name in it, e.g. {path / 'stylized.png'}")
    _format(path)
    if path.exists() and any(path.resolve() == Path(i).resolve() for i in inputs):
        raise UserError(f"--out {path}: is one of the run's input images; give another file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {path}: cannot create its folder ({exc.strerror}); give another path") from None
    if not os.access(path.parent, os.W_OK):
        raise UserError(f"--out {path}: cannot write into {path.parent}; give another path")
    return path


def save_final(client: MlflowClient, run_id: str, path: Path) -> Path:
    """Write run `run_id`'s final.png to `path`, in the format its suffix names."""
    from PIL import Image

    fmt = _format(path)
    with tempfile.TemporaryDirectory() as folder:
        local = client.download_artifacts(run_id, "final.png", folder)
        with Image.open(local) as image:
            rgb = image.convert("RGB")
    options = JPEG if fmt == "JPEG" else {"quality": JPEG["quality"]} if fmt == "WEBP" else {}
    # Beside it, so the rename stays on one file system; created as any new file is (the umask's mode).
    temporary = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        rgb.save(temporary, fmt, **options)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path
