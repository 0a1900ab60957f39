"""A JSON Schema of experiment files, for editors (`make schema` writes experiments/schema.json).

A shipped experiment file names it in its first line, `# yaml-language-server: $schema=schema.json`,
so an editor with a YAML language server (VS Code's YAML extension, say) completes the keys, shows
their defaults (and the settings objects' descriptions), and underlines an unknown key or a wrong type
as it is typed.

It is made by pydantic from the classes the files are validated into: ExperimentFile for the file's
own keys, RunConfig (and the nst.config classes inside it) for one run's, so its keys, types, defaults
and descriptions follow them. Only what the loader accepts beyond those types is added here: a single
value for a list, a list of layer names for a map of layer weights (equal weights). A grid's keys are
the dotted names of the run's fields. nst's loader (pipelines.config) stays the judge of what runs: it
also checks what a schema cannot say (a VGG layer's name, a zip's equal lengths, an image file).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from pipelines.config.experiment_file import ExperimentFile
from pipelines.config.runs import RunConfig

SCHEMA_FILE = "schema.json"  # beside the experiment files
MODELINE = f"# yaml-language-server: $schema={SCHEMA_FILE}"

def run_schema() -> dict[str, Any]:
    """The schema of one run's keys (an experiment's `base`), with its definitions in `$defs`."""
    schema = TypeAdapter(RunConfig).json_schema()
    _as_loaded(schema)  # its $defs too
    return schema


def _as_loaded(node: Any) -> None:
    """In place: nothing required in a settings object (a preset or the grid may give it), a single
    value wherever a list is expected, a list of names wherever a map of weights is."""
    if isinstance(node, list):
        for item in node:
            _as_loaded(item)
        return
    if not isinstance(node, dict):
        return
    for value in list(node.values()):
        _as_loaded(value)
    if "properties" in node:
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
    """The schema of a whole experiment file: the file's own keys (ExperimentFile), one run's under
    `base`, and a grid's or zip's keys named as the run's dotted keys."""
    run = run_schema()
    defs = run.pop("$defs", {})
    schema = ExperimentFile.model_json_schema()
    defs |= schema.pop("$defs", {})  # the file's own (a claim)
    properties = schema["properties"]
    properties["base"] = run | {"description": properties["base"]["description"]}
    for section in ("grid", "zip"):
        properties[section]["propertyNames"] = {"pattern": f"^({'|'.join(_dotted(run, defs))})$"}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema, "$defs": defs}


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
