"""Image-quality measures for comparing runs by what they produce, not by their own loss.

- SSIM (Wang, Bovik, Sheikh, Simoncelli 2004) on luminance: 11x11 Gaussian window, sigma 1.5,
  C1 = (0.01 L)^2, C2 = (0.03 L)^2 with L the dynamic range (1 for 0-1 images).
- Edge correlation: Pearson correlation of the Sobel gradient magnitudes of two images'
  luminance, optionally after averaging `downsample` x `downsample` blocks. 1 means the same
  edges in the same places; it ignores colour, and at a coarse scale (downsample 4) also the
  fine texture and noise a style adds, so it tells whether the content's layout survived.
- Mean absolute pixel change, in 0-255 units.
All take (1, 3, H, W) or (3, H, W) RGB tensors in 0-1 units of the same size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from nst.losses import gram

_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601


def luminance(image01: Tensor) -> Tensor:
    """(1, 1, H, W) luma of an RGB image."""
    image = image01.reshape(-1, 3, *image01.shape[-2:]).float()
    weights = image.new_tensor(_LUMA).view(1, 3, 1, 1)
    return (image * weights).sum(1, keepdim=True)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, size, size)


def ssim(a01: Tensor, b01: Tensor) -> float:
    """Mean SSIM of the luminance of two images (1 = identical)."""
    x, y = luminance(a01), luminance(b01)
    window = _gaussian_window(min(11, *x.shape[-2:]) // 2 * 2 + 1).to(x)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, window)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return float((num / den).mean())


def _edges(image01: Tensor, downsample: int = 1) -> Tensor:
    luma = luminance(image01)
    if downsample > 1:
        luma = F.avg_pool2d(luma, downsample)
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    kernels = torch.stack([sobel, sobel.t()]).unsqueeze(1).to(image01.device)
    grad = F.conv2d(luma, kernels)
    return grad.pow(2).sum(1).sqrt().flatten()


def edge_correlation(a01: Tensor, b01: Tensor, downsample: int = 1) -> float:
    """Pearson correlation of the Sobel edge magnitudes of two images (-1..1)."""
    x, y = _edges(a01, downsample), _edges(b01, downsample)
    x, y = x - x.mean(), y - y.mean()
    denom = (x.norm() * y.norm()).clamp_min(1e-12)
    return float((x * y).sum() / denom)


def mean_abs_change(a01: Tensor, b01: Tensor) -> float:
    """Mean |a - b| over pixels and channels, in 0-255 units."""
    return float((a01.float() - b01.float()).abs().mean() * 255.0)


#: The fixed layers of the style-distance metric: the seed's style layers, equal weights, so the
#: number means the same for every run whatever its own loss reads.
QUALITY_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


def position_grams(vgg: torch.nn.Module, image01: Tensor,
                   layers: tuple[str, ...] = QUALITY_LAYERS) -> dict[str, Tensor]:
    """Gram matrices per position (G / HW) of `layers`: comparable across image sizes."""
    with torch.no_grad():
        feats = vgg(image01, layers)
    return {n: gram(f) / (f.shape[-1] * f.shape[-2]) for n, f in feats.items()}


def gram_distance(grams: dict[str, Tensor], target: dict[str, Tensor]) -> float:
    """Mean over layers of ||G - G_style||_F / ||G_style||_F: 0 when the style statistics match."""
    ratios = [float((grams[n] - t).norm() / t.norm().clamp_min(1e-12)) for n, t in target.items()]
    return sum(ratios) / len(ratios)
