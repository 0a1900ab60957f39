"""Experiment and run files, and `--set` overrides: YAML read strictly, dotted keys merged.

A file is safe-loaded (plain data only) with a key given twice refused, and any syntax error named by
file and line; `--set key.sub=value` parses its value as YAML; `merge` applies dotted overrides to a
nested mapping without changing it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from pipelines.config.coerce import ConfigError
from pipelines.errors import UserError


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


def _copy(data: Any) -> Any:
    """A deep copy of plain data (mappings, lists, tuples as lists, scalars)."""
    if isinstance(data, Mapping):
        return {k: _copy(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_copy(v) for v in data]
    return data
