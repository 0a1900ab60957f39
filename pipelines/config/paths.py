"""A config's image paths: made absolute (a file's own folder first, then the working directory),
listed, checked before torch loads, and noted when they lie outside the project."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nst.config import INITS
from nst.files import ImageError, check_file
from pipelines.errors import UserError

if TYPE_CHECKING:
    from pipelines.config.runs import RunConfig


def resolve_paths(data: dict[str, Any], roots: tuple[Path, ...]) -> dict[str, Any]:
    """Make the image paths of a config absolute. A relative path is looked up in each of
    `roots` in turn (a config file's folder, then the working directory); when it exists in
    none, it is resolved against the last, and loading it later names the missing file."""
    out = dict(data)

    def resolve(value: str) -> str:
        return _resolve(value, roots)

    for key in ("content", "style", "init"):
        value = out.get(key)
        if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
            out[key] = [resolve(v) for v in value]
        if not isinstance(value, str) or not value or value in INITS or value.startswith("run:"):
            continue
        out[key] = resolve(value)
    return out


#: A URL (https://…, s3://…): kept as given, so that check_paths can say what to do with it (as a path it
#: became `./https:/host/x.jpg`, "no such file").
URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@functools.lru_cache(maxsize=4096)  # a grid resolves the same few files for every point
def _resolve(value: str, roots: tuple[Path, ...]) -> str:
    if URL.match(value):
        return value
    path = Path(value).expanduser()
    if not path.is_absolute():
        found = [root / path for root in roots if (root / path).exists()]
        path = found[0] if found else roots[-1] / path
    return str(path.resolve())


def input_files(config: RunConfig) -> list[tuple[str, str]]:
    """(key, path) of every image file the run reads: the photo, each painting, an init image."""
    files = [("content", config.content), *(("style", s) for s in config.styles)]
    return [*files, ("init", config.init)] if config.init_from_file else files


def check_paths(configs: Iterable[RunConfig]) -> None:
    """UserError for the first input path that is no image file's (missing, a directory, empty), each path
    looked at once: checked before torch loads, so a typo gets its answer at once (the files are decoded
    later, pipelines.execution.inputs)."""
    seen: set[str] = set()
    for config in configs:
        for key, path in input_files(config):
            if path not in seen and not path.startswith("run:"):  # another run's image: the store has it
                seen.add(path)
                if URL.match(path):
                    raise UserError(f"{key} {path}: nst reads image files on this machine, not URLs; download it "
                                    "first and give its path")
                try:
                    check_file(Path(path))
                except ImageError as exc:
                    raise UserError(str(exc)) from None


def outside(config: RunConfig, root: Path, keys: Iterable[str]) -> list[str]:
    """Notes for the image paths among `keys` (those set with --set) that resolve outside
    `root`: allowed, but worth saying. A missing file gets its own error later instead."""
    notes = []
    for key, value in input_files(config):
        if key not in keys or not Path(value).exists():
            continue
        if not Path(value).resolve().is_relative_to(root.resolve()):
            where = Path(value).resolve()
            notes.append(f"note: {key} resolves to {where}, outside the project folder {root.resolve()}")
    return notes
