"""One run's configuration: the frozen `RunConfig`, validated from plain data, and its plain views.

Defaults live on the dataclasses (nst.config for the library's settings, RunConfig for the
run's own); `run_config` validates what a user wrote (read and merged by pipelines.config.yaml_files)
with pydantic (pipelines.config.coerce), whose errors name the key, what was expected and, for unknown
keys, the closest valid one (its image paths: pipelines.config.paths). A run's identity and a grid's
fast expansion: pipelines.config.run_key.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from nst.config import TransferConfig, blend_weights
from nst.sizes import pyramid
from pipelines.config import presets
from pipelines.config.coerce import ConfigError, build

#: Snapshot steps the seed's slides show, plus later ones; the last iteration is always added.
DEFAULT_SNAPSHOTS = (0, 500, 1000, 2000, 3000, 5000)


@dataclass(frozen=True, kw_only=True)
class RunConfig(TransferConfig):
    """Everything one tracked run needs: the library's settings plus files, size and tracking."""

    content: str
    style: str | tuple[str, ...]  # one painting, or several blended by style_blend
    size: int = 256  # long side of the generated image, px
    max_size: int = 4096  # guard against typos such as size=25600
    style_scale: float | None = None  # None: the style image is resized to the content's size
    snapshots: tuple[int, ...] = DEFAULT_SNAPSHOTS
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # The recipe these settings started from (pipelines.config.presets); a label: the values are the keys.
    preset: str = "seed"
    checkpoint_every: int = 100  # steps between resumable checkpoints (0: none)
    # Keep a FINISHED run's last checkpoints (image and optimizer state), which it never resumes from.
    keep_checkpoints: bool = False
    # Deterministic GPU kernels: bit-identical runs and resumes on one GPU (nst.determinism).
    deterministic: bool = False
    # On a CUDA GPU, each step's losses and gradient replayed from one captured CUDA graph (nst.graphs).
    # auto: wherever a step can be (Adam or SGD with Gram losses), op by op elsewhere; true: the same, and
    # a run that could not be (on the CPU, say) is tagged with why; false: op by op everywhere.
    cuda_graph: bool | Literal["auto"] = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.size <= self.max_size:
            raise ValueError(f"size must be within 1..{self.max_size} (max_size), got {self.size}")
        if self.style_scale is not None and self.style_scale <= 0:
            raise ValueError(f"style_scale must be > 0, got {self.style_scale}")
        if any(s < 0 for s in self.snapshots):
            raise ValueError(f"snapshots must be >= 0, got {list(self.snapshots)}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.cuda_graph not in (True, False, "auto"):
            raise ValueError(f"cuda_graph must be true, false or auto; got {self.cuda_graph!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be one of auto, cpu, cuda; got {self.device!r}")
        if not self.styles:
            raise ValueError("style: give at least one style image")
        blend_weights(self.style_blend, len(self.styles))  # one weight per style image
        pyramid(self.scales, self.size)  # the scales end at or below the size
        if self.init.startswith("run:") and len(self.init) == 4:
            raise ValueError("init: run:<run_id> needs the id of the run whose final image starts this one")

    @property
    def styles(self) -> tuple[str, ...]:
        return (self.style,) if isinstance(self.style, str) else self.style

    @property
    def sizes(self) -> list[int]:
        """The long sides this run optimizes at (one, or a coarse-to-fine pyramid)."""
        return pyramid(self.scales, self.size)

    @property
    def total_steps(self) -> int:
        """Optimizer steps in all: `iterations` at each scale."""
        return self.iterations * len(self.sizes)

    @property
    def snapshot_steps(self) -> list[int]:
        """Snapshot steps within the run, plus the last one."""
        return sorted({s for s in self.snapshots if s <= self.total_steps} | {self.total_steps})


def run_config(data: Mapping[str, Any], source: str = "config", preset: str = presets.LIBRARY) -> RunConfig:
    """A validated RunConfig over its preset (data["preset"], else `preset`); errors are prefixed with
    `source` (a file name or 'command line')."""
    try:
        return build(RunConfig, presets.with_preset(data, preset))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


# -- views of a RunConfig ---------------------------------------------------------------------------
_SCALARS = frozenset({str, int, float, bool, type(None)})


@functools.cache
def _names(cls: Any) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def plain_data(value: Any) -> Any:
    """A config as JSON would give it back: dataclasses as dicts, tuples as lists, keys as strings."""
    kind: Any = type(value)
    if kind in _SCALARS:
        return value
    if kind is dict:
        return {str(k): plain_data(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [plain_data(v) for v in value]
    return {name: plain_data(getattr(value, name)) for name in _names(kind)}  # a dataclass


def to_dict(config: RunConfig) -> dict[str, Any]:
    return plain_data(config)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optimizer": {"lr": 0.1}} -> {"optimizer.lr": 0.1}; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def to_yaml(config: RunConfig) -> str:
    # libyaml's emitter where PyYAML has it: the same text, 4x faster (64 runs of a batch write one each).
    return yaml.dump(to_dict(config), Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False)
