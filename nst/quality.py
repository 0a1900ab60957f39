"""Image-quality measures for comparing runs by what they produce, not by their own loss.

- SSIM (Wang, Bovik, Sheikh, Simoncelli 2004) on luminance, by torchmetrics: 11x11 Gaussian window,
  sigma 1.5, C1 = (0.01 L)^2, C2 = (0.03 L)^2 with L the dynamic range (1 for 0-1 images).
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
from torchmetrics.functional.image import structural_similarity_index_measure

from nst.losses import gram

_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601


def luminance(image01: Tensor) -> Tensor:
    """(1, 1, H, W) luma of an RGB image."""
    image = image01.reshape(-1, 3, *image01.shape[-2:]).float()
    weights = image.new_tensor(_LUMA).view(1, 3, 1, 1)
    return (image * weights).sum(1, keepdim=True)


#: The Gaussian window's standard deviation; torchmetrics sizes the window from it: 11 x 11.
SSIM_SIGMA = 1.5
_SSIM_HALF = int(3.5 * SSIM_SIGMA + 0.5)  # the window's half-width (torchmetrics' rule)


def ssim(a01: Tensor, b01: Tensor) -> float:
    """Mean SSIM of the luminance of two images (1 = identical): torchmetrics' SSIM map, averaged over the
    windows that lie inside the image, as Wang et al.'s reference code filters ("valid"). torchmetrics'
    own mean also counts the border it pads by reflection: 0.02 lower on a noisy 128 px photo, while
    this mean is the one nst measured with before it used torchmetrics (within 4e-7). Images need 11 px
    a side (nst's are 16 or more)."""
    x, y = luminance(a01), luminance(b01)
    if min(x.shape[-2:]) <= 2 * _SSIM_HALF:
        raise ValueError(f"SSIM needs images of at least {2 * _SSIM_HALF + 1} px a side, got {tuple(x.shape[-2:])}")
    _, full = structural_similarity_index_measure(x, y, sigma=SSIM_SIGMA, data_range=1.0, k1=0.01, k2=0.03,
                                                  return_full_image=True)
    return float(full[..., _SSIM_HALF:-_SSIM_HALF, _SSIM_HALF:-_SSIM_HALF].mean())


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
