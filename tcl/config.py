"""Dataclass configs <-> plain dicts, YAML files and `key.sub=value` command-line overrides.

Each default lives in exactly one dataclass; YAML files and overrides only replace values."""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Sequence, TypeVar

import yaml

T = TypeVar("T")


def to_dict(config: Any) -> dict:
    """Nested dataclass -> plain dict (tuples become lists, for YAML/JSON)."""
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value
    return plain(config)


def _dataclass_type(annotation: Any) -> type | None:
    """The dataclass in a field's type, if any (`X`, `X | None`)."""
    if dataclasses.is_dataclass(annotation):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def from_dict(cls: type[T], values: dict | None) -> T:
    """Plain dict -> dataclass `cls`, recursively; unknown keys are an error that names them."""
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} option(s) {unknown}; known: {sorted(names)}")
    kwargs = {}
    for name, value in values.items():
        nested = _dataclass_type(hints[name])
        if nested is not None and isinstance(value, dict):
            value = from_dict(nested, value)
        elif isinstance(value, list) and typing.get_origin(hints[name]) is tuple:
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def apply_overrides(values: dict, overrides: Sequence[str]) -> dict:
    """Apply `a.b.c=value` strings (value parsed as YAML: numbers, booleans, null, lists) to a dict."""
    values = dict(values)
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise ValueError(f"override {override!r} is not of the form key.sub=value")
        node = values
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[parts[-1]] = yaml.safe_load(raw)
    return values


def load(cls: type[T], path: str | None = None, overrides: Sequence[str] = ()) -> T:
    """Defaults of `cls`, then the YAML file at `path`, then the overrides."""
    values = to_dict(cls())
    if path:
        with open(path) as f:
            loaded = yaml.safe_load(f) or {}
        values = _merge(values, loaded)
    return from_dict(cls, apply_overrides(values, overrides))


def _merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
