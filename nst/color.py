"""Colour control (Gatys, Bethge, Hertzmann, Shechtman, "Controlling Perceptual Factors in
Neural Style Transfer", CVPR 2017), on (1, 3, H, W) RGB tensors in 0-1 units.

- luminance-only transfer: optimize grey images made of the luminance Y of YIQ (the style's Y
  shifted and scaled to the content's mean and spread), then give the result the content's
  chroma (I, Q): the colours stay the photo's, the strokes become the painting's;
- colour matching: an affine map of the style's pixels onto the content's mean and covariance
  (x' = A (x - mu_s) + mu_c with A = C_c^1/2 C_s^-1/2), applied before optimizing.
"""

from __future__ import annotations

import torch
from torch import Tensor

# NTSC 1953 YIQ, the space Gatys et al. 2017 use.
RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def rgb_to_yiq(image01: Tensor) -> Tensor:
    return torch.einsum("ij,bjhw->bihw", RGB_TO_YIQ.to(image01), image01)


def yiq_to_rgb(yiq: Tensor) -> Tensor:
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(RGB_TO_YIQ).to(yiq), yiq)


def grey(image01: Tensor) -> Tensor:
    """The image's luminance Y in all three channels."""
    return rgb_to_yiq(image01)[:, :1].expand(-1, 3, -1, -1).contiguous()


def match_luminance(style01: Tensor, content01: Tensor) -> Tensor:
    """Grey style whose luminance has the content's mean and standard deviation."""
    ys, yc = rgb_to_yiq(style01)[:, :1], rgb_to_yiq(content01)[:, :1]
    matched = (ys - ys.mean()) / ys.std().clamp_min(1e-6) * yc.std() + yc.mean()
    return matched.clamp(0, 1).expand(-1, 3, -1, -1).contiguous()


def with_chroma(generated01: Tensor, content01: Tensor) -> Tensor:
    """The generated images' luminance with the content's chroma (the same size; content (1, 3, H, W))."""
    yiq = rgb_to_yiq(content01).expand(generated01.shape[0], -1, -1, -1).clone()
    yiq[:, :1] = rgb_to_yiq(generated01)[:, :1]
    return yiq_to_rgb(yiq).clamp(0, 1)


def _sqrt_matrix(cov: Tensor, inverse: bool = False) -> Tensor:
    values, vectors = torch.linalg.eigh(cov)
    values = values.clamp_min(1e-8)
    power = -0.5 if inverse else 0.5
    return vectors @ torch.diag(values**power) @ vectors.T


def match_color(style01: Tensor, content01: Tensor) -> Tensor:
    """The style image with its colours mapped onto the content's mean and covariance."""
    s = style01.reshape(3, -1).double()
    c = content01.reshape(3, -1).double()
    mu_s, mu_c = s.mean(1, keepdim=True), c.mean(1, keepdim=True)
    eye = 1e-5 * torch.eye(3, dtype=torch.float64, device=s.device)
    cov_s = torch.cov(s) + eye
    cov_c = torch.cov(c) + eye
    transform = _sqrt_matrix(cov_c) @ _sqrt_matrix(cov_s, inverse=True)
    matched = transform @ (s - mu_s) + mu_c
    return matched.reshape(style01.shape).to(style01.dtype).clamp(0, 1)
