"""What a user's image path can get wrong before anything is decoded (missing, a directory, empty),
without torch: a command checks its inputs' paths first, and answers a typo at once (nst.images
decodes the files, and checks the same)."""

from __future__ import annotations

from pathlib import Path


class ImageError(ValueError):
    """A user's image file cannot be used; the message names the file and the fix."""


def check_file(path: Path) -> None:
    """ImageError naming `path` and the fix when it is not a non-empty file."""
    if not path.exists():
        raise ImageError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise ImageError(f"{path}: is a directory; give an image file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: the file is empty; give a JPEG/PNG image")
