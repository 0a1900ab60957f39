"""Experiment files (`experiments/*.yaml`): parse, validate and expand a grid into runs.

    name: lr_sweep            # MLflow experiment name
    description: ...          # shown on the parent run
    base: {...}               # one run's config: any key `nst run --set` accepts
    grid: {optimizer.lr: [0.01, 0.1, 1.0]}   # cartesian product over dotted keys
    zip: {}                   # equal-length lists varied together
    variants:                 # named sets of overrides, one run each (combined with the grid)
      luminance: {preserve_color: luminance}
    seeds: [0]                # repeats of every grid point (or `seed` as a grid/zip axis)
    claims: [...]             # optional, judged by `nst report` (pipelines/config/claims.py)
    contrast: other_sweep     # optional: the report judges the same claims on that sweep
    notes: ...                # optional markdown, appended to the report
    max_runs: 1000            # optional: more runs than this ask for --yes (the default 1000)

Image paths resolve against the file's own folder first, then the working directory (`--set`
paths against the working directory), so a file runs from any folder. Every point is validated
before anything runs, and no two points may be the same run; errors name the file, the key and
what was expected.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.config import presets
from pipelines.config.claims import Claim
from pipelines.config.coerce import ConfigError, build
from pipelines.config.experiment_file import MAX_RUNS, ExperimentFile
from pipelines.config.paths import resolve_paths
from pipelines.config.run_key import Variations
from pipelines.config.runs import RunConfig, flatten
from pipelines.config.yaml_files import merge, read_yaml
from pipelines.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


@dataclass(frozen=True)
class Point:
    """One run of a sweep: its config, the values it varies and its stable key."""

    index: int
    config: RunConfig
    varied: dict[str, Any]
    name: str
    key: str


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    path: Path
    text: str
    grid: dict[str, list[Any]]
    zip: dict[str, list[Any]]
    seeds: list[int | None]  # [None]: the grid or zip varies seed
    variants: dict[str, dict[str, Any]]
    claims: list[Claim]
    points: list[Point]
    max_runs: int = MAX_RUNS

    @property
    def sweep_key(self) -> str:
        """Identifies this exact set of runs: the parent run is reused only when it matches."""
        return hashlib.sha256(",".join(p.key for p in self.points).encode()).hexdigest()[:16]

    @property
    def varied_keys(self) -> list[str]:
        return [*(["variant"] if self.variants else []), *self.grid, *self.zip, "seed"]


#: The experiments nst ships (its checkout's experiments/): found by name from any folder.
SHIPPED = Path(__file__).resolve().parents[2] / "experiments"


def find_config(name: str | Path, folder: Path = Path("experiments")) -> Path:
    """CONFIG as given when it exists, else the file of that name in `folder` (experiments/ here), else
    in nst's own experiments/ (SHIPPED): `nst experiment lr_sweep.yaml` runs the shipped sweep from any
    folder (its images are named relative to the file), into that folder's store."""
    path = Path(name)
    if path.is_file() or path.is_absolute():
        return path
    folders = [folder, *([SHIPPED] if SHIPPED.is_dir() and SHIPPED != folder.resolve() else [])]
    for place in folders:
        for candidate in (place / path, (place / path).with_suffix(".yaml")):
            if candidate.is_file():
                return candidate
    where = " or ".join(f"{place}/" for place in folders)
    shipped = ", ".join(sorted({p.name for place in folders if place.is_dir() for p in place.glob("*.yaml")}))
    raise UserError(f"{name}: no such experiment file (here or in {where}: {shipped or 'none'})")


def _fail(path: Path, message: str) -> UserError:
    return ConfigError(f"{path}: {message}")


def _last(key: str) -> str:
    parts = key.split(".")
    return parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]  # optimizer.name -> optimizer


def short_name(key: str, keys: Sequence[str]) -> str:
    """The last part of a dotted key (`optimizer.lr` -> `lr`) unless that is ambiguous."""
    last = _last(key)
    return last if sum(_last(k) == last for k in keys) == 1 else key


