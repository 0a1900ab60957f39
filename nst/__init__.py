"""nst: neural style transfer (Gatys et al. 2016) on a frozen VGG-19, as a Lightning module.

A pure library: no MLflow, no YAML. `pipelines` adds config files, tracking and the CLI.

The names below load their modules when first used: checking a config (nst.config, nst.layers,
nst.sizes, nst.files) needs no torch, so a command answers bad input before torch loads.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "BackboneConfig": "nst.config",
    "LayersConfig": "nst.config",
    "OptimizerConfig": "nst.config",
    "TransferConfig": "nst.config",
    "deterministic": "nst.determinism",
    "ImageError": "nst.files",
    "load_image": "nst.images",
    "save_image": "nst.images",
    "LAYER_NAMES": "nst.layers",
    "StyleTransfer": "nst.module",
    "DivergedError": "nst.stopping",
    "WeightsError": "nst.vgg",
    "load_vgg19": "nst.vgg",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'nst' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)


def __dir__() -> list[str]:
    return __all__
