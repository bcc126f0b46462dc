"""Strict conversion between plain mappings (YAML) and frozen dataclasses.

Unknown keys, wrong types and values outside a ``Literal`` are rejected with the
dotted path of the offending key, so a typo in ``params.yaml`` never runs silently.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import types
import typing
from typing import Any, Literal, Mapping, TypeVar, Union

import yaml

from ddmops.errors import ConfigError

T = TypeVar("T")
_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """The resolved field annotations of a dataclass (resolved once: many configs share classes)."""
    return typing.get_type_hints(cls)


def from_dict(cls: type[T], data: Any, path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; missing keys take their defaults."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{_where(path)}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(_unknown_key(path, key, list(fields)))
        kwargs[key] = _convert(hints[key], value, _join(path, key))
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_where(_join(path, name))}: required key is missing")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:  # __post_init__ validation
        raise ConfigError(f"{_where(path)}: {exc}") from None


def check_ranges(obj: Any, *, positive: tuple[str, ...] = (), nonnegative: tuple[str, ...] = (),
                 unit: tuple[str, ...] = ()) -> None:
    """For ``__post_init__``: raise ValueError naming the first field out of range
    (positive: > 0, nonnegative: >= 0, unit: in [0, 1]); None values are not checked."""
    for names, ok, what in ((positive, lambda v: v > 0, "> 0"), (nonnegative, lambda v: v >= 0, ">= 0"),
                            (unit, lambda v: 0 <= v <= 1, "in [0, 1]")):
        for name in names:
            value = getattr(obj, name)
            if value is not None and not ok(value):
                raise ValueError(f"{name} must be {what}, got {value}")


def to_dict(obj: Any) -> Any:
    """Inverse of :func:`from_dict`: dataclasses to dicts, tuples to lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = _join(prefix, key)
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. train_prior.clean.lr=0.001")
        set_path(data, key.strip(), yaml.safe_load(raw) if raw.strip() else "", what=f"override {item!r}")
    return data


def set_path(data: dict[str, Any], key: str, value: Any, what: str = "") -> None:
    """``data[a][b] = value`` for ``key`` 'a.b', making sections on the way."""
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{what or repr(key)}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(option, value, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{_where(path)}: {value!r} fits none of {options}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{_where(path)}: {value!r} is not one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{_where(path)}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{_where(path)}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:  # dict[str, X]: free keys, typed values
        if not isinstance(value, Mapping):
            raise ConfigError(f"{_where(path)}: expected a mapping, got {value!r}")
        return {str(k): _convert(args[1], v, _join(path, str(k))) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{_where(path)}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{_where(path)}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            return float(value)  # 1e-4: a number in YAML 1.2 (DVC), a string to PyYAML
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{_where(path)}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{_where(path)}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {path}")


def _unknown_key(path: str, key: Any, accepted: list[str]) -> str:
    msg = f"{_where(_join(path, str(key)))}: unknown key"
    close = difflib.get_close_matches(str(key), accepted, n=1)
    if close:
        msg += f" (did you mean {_join(path, close[0])!r}?)"
    return msg + f"; accepted keys here: {', '.join(accepted)}"


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _where(path: str) -> str:
    return f"'{path}'" if path else "params"
