"""Settings of one style transfer, as frozen dataclasses: the library's side of the config.

Every default lives here, once. The defaults are the seed's classic formulation
(DESIGN.md): Caffe VGG-19, content relu4_2, style relu1_1 ... relu5_1 at 0.2 each,
alpha = 10, beta = 40, init 0.6 * uniform(-20, 20) + 0.4 * content in 0-255 units, Adam.
Each `__post_init__` rejects values that cannot work, with a message naming the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Literal, get_args

from nst.layers import check_layers

# The choices of a setting, as types: a config loader (and an editor's schema) offers exactly these.
Optimizer = Literal["adam", "lbfgs", "sgd"]
Schedule = Literal["constant", "cosine", "exponential"]
GramNorm = Literal["seed", "hw", "chw"]
StyleLoss = Literal["gram", "w2"]  # nst.losses
Precision = Literal["fp32", "bf16", "auto"]  # auto: bf16 where the hardware computes it natively
ColorMode = Literal["none", "luminance", "match"]
Pooling = Literal["max", "avg"]
Convention = Literal["caffe", "torchvision"]
TvNorm = Literal["l1", "l2"]

INITS = ("content", "noise", "content+noise")  # or an image file, or run:<id> (a free string)
OPTIMIZERS, SCHEDULES, GRAM_NORMS = get_args(Optimizer), get_args(Schedule), get_args(GramNorm)
STYLE_LOSSES, PRECISIONS, COLOR_MODES = get_args(StyleLoss), get_args(Precision), get_args(ColorMode)


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def _non_negative(name: str, value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def blend_weights(blend: Sequence[float], n: int) -> list[float]:
    """Normalized weights of `n` style images; () gives them equal weight."""
    if not blend:
        return [1.0 / n] * n if n > 1 else [1.0]
    if len(blend) != n:
        raise ValueError(f"style_blend has {len(blend)} weights for {n} style images; give one per image")
    total = sum(blend)
    return [w / total for w in blend]


@dataclass(frozen=True)
class OptimizerConfig:
    """The optimizer over the pixels. L-BFGS does one iteration (no line search) per step."""

    name: Optimizer = "adam"
    lr: float = 0.1
    momentum: float = 0.9  # sgd only
    schedule: Schedule = "constant"
    gamma: float = 0.999  # per-step decay of the exponential schedule

    def __post_init__(self) -> None:
        _one_of("name", self.name, OPTIMIZERS)
        _positive("lr", self.lr)
        _non_negative("momentum", self.momentum)
        _one_of("schedule", self.schedule, SCHEDULES)
        _positive("gamma", self.gamma)


@dataclass(frozen=True)
class LayersConfig:
    """Which VGG layers the losses read; style layers carry their weight w_l."""

    content: tuple[str, ...] = ("relu4_2",)
    style: dict[str, float] = field(
        default_factory=lambda: {f"relu{b}_1": 0.2 for b in range(1, 6)}
    )

    def __post_init__(self) -> None:
        if not self.content and not self.style:
            raise ValueError("content and style are both empty; name at least one layer")
        check_layers([*self.content, *self.style])
        for name, weight in self.style.items():
            _non_negative(f"style.{name}", weight)


@dataclass(frozen=True)
class BackboneConfig:
    """VGG-19 weights ("caffe", "torchvision" or a state_dict path) and pooling."""

    weights: str = "caffe"
    pooling: Pooling = "max"
    convention: Convention | None = None  # input convention override

    def __post_init__(self) -> None:
        _one_of("pooling", self.pooling, get_args(Pooling))
        if self.convention is not None:
            _one_of("convention", self.convention, get_args(Convention))


@dataclass(frozen=True)
class StopConfig:
    """End a run early once J stops improving: when J fell by less than `rel_improvement`
    (relative) over the last `window` steps. 0 never stops. In a pyramid, only the last scale
    stops early (each scale starts with a jump in J)."""

    rel_improvement: float = 0.0
    window: int = 100

    def __post_init__(self) -> None:
        _non_negative("rel_improvement", self.rel_improvement)
        _positive("window", self.window)


@dataclass(frozen=True, kw_only=True)
class TransferConfig:
    """Everything `nst.module.StyleTransfer` needs besides the images."""

    iterations: int = 2000
    seed: int = 0
    init: str = "content+noise"  # or an image path, loaded by the caller
    noise_ratio: float = 0.6
    noise_range: float = 20.0  # half-width of the uniform noise, 0-255 units
    # Units of the optimized pixels: 255 is the seed's (and Caffe's) scale; with 1 the same
    # learning rate is a 255x larger step in 0-255 units.
    pixel_scale: float = 255.0
    # "bf16": the VGG runs under autocast, Gram matrices and losses stay fp32; "auto" (default):
    # bf16 where the hardware has it natively (1.6-1.8x faster here, final J within 0.6%), else fp32.
    precision: Precision = "auto"
    alpha: float = 10.0
    beta: float = 40.0
    gamma: float = 0.0  # total-variation weight
    tv_norm: TvNorm = "l2"
    # Gram normalization of J_style: "seed" sum(dG^2) / (4 C^2 (HW)^2) (Gatys); "hw" the mean
    # square of G/HW (4x seed); "chw" of G/(CHW) (4/C^2 x seed: deep, wide layers count less).
    gram_norm: GramNorm = "seed"
    # "gram" (Gatys et al.) or "w2": the Wasserstein-2 distance of the features' Gaussians (nst.losses).
    style_loss: StyleLoss = "gram"
    # Iterate averaging: the image written out is an exponential moving average of the iterates with this
    # decay per step (0: the last iterate, as Gatys et al.); the losses are still the iterate's.
    average: float = 0.0
    # Weights of several style images (their Gram targets are blended); () = equal weights.
    style_blend: tuple[float, ...] = ()
    preserve_color: ColorMode = "none"  # see nst.color
    # Long sides to optimize at, coarse to fine, `iterations` steps each; () = the size only.
    scales: tuple[int, ...] | Literal["auto"] = ()
    stop: StopConfig = field(default_factory=StopConfig)
    layers: LayersConfig = field(default_factory=LayersConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)

    def __post_init__(self) -> None:
        _positive("iterations", self.iterations)
        _non_negative("seed", self.seed)
        if not 0 <= self.noise_ratio <= 1:
            raise ValueError(f"noise_ratio must be within 0..1, got {self.noise_ratio}")
        _non_negative("noise_range", self.noise_range)
        _positive("pixel_scale", self.pixel_scale)
        _one_of("precision", self.precision, PRECISIONS)
        for name in ("alpha", "beta", "gamma"):
            _non_negative(name, getattr(self, name))
        _one_of("tv_norm", self.tv_norm, get_args(TvNorm))
        _one_of("gram_norm", self.gram_norm, GRAM_NORMS)
        _one_of("style_loss", self.style_loss, STYLE_LOSSES)
        if not 0 <= self.average < 1:
            raise ValueError(f"average must be within 0 (off) and 1 (exclusive), got {self.average}")
        _one_of("preserve_color", self.preserve_color, COLOR_MODES)
        for weight in self.style_blend:
            _non_negative("style_blend", weight)
        if self.style_blend and not sum(self.style_blend) > 0:
            raise ValueError(f"style_blend must have a positive weight, got {list(self.style_blend)}")
        if isinstance(self.scales, str):
            _one_of("scales", self.scales, ("auto",))
        elif any(s < 16 for s in self.scales) or list(self.scales) != sorted(set(self.scales)):
            raise ValueError(f"scales must increase, each >= 16 px, got {list(self.scales)}")
        if not self.objective_terms:
            # J would be 0 for every image: the optimizer never moves a pixel and the run "finishes"
            # as its start image, a silent wrong run.
            raise ValueError(
                f"nothing to optimize: J is 0 (alpha {self.alpha:g}, content layers {list(self.layers.content)}; "
                f"beta {self.beta:g}, style weights {list(self.layers.style.values())}; gamma {self.gamma:g}); "
                "give alpha > 0 with a content layer, beta > 0 with a style weight > 0, or gamma > 0")

    @property
    def objective_terms(self) -> tuple[str, ...]:
        """The terms of J that can move a pixel: a positive weight on at least one layer (or on TV)."""
        terms = {"content": self.alpha > 0 and bool(self.layers.content),
                 "style": self.beta > 0 and any(w > 0 for w in self.layers.style.values()),
                 "tv": self.gamma > 0}
        return tuple(name for name, on in terms.items() if on)

    @property
    def init_from_file(self) -> bool:
        return self.init not in INITS


# -- batches ---------------------------------------------------------------------------------------
#: Settings each image of a batch may have its own value of (nst.module: one image per run). All the
#: others decide the shapes, the targets or the network, and are the same for a whole batch. The
#: style layers' weights may differ too, not which layers they are.
PER_SAMPLE = ("seed", "init", "noise_ratio", "noise_range", "alpha", "beta", "gamma", "stop")
PER_SAMPLE_OPTIMIZER = ("lr", "schedule", "gamma", "momentum")  # optimizer.*; its name is shared
LBFGS_ALONE = "L-BFGS runs one image at a time (its curvature pairs would mix a batch's samples)"


def shared_settings(config: TransferConfig) -> TransferConfig:
    """`config` with its per-sample settings at their defaults: two configs can share a batch when
    these are equal (PER_SAMPLE, PER_SAMPLE_OPTIMIZER, and the style layers' weights)."""
    default = TransferConfig()
    return replace(
        config, **{name: getattr(default, name) for name in PER_SAMPLE},
        optimizer=replace(config.optimizer, **{n: getattr(default.optimizer, n) for n in PER_SAMPLE_OPTIMIZER}),
        layers=replace(config.layers, style=dict.fromkeys(config.layers.style, 1.0)),
    )


def first_difference(a: TransferConfig, b: TransferConfig) -> str | None:
    """The name of the first shared setting in which two configs differ (None: they can share a batch)."""
    left, right = shared_settings(a), shared_settings(b)
    for f in fields(left):
        x, y = getattr(left, f.name), getattr(right, f.name)
        if x != y:
            if f.name in ("layers", "optimizer", "backbone"):
                inner = next(g.name for g in fields(x) if getattr(x, g.name) != getattr(y, g.name))
                return f"{f.name}.{inner}"
            return f.name
    return None


def batch_of(configs: Sequence[TransferConfig]) -> tuple[TransferConfig, ...]:
    """The configs of one batch, checked: they must agree on every shared setting."""
    configs = tuple(configs)
    if not configs:
        raise ValueError("a batch needs at least one config")
    for other in configs[1:]:
        differs = first_difference(configs[0], other)
        if differs is not None:
            raise ValueError(f"the images of a batch must share {differs}; run them in separate batches")
    if len(configs) > 1 and configs[0].optimizer.name == "lbfgs":
        raise ValueError(LBFGS_ALONE)
    return configs
