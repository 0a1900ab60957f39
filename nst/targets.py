"""What the losses compare against, and where the image starts.

The backbone cut after the deepest layer the losses read; the content features and the
blended style Gram targets at one scale of the pyramid; the starting image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from nst.config import TransferConfig
from nst.layers import LAYER_INDEX
from nst.losses import W2Target, feature_moments, gram, w2_target
from nst.scales import resize, resize_long_side
from nst.vgg import VGGFeatures, load_vgg19


def deepest_layer(config: TransferConfig) -> str:
    return max([*config.layers.content, *config.layers.style], key=LAYER_INDEX.__getitem__)


def build_backbone(config: TransferConfig) -> VGGFeatures:
    """The VGG-19 for this config, cut after the deepest layer its losses read."""
    b = config.backbone
    return load_vgg19(b.weights, b.pooling, deepest_layer(config), b.convention)


@dataclass(frozen=True)
class Targets:
    content01: Tensor  # the content photo at this scale
    features: dict[str, Tensor]  # content layer -> its activations (fp32)
    grams: dict[str, Tensor]  # style layer -> the blended Gram target (style_loss: gram)
    w2: dict[str, W2Target]  # style layer -> the blended Gaussian (style_loss: w2)


def scale_targets(vgg: VGGFeatures, content_full: Tensor, styles_full: Sequence[Tensor], blend: Sequence[float],
                  size: int, content_layers: Sequence[str], style_layers: Sequence[str],
                  style_loss: str = "gram") -> Targets:
    """The targets at long side `size`: content resized to it, each style resized by the same
    factor, their Grams (or, for W2, their features' means and raw second moments) blended by `blend`."""
    content = resize_long_side(content_full, size)
    factor = size / max(content_full.shape[-2:])
    with torch.no_grad():
        both = vgg(content, [*content_layers, *style_layers])
        positions = {n: both[n].shape[-1] * both[n].shape[-2] for n in style_layers}
        grams: dict[str, Tensor] = {}
        moments: dict[str, tuple[Tensor, Tensor]] = {}
        for weight, full in zip(blend, styles_full, strict=True):
            style = resize(full, (max(16, round(full.shape[-2] * factor)), max(16, round(full.shape[-1] * factor))))
            for name, f in vgg(style, style_layers).items():
                if style_loss == "w2":  # per-position averages: no size correction needed
                    mean, raw = feature_moments(f)
                    old_mean, old_raw = moments.get(name, (0.0, 0.0))
                    moments[name] = (old_mean + weight * mean[0], old_raw + weight * raw[0])
                    continue
                g = gram(f)
                if f.shape[-1] * f.shape[-2] != positions[name]:
                    # An unnormalized Gram sums over positions: bring a style image of
                    # another size to the generated image's count, so J_style compares like with like.
                    g = g * (positions[name] / (f.shape[-1] * f.shape[-2]))
                grams[name] = grams[name] + weight * g if name in grams else weight * g
    w2 = {name: w2_target(mean, raw) for name, (mean, raw) in moments.items()}
    return Targets(content, {n: both[n].float() for n in content_layers}, grams, w2)


def initial_image(config: TransferConfig, content01: Tensor, mean01: Tensor, init01: Tensor | None) -> Tensor:
    """The starting image in 0-1 units, on `content01`'s device.

    content+noise (the seed): mean + r * U(-R, R) + (1 - r) * (content - mean), with the
    backbone's mean pixel, r = noise_ratio and R = noise_range / 255; "noise" is r = 1,
    "content" is r = 0; a file is used as it is. Computed on the CPU whatever the device: the same
    seed gives the same bits on a CPU and a GPU (a GPU fuses the multiply-adds, measured 1 ulp apart).
    """
    if init01 is not None:
        return init01.clone()
    if config.init == "content":
        return content01.clone()
    ratio = 1.0 if config.init == "noise" else config.noise_ratio
    generator = torch.Generator().manual_seed(config.seed)
    content, mean = content01.cpu(), mean01.cpu()
    noise = (torch.rand(content.shape, generator=generator) * 2 - 1) * (config.noise_range / 255.0)
    image = mean + ratio * noise + (1 - ratio) * (content - mean)
    return image.clamp(0, 1).to(content01.device)
