"""Losses of neural style transfer (Gatys, Ecker, Bethge, "Image Style Transfer Using
Convolutional Neural Networks", CVPR 2016), as pure functions of feature maps.

Notation: a feature map of one layer has n_C channels and n_H x n_W positions; F is it
reshaped to n_C x (n_H*n_W). The default normalizations are the seed's (DESIGN.md):

    J_content = sum_l  sum (a_C[l] - a_G[l])^2 / (4 * n_H * n_W * n_C)
    G         = F F^T                                    (Gram matrix, n_C x n_C)
    J_style   = sum_l  w_l * sum (G_S[l] - G_G[l])^2 / (4 * n_C^2 * (n_H*n_W)^2)
    TV        = mean over pixels of |dx|^p + |dy|^p,  p = 2 (l2) or 1 (l1), image in 0-1 units
    J         = alpha * J_content + beta * J_style + gamma * TV

`style_loss: w2` replaces each layer's Gram term by the Wasserstein-2 distance between Gaussians
fitted to the generated and the style features (their means and covariances; as in
crowsonkb/style-transfer-pytorch), per channel:

    W2^2 / n_C = ( |mu_G - mu_S|^2 + tr(S_G) + tr(S_S) - 2 tr( (S_S^1/2 S_G S_S^1/2)^1/2 ) ) / n_C

The Gram loss matches second moments only; W2 matches the mean and the covariance as a distance
between distributions, which weighs a layer's channels evenly and does not grow with a layer's scale.

Gram matrices and losses are computed in fp32 even when the backbone runs in bf16:
sums of n_H*n_W products lose too many bits in bf16. On a CUDA GPU a bf16 map's Gram is one bf16
product on the tensor cores summed into fp32 (bmm's `out_dtype`), the same sums as an fp32 copy
of the map would give (a bf16 times a bf16 is exact in fp32); elsewhere the map is copied to fp32.
Every loss is one number per image of a batch, (B,): the images of a batch are separate runs, each
with its own weights (scalars or (B,)).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

Features = Mapping[str, Tensor]
Weight = float | Tensor  # one weight for the batch, or one per image, (B,)


#: Whether a bf16 map's Gram on a CUDA GPU is taken from the map as it is (`gram`), where the GPU can
#: (`_sums_bf16_into_fp32`). Without it, the map is copied to fp32 first: per 512 px image and step that
#: copy, its gradient's and the fp32 product's reads move 0.54 of the 2.74 GB an op-by-op step moves, and
#: the fp32 products (15.5 GFLOP, no tensor cores) take ~0.3 ms on an H100 (`benchmarks.step_profile`'s
#: floor; its switches weigh this one).
BF16_PRODUCTS_ON_CUDA = True


@functools.cache
def _sums_bf16_into_fp32(device: torch.device) -> bool:
    """Whether `device` multiplies bf16 matrices into fp32 sums (bmm's `out_dtype`: torch >= 2.8, CUDA and
    XPU only): tried once, on a product as small as can be, with a transposed operand as `gram`'s."""
    try:
        x = torch.ones(1, 2, 2, dtype=torch.bfloat16, device=device)
        return torch.bmm(x.transpose(1, 2), x, out_dtype=torch.float32).dtype == torch.float32
    except (RuntimeError, TypeError, NotImplementedError):
        return False