def _format(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(_format(v) for v in value)
    if isinstance(value, Mapping):
        return ",".join(f"{k}:{_format(v)}" for k, v in value.items())
    if isinstance(value, str) and "/" in value and Path(value).suffix.lower() in IMAGE_SUFFIXES:
        return Path(value).stem  # a run name says which image, not where it lies
    return f"{value:g}" if isinstance(value, float) else str(value)


def point_name(varied: Mapping[str, Any]) -> str:
    keys = list(varied)
    return " ".join(f"{short_name(k, keys)}={_format(v)}" for k, v in varied.items())


def load_experiment(path: Path, overrides: Mapping[str, Any] | None = None) -> Experiment:
    """Read, validate and expand an experiment file. `overrides` (from --set) apply to the base."""
    raw = read_yaml(path)
    if not isinstance(raw, Mapping):
        raise _fail(path, "expected a mapping with name, base and grid")
    if not raw.keys() & ExperimentFile.model_fields.keys() and raw.keys() & {"content", "style"}:
        raise _fail(path, f"holds one run's keys, not an experiment (name, base, grid): run it with `nst run "
                    f"--config {path}`, or put its keys under base: beside a name: and a grid:")
    try:
        file: ExperimentFile = build(ExperimentFile, raw)
    except ConfigError as exc:
        raise _fail(path, str(exc)) from None
    grid, zipped, variants, claims = file.grid, file.zip, file.variants, file.claims
    seeds: list[int | None] = list(file.seeds)
    lengths = {k: len(v) for k, v in zipped.items()}
    if len(set(lengths.values())) > 1:
        raise _fail(path, f"zip: lists must have equal lengths, got {lengths}")
    if "seed" in grid or "seed" in zipped:
        # A seed axis of the grid works as one; with `seeds` too, which one wins would be a guess.
        if "seeds" in raw:
            raise _fail(path, "seed is in grid (or zip) and seeds is given too; vary seeds in one place: "
                        "seeds: [1, 2] repeats every point with each seed")
        seeds = [None]
    if not grid and not zipped and len(variants) < 2 and len(seeds) == 1:
        raise _fail(path, "grid: nothing varies; add a key with a list of values, e.g. optimizer.lr: [0.01, 0.1]")

    _refuse_shadowed(path, overrides or {}, grid, zipped, variants, seeds)
    roots = (path.resolve().parent, Path.cwd())
    base_data = merge(resolve_paths(dict(file.base), roots), resolve_paths(dict(overrides or {}), (Path.cwd(),)))
    points = _expand(path, base_data, roots, variants, grid, zipped, seeds)
    _refuse_duplicates(path, points)
    return Experiment(
        name=file.name,
        description=file.description,
        path=path,
        text=path.read_text(encoding="utf-8"),
        grid=grid,
        zip=zipped,
        seeds=seeds,
        variants=variants,
        claims=claims,
        points=points,
        max_runs=file.max_runs,
    )


def _refuse_shadowed(path: Path, overrides: Mapping[str, Any], grid: Mapping[str, list[Any]],
                     zipped: Mapping[str, list[Any]], variants: Mapping[str, Mapping[str, Any]],
                     seeds: list[int | None]) -> None:
    """A --set of a key the file varies is replaced at every point: refused, not silently ignored
    (`--set optimizer.lr=0.5` on lr_sweep.yaml ran its three learning rates)."""
    varied = {key: f"the file's grid varies it ({_format(values)})" for key, values in grid.items()}
    varied |= {key: f"the file's zip varies it ({_format(values)})" for key, values in zipped.items()}
    for name, changes in variants.items():
        for key in flatten(changes):
            varied.setdefault(key, f"the file's variant {name} sets it")
    if seeds != [None]:
        varied.setdefault("seed", f"the file's seeds ({_format(seeds)}; [0] unless given) set it")
    for key in flatten(overrides):
        for axis, why in varied.items():
            if key == axis or key.startswith(f"{axis}.") or axis.startswith(f"{key}."):
                raise _fail(path, f"--set {key}: {why}, so --set would change no run; edit the file "
                                  "(or run one point: nst run --set ...)")


def _expand(path: Path, base: dict[str, Any], roots: tuple[Path, ...], variants: dict[str, dict[str, Any]],
            grid: dict[str, list[Any]], zipped: dict[str, list[Any]], seeds: list[int | None]) -> list[Point]:
    """Every point: each variant × the grid's product × the zipped rows × the seeds (a seed axis in
    the grid or zip replaces the seeds)."""
    points: list[Point] = []
    zip_rows = list(zip(*zipped.values(), strict=True)) if zipped else [()]
    for variant, changes in (variants or {"": {}}).items():
        data = resolve_paths(merge(base, changes), roots)
        variations: Variations | None = None
        for values in itertools.product(*grid.values()):
            for zip_values in zip_rows:
                for seed in seeds:
                    varied = dict(zip(grid, values, strict=True)) | dict(zip(zipped, zip_values, strict=True))
                    if seed is not None:
                        varied["seed"] = seed
                    label = " ".join(filter(None, (variant, point_name(varied))))
                    source = f"{path} [{label}]"
                    resolved = resolve_paths(varied, roots)
                    variations = variations or Variations(data, resolved, source, presets.DEFAULT)
                    config, key = variations.config(resolved, source)
                    shown = {"variant": variant, **varied} if variant else varied
                    points.append(Point(len(points), config, shown, label, key))
    return points


def _refuse_duplicates(path: Path, points: list[Point]) -> None:
    """Two points with one run key would be one run twice (or one of them silently skipped)."""
    seen: dict[str, Point] = {}
    for point in points:
        first = seen.setdefault(point.key, point)
        if first is not point:
            raise _fail(path, f"points [{first.index + 1}] {first.name!r} and [{point.index + 1}] {point.name!r} "
                        "are the same run (the same run key): remove the repeated value, or vary a key that "
                        "changes the result")
