"""Losses of neural style transfer (Gatys, Ecker, Bethge, "Image Style Transfer Using
Convolutional Neural Networks", CVPR 2016), as pure functions of feature maps.

Notation: a feature map of one layer has n_C channels and n_H x n_W positions; F is it
reshaped to n_C x (n_H*n_W). The default normalizations are the seed's (DESIGN.md):

    J_content = sum_l  sum (a_C[l] - a_G[l])^2 / (4 * n_H * n_W * n_C)
    G         = F F^T                                    (Gram matrix, n_C x n_C)
    J_style   = sum_l  w_l * sum (G_S[l] - G_G[l])^2 / (4 * n_C^2 * (n_H*n_W)^2)
    TV        = mean over pixels of |dx|^p + |dy|^p,  p = 2 (l2) or 1 (l1), image in 0-1 units
    J         = alpha * J_content + beta * J_style + gamma * TV

Gram matrices and losses are computed in fp32 even when the backbone runs in bf16:
sums of n_H*n_W products lose too many bits in bf16. Every loss is one number per image of a
batch, (B,): the images of a batch are separate runs, each with its own weights (scalars or (B,)).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

Features = Mapping[str, Tensor]
Weight = float | Tensor  # one weight for the batch, or one per image, (B,)


def gram(features: Tensor) -> Tensor:
    """Unnormalized Gram matrix F F^T of a (B, C, H, W) map, in fp32: shape (B, C, C)."""
    b, c, h, w = features.shape
    # (B, HW, C) is a view of a channels_last map (the layout of nst's VGG), so no copy is made.
    flat = features.permute(0, 2, 3, 1).reshape(b, h * w, c).float()
    return flat.transpose(1, 2) @ flat


def content_layer_loss(generated: Tensor, target: Tensor) -> Tensor:
    """sum (a_C - a_G)^2 / (4 n_H n_W n_C) for one layer, per image: (B,)."""
    _, c, h, w = generated.shape
    # Summed over dims, not flattened: a channels_last map would be copied to flatten.
    return (generated.float() - target.float()).pow(2).sum(dim=(1, 2, 3)) / (4.0 * h * w * c)


def style_layer_loss(generated: Tensor, target_gram: Tensor, norm: str = "seed") -> Tensor:
    """sum (G_S - G_G)^2 / (4 n_C^2 (n_H n_W)^2) for one layer, per image: (B,); target_gram is G_S.

    `norm` "hw": mean((dG / HW)^2), 4x the seed's; "chw": mean((dG / (C HW))^2), 4/C^2 x it."""
    _, c, h, w = generated.shape
    factor = {"seed": 4.0 * c**2 * (h * w) ** 2, "hw": float(c**2 * (h * w) ** 2), "chw": float(c**4 * (h * w) ** 2)}
    return (gram(generated) - target_gram).pow(2).sum(dim=(1, 2)) / factor[norm]


def total_variation(image01: Tensor, kind: str = "l2") -> Tensor:
    """Mean total variation of each image of a (B, 3, H, W) batch in 0-1 units: (B,); kind "l2" or "l1"."""
    dx = image01[..., :, 1:] - image01[..., :, :-1]
    dy = image01[..., 1:, :] - image01[..., :-1, :]
    dims = (1, 2, 3)
    if kind == "l1":
        return dx.abs().mean(dim=dims) + dy.abs().mean(dim=dims)
    return dx.pow(2).mean(dim=dims) + dy.pow(2).mean(dim=dims)


def style_transfer_losses(
    features: Features,
    content_targets: Features,
    style_grams: Features,
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
    content = sum((content_layer_loss(features[n], t) for n, t in content_targets.items()), zero)
    per_layer = {n: style_layer_loss(features[n], g, gram_norm) for n, g in style_grams.items()}
    style = sum((style_weights[n] * v for n, v in per_layer.items()), zero)
    if isinstance(gamma, Tensor):  # per image: the images whose gamma is 0 log a TV of 0
        tv = torch.where(gamma != 0, total_variation(image01.float(), tv_kind), zero)
    else:
        tv = total_variation(image01.float(), tv_kind) if gamma else zero
    total = alpha * content + beta * style + gamma * tv
    losses = {"loss/total": total, "loss/content": content, "loss/style": style, "loss/tv": tv}
    losses.update({f"loss/style/{n}": v for n, v in per_layer.items()})
    return losses
