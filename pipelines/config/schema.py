"""A JSON Schema of experiment files, for editors (`make schema` writes experiments/schema.json).

A shipped experiment file names it in its first line, `# yaml-language-server: $schema=schema.json`,
so an editor with a YAML language server (VS Code's YAML extension, say) completes the keys, shows
their defaults (and the settings objects' descriptions), and underlines an unknown key or a wrong type
as it is typed.

The run's part is made by pydantic from the dataclasses the files are validated into (RunConfig and
the nst.config classes inside it), so its keys, types, defaults and descriptions follow them. Only
what the loader accepts beyond those types is added here: a single value for a list, a list of layer
names for a map of layer weights (equal weights). A grid's keys are the dotted names of the same
fields. nst's own check (pipelines.config) stays the judge of what runs.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from pipelines.config.grid import TOP_LEVEL_KEYS
from pipelines.config.runs import RunConfig

SCHEMA_FILE = "schema.json"  # beside the experiment files
MODELINE = f"# yaml-language-server: $schema={SCHEMA_FILE}"

_SECTION: dict[str, dict[str, Any]] = {  # the file's own keys (pipelines.config.grid says what each does)
    "name": {"type": "string", "minLength": 1, "description": "the MLflow experiment's name"},
    "description": {"type": "string", "description": "shown on the parent run"},
    "grid": {"type": "object", "description": "the cartesian product over dotted keys, e.g. optimizer.lr: [0.01, 0.1]"},
    "zip": {"type": "object", "description": "equal-length lists varied together"},
    "variants": {"type": "object", "additionalProperties": {"type": "object"},
                 "description": "named sets of overrides, one run each (combined with the grid)"},
    "seeds": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1,
              "description": "repeats of every grid point"},
    "claims": {"type": "array", "items": {"type": "object"}, "description": "judged by `nst report`"},
    "contrast": {"type": "string", "description": "another sweep the report judges the same claims on"},
    "notes": {"type": "string", "description": "markdown appended to the report"},
    "max_runs": {"type": "integer", "minimum": 1, "description": "more runs than this ask for --yes"},
}


def run_schema() -> dict[str, Any]:
    """The schema of one run's keys (an experiment's `base`), with its definitions in `$defs`."""
    schema = TypeAdapter(RunConfig).json_schema()
    _as_loaded(schema)  # its $defs too
    return schema


def _as_loaded(node: Any) -> None:
    """In place: no unknown keys in a settings object, nothing required (a preset or the grid may give
    it), a single value wherever a list is expected, a list of names wherever a map of weights is."""
    if isinstance(node, list):
        for item in node:
            _as_loaded(item)
        return
    if not isinstance(node, dict):
        return
    for value in list(node.values()):
        _as_loaded(value)
    if "properties" in node:
        node["additionalProperties"] = False
        node.pop("required", None)
    elif node.get("type") == "array" and "items" in node:
        array = {k: node.pop(k) for k in ("type", "items", "minItems", "maxItems") if k in node}
        node["anyOf"] = [array, array["items"]]
    elif node.get("type") == "object" and isinstance(node.get("additionalProperties"), dict):
        mapping = {k: node.pop(k) for k in ("type", "additionalProperties") if k in node}
        node["anyOf"] = [mapping, {"type": "array", "items": {"type": "string"}}]


def _dotted(schema: dict[str, Any], defs: dict[str, Any], prefix: str = "") -> list[str]:
    """Every key a grid may vary, dotted (optimizer.lr); a map of weights takes any name under it."""
    keys = []
    for name, prop in schema.get("properties", {}).items():
        ref = prop.get("$ref") or next((o["$ref"] for o in prop.get("anyOf", []) if "$ref" in o), None)
        if any(o.get("type") == "object" for o in prop.get("anyOf", [])):  # a map of weights: any name in it
            keys.append(f"{re.escape(prefix + name)}(\\.[A-Za-z0-9_]+)?")
        else:  # a value, or a whole settings object
            keys.append(re.escape(prefix + name))
        if ref:
            keys += _dotted(defs[ref.rsplit("/", 1)[-1]], defs, f"{prefix}{name}.")
    return keys


def experiment_schema() -> dict[str, Any]:
    """The schema of a whole experiment file."""
    run = run_schema()
    defs = run.pop("$defs", {})
    keys = {"pattern": f"^({'|'.join(_dotted(run, defs))})$"}
    sections = copy.deepcopy(_SECTION)
    for section in ("grid", "zip"):
        sections[section] |= {"propertyNames": keys, "additionalProperties": {"type": "array", "minItems": 1}}
    properties = {key: run if key == "base" else sections[key] for key in TOP_LEVEL_KEYS}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "nst experiment file",
            "description": "A sweep: a base run, what varies, and what the report judges (nst experiment FILE).",
            "type": "object", "properties": properties, "required": ["name"], "additionalProperties": False,
            "$defs": defs}


def schema_text() -> str:
    return json.dumps(experiment_schema(), indent=1) + "\n"


def main() -> int:
    """`make schema`: write experiments/schema.json."""
    path = Path(__file__).resolve().parents[2] / "experiments" / SCHEMA_FILE
    path.write_text(schema_text())
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