class _SelfProduct(torch.autograd.Function):
    """X^T X of a batch of (N, C) matrices, with a backward of one product: dL/dX = X (dG + dG^T).
    Autograd's own backward of `X.transpose(1, 2) @ X` takes one product per operand, both X here,
    and adds them: half again the forward's multiply-adds, and a sum the size of X. The Gram matrices'
    products were 30% of a step of 3 images at 128 px on this CPU (`make bench-profile`).

    X in bf16 (on a CUDA GPU only, `gram`): G is summed in fp32 (out_dtype), and dL/dX is bf16 like X,
    from dG + dG^T rounded to bf16 (measured on the CPU, emulated: J within 4.2e-4 of the fp32
    product's after 600 steps of 3 images at 96 px, 1.2e-3 after 200 at 64 px; bf16 against fp32
    differs by 0.5-0.8%)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        if x.dtype != torch.bfloat16:
            return x.transpose(1, 2) @ x
        return torch.bmm(x.transpose(1, 2), x, out_dtype=torch.float32)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return x @ (grad + grad.transpose(1, 2)).to(x.dtype)


def self_product(x: Tensor) -> Tensor:
    """X^T X for (B, N, C) -> (B, C, C) (_SelfProduct)."""
    return _SelfProduct.apply(x)


def gram(features: Tensor) -> Tensor:
    """Unnormalized Gram matrix F F^T of a (B, C, H, W) map, in fp32: shape (B, C, C)."""
    b, c, h, w = features.shape
    # (B, HW, C) is a view of a channels_last map (the layout of nst's VGG), so no copy is made.
    flat = features.permute(0, 2, 3, 1).reshape(b, h * w, c)
    if not (flat.dtype == torch.bfloat16 and flat.is_cuda and BF16_PRODUCTS_ON_CUDA
            and _sums_bf16_into_fp32(flat.device)):
        flat = flat.float()
    return self_product(flat)


def squared_error(a: Tensor, b: Tensor) -> Tensor:
    """sum (a - b)^2 over all but the first dim, per image: (B,); `b` broadcast to `a` (a target of one).
    mse_loss's elementwise squares take one kernel forward and one backward, where a difference and its
    power took two and three: the same bits ((a - b)(a - b), and 2 (a - b) times the gradient), in fewer
    launches, which is what a small step on a GPU pays for (benchmarks.floor counts them)."""
    # Summed over dims, not flattened: a channels_last map would be copied to flatten.
    return F.mse_loss(a, b.expand_as(a), reduction="none").sum(dim=tuple(range(1, a.dim())))


def content_layer_loss(generated: Tensor, target: Tensor) -> Tensor:
    """sum (a_C - a_G)^2 / (4 n_H n_W n_C) for one layer, per image: (B,)."""
    _, c, h, w = generated.shape
    return squared_error(generated.float(), target.float()) / (4.0 * h * w * c)


def style_layer_loss(generated: Tensor, target_gram: Tensor, norm: str = "seed") -> Tensor:
    """sum (G_S - G_G)^2 / (4 n_C^2 (n_H n_W)^2) for one layer, per image: (B,); target_gram is G_S.

    `norm` "hw": mean((dG / HW)^2), 4x the seed's; "chw": mean((dG / (C HW))^2), 4/C^2 x it."""
    _, c, h, w = generated.shape
    factor = {"seed": 4.0 * c**2 * (h * w) ** 2, "hw": float(c**2 * (h * w) ** 2), "chw": float(c**4 * (h * w) ** 2)}
    return squared_error(gram(generated), target_gram) / factor[norm]


class W2Target(NamedTuple):
    """A style layer's Gaussian: the mean (C,), the covariance (C, C) and its square root."""

    mean: Tensor
    cov: Tensor
    cov_sqrt: Tensor


COV_EPS = 1e-4  # added to each covariance's diagonal: square roots of near-singular matrices stay finite


