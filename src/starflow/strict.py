"""Typed dataclass configs read strictly: the one reader every config of the package goes through.

`from_mapping(cls, data, where)` builds a dataclass from a mapping (YAML, JSON, command-line overrides):
an unknown key is an error naming the known ones (a typo must not fall back to a default silently), and
each value must already have its field's type. The few conversions are the lossless ones: an int where a
float is meant, an integral float (`1e3`) where an int is meant, a list where a tuple is meant. With
`official=True` (reading the official code's YAML files and checkpoints, which write booleans as 0/1)
the integers 0 and 1 are also read as booleans.

`check_types(obj)` applies the same rule to a dataclass built directly, from its `__post_init__`, so a
config made in Python is checked exactly like one read from a file.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Mapping

__all__ = ["ConfigError", "from_mapping", "check_types", "unknown_keys"]


class ConfigError(ValueError):
    """A configuration key or value that cannot be honoured."""


def unknown_keys(cls, d: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(unknown, known) key names of mapping `d` for dataclass `cls`, sorted."""
    known = {f.name for f in dataclasses.fields(cls)}
    return sorted(set(d) - known, key=str), sorted(known)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _read(value: Any, tp: Any, where: str, official: bool) -> Any:
    """`value` as type `tp`, or ConfigError."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _read(value, a, where, official)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f"{where}: {value!r} is not a {' or '.join(_type_name(a) for a in args)}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where} must be one of {', '.join(map(repr, typing.get_args(tp)))}, not {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        out = [_read(v, inner, f"{where}[{i}]", official) for i, v in enumerate(value)]
        return out if origin is list else tuple(out)
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} keys, got {value!r}")
        return from_mapping(tp, value, where, official=official)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if official and isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: cannot read {value!r} as {_type_name(tp)}")


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_mapping(cls, data: Mapping[str, Any] | None, where: str = "config", *, official: bool = False):
    """Build dataclass `cls` from `data`, strictly (see the module docstring). Nested dataclass fields
    read nested mappings; `where` prefixes every message (e.g. the file and section)."""
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of {cls.__name__} keys, got {type(data).__name__}")
    # a dotted path under a section name ("optim.lr"), or after a description ("model config: sos")
    dotted = where.replace("_", "").replace(".", "").isalnum()
    sep = "." if dotted else ": "
    unknown, known = unknown_keys(cls, data)
    if unknown:
        if dotted:
            raise ConfigError(f"unknown key(s) {', '.join(f'{where}.{k}' for k in unknown)} "
                              f"(known in {where}: {', '.join(known)})")
        raise ConfigError(f"{where}{': ' if where else ''}unknown key(s) {', '.join(map(str, unknown))} "
                          f"(known: {', '.join(known)})")
    hints = _hints(cls)
    kwargs = {k: _read(v, hints[k], f"{where}{sep}{k}" if where else k, official) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        if where and not str(e).startswith(where):
            raise ConfigError(f"{where}: {e}") from None
        raise


def check_types(obj) -> None:
    """Raise ConfigError when a field of dataclass instance `obj` does not hold its declared type
    (for configs built directly in Python; `from_mapping` has converted already)."""
    name = type(obj).__name__
    for f, tp in _hints(type(obj)).items():
        value = getattr(obj, f)
        converted = _read(value, tp, f"{name}.{f}", official=False)
        if converted is not value:   # int -> float, integral float -> int, list -> tuple: the declared type
            object.__setattr__(obj, f, converted)
