"""Quality metrics logged with each snapshot, so runs compare by what they produce:

- `quality/ssim_content`: SSIM of the image's luminance to the content photo's (1 = the photo);
- `quality/gram_distance`: distance of its style statistics to the style image(s)' on a fixed
  layer set (nst.quality.QUALITY_LAYERS, Caffe VGG-19, max pooling), blended as the run blends.
Both ignore the run's own loss settings (layers, weights, normalization, colour mode).

The probe works on whatever device the image it is given lies on: its network and targets follow
the image when it is called (the Trainer moves the module to a GPU after the probe is built).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from nst.config import blend_weights
from nst.module import StyleTransfer
from nst.quality import QUALITY_LAYERS, gram_distance, position_grams, ssim
from nst.scales import resize
from nst.vgg import VGGFeatures, load_vgg19
from pipelines.config.runs import RunConfig

Probe = Callable[[Tensor], list[dict[str, float]]]  # images (n, 3, H, W) -> each one's metrics
SSIM_KEY = "quality/ssim_content"  # logged at every snapshot a probe measured: a resume looks for it


def _quality_vgg(module: StyleTransfer, config: RunConfig) -> VGGFeatures:
    """The run's own VGG when it is the metric's network; otherwise the metric's, loaded once."""
    b = config.backbone
    if (b.weights, b.pooling, b.convention) == ("caffe", "max", None) and QUALITY_LAYERS[-1] in module.vgg.names:
        return module.vgg
    return load_vgg19("caffe", "max", QUALITY_LAYERS[-1])


def quality_probe(module: StyleTransfer, content01: Tensor, styles01: list[Tensor], config: RunConfig) -> Probe:
    vgg = _quality_vgg(module, config)
    weights = blend_weights(config.style_blend, len(styles01))
    targets: dict[torch.device, dict[str, Tensor]] = {}  # style Grams, computed once per device

    def style_target(device: torch.device) -> dict[str, Tensor]:
        if device not in targets:
            target: dict[str, Tensor] = {}
            for weight, style in zip(weights, styles01, strict=True):
                for name, g in position_grams(vgg, style.to(device)).items():
                    target[name] = target[name] + weight * g if name in target else weight * g
            targets[device] = target
        return targets[device]

    def probe(images01: Tensor) -> list[dict[str, float]]:
        """The metrics of each image of a batch: one VGG pass for all of them."""
        images01 = images01.detach()
        vgg.to(images01.device)  # a no-op once there (the run's own VGG already is)
        content = resize(content01.to(images01.device), tuple(images01.shape[-2:]))  # a pyramid's early scales
        target = style_target(images01.device)
        with torch.no_grad():
            grams = position_grams(vgg, images01)
            return [{SSIM_KEY: ssim(images01[b : b + 1], content),
                     "quality/gram_distance": gram_distance({n: g[b : b + 1] for n, g in grams.items()}, target)}
                    for b in range(images01.shape[0])]

    return probe
