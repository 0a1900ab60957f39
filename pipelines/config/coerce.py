"""Plain data (parsed YAML, `--set` values) into validated, typed dataclasses: every key checked by
name (an unknown one gets the closest valid one), every value coerced to its field's type, and every
error a ConfigError naming the key and what was expected."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Any

from pipelines.errors import UserError


class ConfigError(UserError):
    """A config value or key is wrong; the message names it."""


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def coerce(tp: Any, value: Any, key: str) -> Any:
    """`value` as type `tp`, or ConfigError naming `key` and what was expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return coerce(option, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping of {field_names(tp)}, got {describe(value)}")
        return build(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {describe(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {describe(value)}")
    if tp is float:
        number = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        # YAML 1.1 reads 1e-4 (no dot) as a string; accept what is plainly a number.
        elif isinstance(value, str) and _NUMBER.match(value.strip()):
            number = float(value)
        if number is None:
            raise ConfigError(f"{key}: expected a number, got {describe(value)}")
        if not math.isfinite(number):  # .inf, .nan, 1e999: no run can use them
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str) and value:
            return value
        raise ConfigError(f"{key}: expected a non-empty string, got {describe(value)}")
    if origin is tuple:
        item = typing.get_args(tp)[0]
        items = value if isinstance(value, list | tuple) else [value]
        return tuple(coerce(item, v, f"{key}[{i}]") for i, v in enumerate(items))
    if origin is dict:
        _, item = typing.get_args(tp)
        if isinstance(value, list | tuple):  # a list of layers: equal weights summing to 1
            value = {v: 1.0 / len(value) for v in value} if value else {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping (or a list), got {describe(value)}")
        return {str(k): coerce(item, v, f"{key}.{k}") for k, v in value.items()}
    raise TypeError(f"unsupported config type {tp!r} for {key}")  # a bug, not a user error


def field_names(cls: type) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls))


@functools.cache  # evaluating the annotations costs more than building the config (a grid builds thousands)
def hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def build(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """An instance of dataclass `cls` from a mapping, validated; keys are checked by name."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    field_types = hints(cls)
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {field_names(cls)}"
            raise ConfigError(f"unknown key '{prefix}{key}'{hint}")
    missing = [
        n for n, f in fields.items()
        if n not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"missing key '{prefix}{missing[0]}'")
    kwargs = {k: coerce(field_types[k], v, f"{prefix}{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise ConfigError(f"{prefix}{exc}") from None
