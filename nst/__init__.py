"""nst: neural style transfer (Gatys et al. 2016) on a frozen VGG-19, as a Lightning module.

A pure library: no MLflow, no YAML. `pipelines` adds config files, tracking and the CLI.
"""

from nst.config import BackboneConfig, LayersConfig, OptimizerConfig, TransferConfig
from nst.determinism import deterministic
from nst.images import ImageError, load_image, save_image
from nst.module import StyleTransfer
from nst.stopping import DivergedError
from nst.vgg import LAYER_NAMES, WeightsError, load_vgg19

__all__ = [
    "LAYER_NAMES",
    "BackboneConfig",
    "DivergedError",
    "ImageError",
    "LayersConfig",
    "OptimizerConfig",
    "StyleTransfer",
    "TransferConfig",
    "WeightsError",
    "deterministic",
    "load_image",
    "load_vgg19",
    "save_image",
]
