"""Image files in and out: decode any Pillow-readable file to an RGB tensor in 0-1 units,
resize by the long side, and write tensors back as PNG.

Everything a user's file can get wrong (missing, a directory, empty, truncated, not an
image, too many pixels, too small) becomes one `ImageError` naming the file and the fix.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from nst.files import ImageError, check_file

#: Smallest side, in px, after resizing: relu5_1 sits behind four 2x poolings (16 px -> 1 px).
MIN_SIDE = 16
#: Decoded-pixel bound against decompression bombs (Pillow warns at 89 Mpx by default).
MAX_PIXELS = 64_000_000


def _open(path: Path) -> Image.Image:
    check_file(path)
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(
            f"{path}: more than {MAX_PIXELS:,} pixels (decompression bomb guard); downscale it first"
        ) from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image Pillow can read; give a JPEG/PNG image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: corrupt or truncated image ({exc}); re-export the file") from None
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB of any mode: alpha is composited on white, 16-bit and float scaled, not clipped."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16"):
            top = 65535.0
        elif image.mode == "I":
            top = 65535.0 if array.max() > 255 else 255.0
        else:  # float images have no fixed white point: scale by their maximum
            top = max(float(array.max()), 1.0)
        image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode in ("P", "PA", "LA", "RGBA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(canvas, rgba)
    return image.convert("RGB")


def fit_long_side(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) scaled so the longer side is `size`, aspect ratio kept."""
    scale = size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def load_image(path: str | Path, size: int | tuple[int, int]) -> Tensor:
    """Read `path` as a (1, 3, H, W) float tensor in 0-1 units.

    `size` is the long side in px (aspect ratio kept) or an exact (width, height).
    """
    path = Path(path)
    image = _to_rgb(_open(path))
    target = size if isinstance(size, tuple) else fit_long_side(*image.size, size)
    if min(image.size) < MIN_SIDE:
        raise ImageError(
            f"{path}: {image.size[0]}x{image.size[1]} px is too small to carry content or style; "
            f"give an image at least {MIN_SIDE} px a side"
        )
    if min(target) < MIN_SIDE:
        raise ImageError(
            f"{path}: {image.size[0]}x{image.size[1]} px becomes {target[0]}x{target[1]} at this size; "
            f"VGG-19 needs at least {MIN_SIDE} px a side: use a larger image or size"
        )
    if target != image.size:
        image = image.resize(target, Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def to_pil(image01: Tensor) -> Image.Image:
    """A (1, 3, H, W) or (3, H, W) tensor in 0-1 units as an 8-bit RGB Pillow image."""
    chw = image01.detach().float().cpu().reshape(-1, *image01.shape[-2:]).clamp(0, 1)
    pixels = (chw.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def save_image(image01: Tensor, path: str | Path) -> Path:
    """Write a 0-1 tensor as PNG; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(image01).save(path, "PNG")
    return path
