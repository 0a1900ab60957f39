"""VGG-19's layers by name (conv1_1, relu1_1, ..., pool5), without torch: a config names its layers,
and checking them must not wait for torch to load (nst.vgg builds the network)."""

from __future__ import annotations

from collections.abc import Iterable

#: Convolutions per block of VGG-19.
BLOCKS = (2, 2, 4, 4, 4)


def _layer_names() -> tuple[str, ...]:
    names: list[str] = []
    for block, convs in enumerate(BLOCKS, start=1):
        for i in range(1, convs + 1):
            names += [f"conv{block}_{i}", f"relu{block}_{i}"]
        names.append(f"pool{block}")
    return tuple(names)


#: Names of the layers of torchvision's `vgg19().features`, in order.
LAYER_NAMES = _layer_names()
LAYER_INDEX = {name: i for i, name in enumerate(LAYER_NAMES)}
CONV_LAYERS = tuple(n for n in LAYER_NAMES if n.startswith("conv"))


def check_layers(names: Iterable[str]) -> None:
    """Raise ValueError naming the first unknown layer name."""
    for name in names:
        if name not in LAYER_INDEX:
            raise ValueError(f"unknown VGG-19 layer {name!r}; layers are conv1_1 ... relu5_4, pool1 ... pool5")