def feature_moments(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (B, C) and second raw moment E[f f^T] (B, C, C) of a (B, C, H, W) map's features over its
    positions, in fp32. Raw moments of several images blend linearly (a covariance does not)."""
    b, c, h, w = features.shape
    flat = features.permute(0, 2, 3, 1).reshape(b, h * w, c).float()  # a view of a channels_last map
    return flat.mean(1), self_product(flat) / (h * w)


def sqrtm(matrix: Tensor) -> Tensor:
    """The square root of a symmetric positive semi-definite matrix (or a batch of them)."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(0).sqrt().unsqueeze(-2)) @ vectors.transpose(-1, -2)


def w2_target(mean: Tensor, raw_moment: Tensor) -> W2Target:
    """The W2 target of a style layer from its (blended) mean and second raw moment."""
    eye = torch.eye(mean.shape[-1], device=mean.device, dtype=mean.dtype)
    cov = raw_moment - mean.unsqueeze(-1) * mean.unsqueeze(-2) + COV_EPS * eye
    return W2Target(mean, cov, sqrtm(cov))


def w2_layer_loss(generated: Tensor, target: W2Target) -> Tensor:
    """W2^2 between Gaussians fitted to the generated and the style features, per channel: (B,)."""
    mean, raw = feature_moments(generated)
    c = mean.shape[-1]
    eye = torch.eye(c, device=mean.device, dtype=mean.dtype)
    cov = raw - mean.unsqueeze(-1) * mean.unsqueeze(-2) + COV_EPS * eye
    # tr(sqrtm(M)) is the sum of the square roots of M's eigenvalues: no matrix square root needed here.
    cross = target.cov_sqrt @ cov @ target.cov_sqrt
    roots = torch.linalg.eigvalsh(cross).clamp_min(COV_EPS**2).sqrt().sum(-1)
    traces = cov.diagonal(dim1=-2, dim2=-1).sum(-1) + target.cov.diagonal().sum()
    return ((mean - target.mean).pow(2).sum(-1) + traces - 2 * roots) / c


def style_layer_term(generated: Tensor, target: Tensor | W2Target, norm: str = "seed") -> Tensor:
    """One style layer's term, per image: the Gram loss against a Gram target, W2 against a W2 target."""
    if isinstance(target, W2Target):
        return w2_layer_loss(generated, target)
    return style_layer_loss(generated, target, norm)


def total_variation(image01: Tensor, kind: str = "l2") -> Tensor:
    """Mean total variation of each image of a (B, 3, H, W) batch in 0-1 units: (B,); kind "l2" or "l1"."""
    dx = image01[..., :, 1:] - image01[..., :, :-1]
    dy = image01[..., 1:, :] - image01[..., :-1, :]
    dims = (1, 2, 3)
    if kind == "l1":
        return dx.abs().mean(dim=dims) + dy.abs().mean(dim=dims)
    return dx.pow(2).mean(dim=dims) + dy.pow(2).mean(dim=dims)


def _sum(terms: Iterable[Tensor], empty: Tensor) -> Tensor:
    """The terms added up from the first (`empty` for none)."""
    total: Tensor | None = None
    for term in terms:
        total = term if total is None else total + term
    return empty if total is None else total


def style_transfer_losses(
    features: Features,
    content_targets: Features,
    style_targets: Mapping[str, Tensor | W2Target],
    style_weights: Mapping[str, Weight],
    image01: Tensor,
    alpha: Weight,
    beta: Weight,
    gamma: Weight,
    tv_kind: str = "l2",
    gram_norm: str = "seed",
) -> dict[str, Tensor]:
    """All losses of one iteration, keyed by their MLflow metric names.

    Returns `loss/total`, `loss/content`, `loss/style`, `loss/tv` and `loss/style/<layer>`
    (the unweighted per-layer term, before w_l and beta), all fp32, one value per image: (B,).
    `loss/tv` is 0 for an image whose gamma is 0, as it would be alone.
    """
    zero = image01.new_zeros(image01.shape[0], dtype=torch.float32)
    # Sums start from their first term, not from zero, and a TV weighed 0 is not added: the same bits
    # (0 + x is x), fewer kernels for a small step on a GPU to launch.
    content = _sum((content_layer_loss(features[n], t) for n, t in content_targets.items()), zero)
    per_layer = {n: style_layer_term(features[n], t, gram_norm) for n, t in style_targets.items()}
    style = _sum((style_weights[n] * v for n, v in per_layer.items()), zero)
    total = alpha * content + beta * style
    if isinstance(gamma, Tensor):  # per image: the images whose gamma is 0 log a TV of 0
        tv = torch.where(gamma != 0, total_variation(image01.float(), tv_kind), zero)
        total = total + gamma * tv
    elif gamma:
        tv = total_variation(image01.float(), tv_kind)
        total = total + gamma * tv
    else:
        tv = zero
    losses = {"loss/total": total, "loss/content": content, "loss/style": style, "loss/tv": tv}
    losses.update({f"loss/style/{n}": v for n, v in per_layer.items()})
    return losses
