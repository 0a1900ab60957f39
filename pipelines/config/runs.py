"""One run's configuration: the frozen `RunConfig`, built from YAML and `--set` overrides.

Defaults live on the dataclasses (nst.config for the library's settings, RunConfig for the
run's own); this module merges what a user wrote and validates it with pydantic (pipelines.config.coerce),
whose errors name the key, what was expected and, for unknown keys, the closest valid one (its image
paths: pipelines.config.paths). It also keys a run (`run_key`) and expands grids fast (`Variations`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from nst.config import TransferConfig, blend_weights
from nst.sizes import pyramid
from pipelines.config import presets
from pipelines.config.coerce import ConfigError, build, coerce, hints
from pipelines.config.paths import input_files
from pipelines.errors import UserError

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


# -- files and overrides ----------------------------------------------------------------------------
class _NoDuplicateKeys(yaml.SafeLoader):
    """yaml.safe_load's loader, refusing a key given twice in one mapping: PyYAML keeps the last one
    silently, so a grid with `optimizer.lr:` twice (a copy left behind) ran the second list only."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` merges keys that the mapping may override
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = lines.setdefault(key, key_node.start_mark.line)
            except TypeError:  # an unhashable key: the base class says so
                continue
            if first != key_node.start_mark.line:
                raise yaml.constructor.ConstructorError(
                    problem=f"key {key!r} given twice (lines {first + 1} and {key_node.start_mark.line + 1}); "
                            "keep one", problem_mark=key_node.start_mark)
        return super().construct_mapping(node, deep)


def read_yaml(path: Path) -> Any:
    """Safe-load a YAML file (a key given twice refused); a syntax error names the file and line."""
    if not path.is_file():
        raise UserError(f"{path}: no such config file; check the path")
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_NoDuplicateKeys)  # a SafeLoader: plain data only
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{path}:{where}: YAML syntax error: {problem}; fix the file") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file; give a YAML file") from None


def parse_set(assignment: str) -> tuple[str, Any]:
    """`key.sub=value` with the value parsed as YAML (`lr=0.1`, `layers.content=[relu4_2]`)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment!r}: expected key=value, e.g. --set optimizer.lr=0.1")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """data[a][b][c] = value for key "a.b.c", creating mappings on the way."""
    *parents, last = key.split(".")
    node = data
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[last] = value


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with dotted `overrides` applied, as a new nested dict (`base` is left as it was)."""
    out = _copy(base)
    for key, value in overrides.items():
        set_dotted(out, key, _copy(value))
    return out


def run_config(data: Mapping[str, Any], source: str = "config", preset: str = presets.LIBRARY) -> RunConfig:
    """A validated RunConfig over its preset (data["preset"], else `preset`); errors are prefixed with
    `source` (a file name or 'command line')."""
    try:
        return build(RunConfig, presets.with_preset(data, preset))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


# -- views of a RunConfig ---------------------------------------------------------------------------
def _copy(data: Any) -> Any:
    """A deep copy of plain data (mappings, lists, tuples as lists, scalars)."""
    if isinstance(data, Mapping):
        return {k: _copy(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_copy(v) for v in data]
    return data


_SCALARS = frozenset({str, int, float, bool, type(None)})


@functools.cache
def _names(cls: Any) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _plain(value: Any) -> Any:
    """A config as JSON would give it back: dataclasses as dicts, tuples as lists, keys as strings."""
    kind: Any = type(value)
    if kind in _SCALARS:
        return value
    if kind is dict:
        return {str(k): _plain(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [_plain(v) for v in value]
    return {name: _plain(getattr(value, name)) for name in _names(kind)}  # a dataclass


def to_dict(config: RunConfig) -> dict[str, Any]:
    return _plain(config)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optimizer": {"lr": 0.1}} -> {"optimizer.lr": 0.1}; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


#: Keys that change how a run is carried out, not what it computes.
_NOT_IN_RUN_KEY = ("checkpoint_every", "keep_checkpoints", "cuda_graph", "deterministic", "preset")
#: Keys added after runs were first keyed: at their default they leave the key as it was, so a
#: store's finished runs stay finished for a sweep run again.
_KEYED_WHEN_SET = ("gram_norm", "style_blend", "preserve_color", "scales", "stop", "style_loss", "average")


@functools.cache
def _defaults() -> dict[str, Any]:
    return to_dict(RunConfig(content="-", style="-"))


@functools.lru_cache(maxsize=4096)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """The bytes' hash; size and mtime in the cache key read the file again once it changes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _digest(path: str) -> str | None:
    try:
        stat = os.stat(path)
    except OSError:  # missing or unreadable: loading the image names the problem
        return None
    return _file_digest(path, stat.st_size, stat.st_mtime_ns)


def run_key(config: RunConfig, plain: Mapping[str, Any] | None = None) -> str:
    """A stable hash of the resolved config and of its image files' bytes: the same key means the same
    result, so a sweep run again after a painting was edited in place runs its points anew instead of
    skipping them as finished. `plain`: `to_dict(config)` when the caller has it already."""
    defaults = _defaults()
    data = {k: v for k, v in (plain or to_dict(config)).items()
            if k not in _NOT_IN_RUN_KEY and not (k in _KEYED_WHEN_SET and v == defaults[k])}
    data["input_bytes"] = [_digest(path) for _, path in input_files(config)]
    blob = json.dumps(data, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Variations:
    """Many configs that differ from one template in a few keys (a grid's points), built fast: the
    template is validated once; each point coerces only its varied top-level fields (each distinct
    value once) and gets the dataclasses' own checks through `dataclasses.replace`. The same configs
    and run keys as `run_config(merge(data, varied))`, at a fraction of the cost (a 100,000-point grid
    in seconds)."""

    def __init__(self, data: Mapping[str, Any], first: Mapping[str, Any], source: str,
                 preset: str = presets.LIBRARY) -> None:
        # The plain data the points share, over its preset: image paths resolved, no varied key applied.
        self.data = presets.with_preset(data, preset)
        self.template = run_config(merge(self.data, first), source)  # the first point: every key validated
        self.plain = to_dict(self.template)
        self._fields: dict[str, tuple[Any, Any]] = {}  # top field + its raw value -> (coerced, plain)

    def config(self, varied: Mapping[str, Any], source: str) -> tuple[RunConfig, str]:
        """The config with `varied` (dotted keys) applied, and its run key."""
        if any(key.split(".", 1)[0] == "preset" for key in varied):  # a recipe per point: built whole
            config = run_config(merge(self.data, varied), source)
            return config, run_key(config)
        groups: dict[str, dict[str, Any]] = {}
        for key, value in varied.items():
            groups.setdefault(key.split(".", 1)[0], {})[key] = value
        changes, plain = {}, dict(self.plain)
        for top, items in groups.items():
            memo = json.dumps([top, items], sort_keys=True, default=str)
            if memo not in self._fields:
                raw = merge({top: self.data.get(top)} if top in self.data else {}, items)
                if top not in hints(RunConfig):
                    build(RunConfig, raw)  # names the unknown key, with the closest valid one
                try:
                    value = coerce(hints(RunConfig)[top], raw[top], top)
                except ConfigError as exc:
                    raise ConfigError(f"{source}: {exc}") from None
                self._fields[memo] = (value, _plain(value))
            changes[top], plain[top] = self._fields[memo]
        try:
            config = dataclasses.replace(self.template, **changes)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        return config, run_key(config, plain)


def to_yaml(config: RunConfig) -> str:
    # libyaml's emitter where PyYAML has it: the same text, 4x faster (64 runs of a batch write one each).
    return yaml.dump(to_dict(config), Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False)
