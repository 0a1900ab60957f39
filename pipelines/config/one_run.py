"""The config of `nst run`: its --content and --style, its --config file and its --set keys, merged over
the default recipe and checked, without torch, Lightning or MLflow (bad input gets its line at once)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines.config import presets
from pipelines.config.paths import check_paths, outside, resolve_paths
from pipelines.config.runs import RunConfig, run_config
from pipelines.config.yaml_files import merge, parse_set, read_yaml
from pipelines.errors import UserError

_WHAT = {"content": "PHOTO", "style": "PAINTING"}  # what each image is, for the usage line


def _file_keys(path: Path) -> dict[str, Any]:
    """A --config file's keys, its image paths resolved (its own folder first); an experiment file is refused."""
    loaded = read_yaml(path)
    if not isinstance(loaded, dict):
        raise UserError(f"{path}: expected a mapping of run keys, e.g. 'size: 256'")
    if {"base", "grid"} & loaded.keys():
        raise UserError(f"{path}: is an experiment file (base, grid), not one run's keys: run it with "
                        f"`nst experiment {path}`")
    return resolve_paths(loaded, (path.resolve().parent, Path.cwd()))


def command_line_config(content: str | None, styles: Sequence[str] | None, config: Path | None,
                        sets: Sequence[str], preset: str | None) -> RunConfig:
    """The run the command line asks for: the flags and --set keys win over the file, the file over the preset.
    Its image files are checked; paths set with --set that resolve outside this folder are noted on stderr."""
    data = _file_keys(config) if config else {}
    style = (styles[0] if len(styles) == 1 else list(styles)) if styles else None
    flags = {k: v for k, v in (("content", content), ("style", style)) if v}
    overrides = dict(parse_set(s) for s in sets)
    data = merge(data, resolve_paths({**flags, **overrides}, (Path.cwd(),)))
    if preset:
        data["preset"] = preset
    missing = [key for key in ("content", "style") if not data.get(key)]
    if missing:
        where = f" or {' and '.join(f'{k}:' for k in missing)} in {config}" if config else ""
        raise UserError(f"nst run needs {' and '.join(f'--{k} {_WHAT[k]}' for k in missing)}{where}, e.g. "
                        "nst run --content photo.jpg --style painting.jpg")
    run = run_config(data, source=str(config) if config else "command line", preset=presets.DEFAULT)
    for note in outside(run, Path.cwd(), overrides):
        print(note, file=sys.stderr)
    check_paths([run])
    return run
