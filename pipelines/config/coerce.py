"""Plain data (parsed YAML, `--set` values) into validated settings objects (dataclasses, pydantic models), by pydantic.

pydantic checks every key by name, every value against its field's type (finite numbers only,
non-empty strings) and runs the dataclasses' own `__post_init__` checks; this module adds only what
is nst's: the looser forms a user may write (one value for a list, a list of layer names for a map
of layer weights), and one line per error that names the key, what was expected and, for an unknown
key, the closest valid one. Its errors are ConfigErrors.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from nst import config as nst_config
from pipelines.errors import UserError


class ConfigError(UserError):
    """A config value or key is wrong; the message names it."""


#: How strict pydantic is with a settings object: no unknown key, no inf or NaN (no run can use
#: them), no empty string. YAML 1.1 reads 1e-4 (no dot) as a string: pydantic's lax mode takes it.
CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False, str_min_length=1)

# nst's dataclasses stay free of pydantic; the loader says how strictly they are read (a subclass,
# such as RunConfig, inherits it).
for _cls in (nst_config.TransferConfig, nst_config.OptimizerConfig, nst_config.LayersConfig,
             nst_config.BackboneConfig, nst_config.StopConfig):
    _cls.__pydantic_config__ = CONFIG  # type: ignore[union-attr]


@functools.cache  # evaluating the annotations costs more than building the config (a grid builds thousands)
def hints(cls: Any) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@functools.cache
def _adapter(tp: Any) -> TypeAdapter[Any]:
    # A settings object carries its own config; a bare field type (a grid's varied value) is given it.
    return TypeAdapter(tp) if _keys(tp) is not None else TypeAdapter(tp, config=CONFIG)


def build(cls: type, data: Mapping[str, Any]) -> Any:
    """An instance of settings object `cls` (a dataclass or a pydantic model) from a mapping, validated."""
    return coerce(cls, data, "")


def coerce(tp: Any, value: Any, key: str) -> Any:
    """`value` as type `tp` (a dataclass or a field's type), or a ConfigError naming `key`'s part
    that is wrong and what was expected."""
    try:
        return _adapter(tp).validate_python(_loosened(tp, value, key))
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        # Of a union's members, the one that took the value's type but not its value says most
        # (scales: "fine" is not "auto"), not the one that wanted another type (a list).
        telling = next((e for e in errors if not e["type"].endswith("_type")), errors[0])
        raise ConfigError(_message(tp, key, telling)) from None


# -- the looser forms ---------------------------------------------------------------------------------
def _options(tp: Any) -> tuple[Any, ...]:
    """The types a field may hold: a union's members, else the type itself."""
    return typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)


def _loosened(tp: Any, value: Any, key: str) -> Any:
    """`value` with nst's looser forms written out in full: one value where a list is expected (unless
    the field also takes one value, as `style` takes one path and `scales` "auto"), a list of layers where a map of
    weights is (equal weights summing to 1). A boolean where a number is expected is refused here:
    pydantic would read YAML's `yes` as 1. Anything else is left for pydantic to judge."""
    options = _options(tp)
    kinds = {type(v) for o in options if typing.get_origin(o) is typing.Literal for v in typing.get_args(o)}
    kinds |= {typing.get_origin(o) or o for o in options}
    dataclass = next((o for o in options if dataclasses.is_dataclass(o)), None)
    if dataclass is not None and isinstance(value, Mapping):
        fields = hints(dataclass)  # type: ignore[arg-type]  # a class is hashable; mypy's cache stub doubts it
        dotted = f"{key}." if key else ""
        return {k: _loosened(fields[k], v, dotted + k) if k in fields else v for k, v in value.items()}
    if isinstance(value, bool) and bool not in kinds and kinds & {int, float}:
        raise ConfigError(f"{key}: expected a number, got {_describe(value)}")
    if tuple in kinds and not isinstance(value, list | tuple):
        items = {typing.get_args(o)[0] for o in options if typing.get_origin(o) is tuple}
        return value if type(value) in kinds or items & kinds else [value]
    if dict in kinds and isinstance(value, list | tuple):
        return {v: 1.0 / len(value) for v in value}
    return value


# -- one line per error ---------------------------------------------------------------------------
def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _keys(tp: Any) -> dict[str, Any] | None:
    """The keys of a settings object (a dataclass or a pydantic model) and their types; None: not one."""
    for option in _options(tp):
        if dataclasses.is_dataclass(option):
            return hints(option)  # type: ignore[arg-type]  # as above
        if isinstance(option, type) and issubclass(option, BaseModel):
            return {name: f.annotation for name, f in option.model_fields.items()}
    return None


def _path(tp: Any, loc: tuple[Any, ...]) -> tuple[list[str], Any, str | None, Any]:
    """The error's location as the user wrote it (the names of a union's members, which pydantic
    adds, left out), the settings object whose key it is at or under, that key, and the type there."""
    parts: list[str] = []
    holder, key, node = None, None, tp
    for part in loc:
        keys = _keys(node)
        if keys is not None and isinstance(part, str):  # a settings object's key, or an unknown one
            parts.append(part)
            holder, key, node = node, part, keys.get(part)
        elif isinstance(part, int):  # an item of a list
            parts[-1:] = [f"{parts[-1] if parts else ''}[{part}]"]
            sequence = next((o for o in _options(node) if typing.get_origin(o) in (list, tuple)), None)
            node = typing.get_args(sequence)[0] if sequence is not None else None
        elif dict in {typing.get_origin(o) for o in _options(node)}:  # a name in a mapping (a layer, a grid key)
            parts.append(str(part))
            node = typing.get_args(node)[-1]
        # else: the name of a union's member that pydantic tried: not part of the key
    return parts, holder, key, node


def _message(tp: Any, key: str, error: Mapping[str, Any]) -> str:
    parts, holder, name, node = _path(tp, tuple(error["loc"]))
    where = ".".join([key, *parts] if key else parts)
    kind, text = error["type"], error["msg"]
    if kind in ("unexpected_keyword_argument", "extra_forbidden") and holder is not None and name is not None:
        names = list(_keys(holder) or ())
        close = difflib.get_close_matches(name, names, n=1)
        prefix = where.rpartition(".")[0]
        if not close:
            return f"unknown key '{where}'; valid keys: {', '.join(names)}"
        return f"unknown key '{where}'; did you mean '{prefix + '.' if prefix else ''}{close[0]}'?"
    field = getattr(holder, "model_fields", {}).get(name)  # a pydantic model's key says what it holds
    about = f"; {name}: {field.description}" if field is not None and field.description else ""
    if kind == "missing":
        return f"missing key '{where}'{about}"
    if kind == "value_error":  # a settings object's own check; its message mostly starts with its key
        text = text.removeprefix("Value error, ")
        own = text.split(" ", 1)[0].split(".", 1)[0] in (_keys(node) or ())
        return f"{where}.{text}" if where and own else f"{where}: {text}" if where else text
    return f"{where}: {text[:1].lower()}{text[1:]}, got {_describe(error['input'])}{about}"
