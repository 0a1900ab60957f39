"""Image decoding: every Pillow mode works; every bad file is one clear ImageError."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nst.images import ImageError, fit_long_side, load_image, save_image


def _gradient(width: int = 60, height: int = 40) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], -1).astype(np.uint8), "RGB")


def test_long_side_resize_keeps_aspect_ratio(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    _gradient(60, 40).save(path)
    image = load_image(path, 30)
    assert image.shape == (1, 3, 20, 30)
    assert 0 <= image.min() and image.max() <= 1
    assert load_image(path, (24, 18)).shape == (1, 3, 18, 24)
    assert fit_long_side(40, 60, 30) == (20, 30)


@pytest.mark.parametrize("mode", ["RGBA", "P", "L", "LA", "CMYK", "I;16", "1"])
def test_every_common_mode_loads_as_rgb(tmp_path: Path, mode: str) -> None:
    rgb = _gradient()
    if mode == "I;16":
        image = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
        assert image.mode == "I;16"
    else:
        image = rgb.convert(mode)
    path = tmp_path / ("a.tif" if mode == "CMYK" else "a.png")
    image.save(path)
    tensor = load_image(path, 60)
    assert tensor.shape == (1, 3, 40, 60) and tensor.dtype == torch.float32
    if mode == "I;16":  # 16-bit is scaled to 0-1, not clipped at 255
        gray = np.asarray(rgb.convert("L"), dtype=np.float32) / 255
        assert np.abs(tensor[0, 0].numpy() - gray).max() < 2 / 255


def test_alpha_is_composited_on_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    image.save(tmp_path / "clear.png")
    assert load_image(tmp_path / "clear.png", 32).min() == 1.0


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = _gradient(60, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_image(tmp_path / "rotated.jpg", 60).shape == (1, 3, 60, 40)


def test_save_round_trip(tmp_path: Path) -> None:
    image = load_image(_save(_gradient(), tmp_path / "a.png"), 60)
    back = load_image(save_image(image, tmp_path / "b.png"), 60)
    assert (back - image).abs().max() <= 1 / 255 + 1e-6


def _save(image: Image.Image, path: Path) -> Path:
    image.save(path)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p, "no such file"),
        (lambda p: (p.mkdir(), p)[1], "is a directory"),
        (lambda p: (p.write_bytes(b""), p)[1], "empty"),
        (lambda p: (p.write_text("hello, not a picture"), p)[1], "not an image"),
        (lambda p: (p.write_bytes(_jpeg_bytes()[:300]), p)[1], "corrupt or truncated"),
        (lambda p: _save(Image.new("RGB", (1, 1)), p), "too small"),
    ],
    ids=["missing", "directory", "empty", "text-as-jpg", "truncated", "1x1"],
)
def test_bad_files_give_one_clear_error(tmp_path: Path, make, message: str) -> None:
    path = make(tmp_path / "photo.jpg")
    with pytest.raises(ImageError, match=message) as info:
        load_image(path, 64)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_decompression_bomb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("nst.images.MAX_PIXELS", 1000)
    path = _save(_gradient(60, 40), tmp_path / "big.png")  # 2400 px > 1000
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(path, 32)


def _jpeg_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    _gradient(200, 200).save(buffer, "JPEG")
    return buffer.getvalue()
