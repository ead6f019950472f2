"""Typed configuration: TOML, then environment, then flags, merged once.

A configuration is a tree of frozen dataclasses. `load` checks every value against
the field's type and names the key in every error (``listen.port: must be an
integer``); unknown keys are errors too, so that a typo never passes silently.
Environment variables override file values as ``PREFIX_SECTION_KEY`` (for example
``TENTACLE_LISTEN_PORT=10934``). `dump` writes the tree back as TOML.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from tentacle.errors import ConfigError

T = TypeVar("T")


def read(path: Path) -> dict[str, Any]:
    """The TOML document at `path` ({} when the file does not exist)."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def load(cls: type[T], data: Mapping[str, Any], env: Mapping[str, str], prefix: str) -> T:
    """Build `cls` from `data`, with environment overrides under `prefix`."""
    return _build(cls, data, env, prefix.upper(), "")


def _build(cls: type[T], data: Any, env: Mapping[str, str], prefix: str, path: str, base: Any = None) -> T:
    """`cls` from the table ``data``; a key it lacks keeps its value in ``base`` (the field's
    own default, e.g. port 10943 for ``[polling]``) or else the class's default."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path.rstrip('.') or 'config'}: must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in fields:
            raise ConfigError(f"{path}{key}: unknown key")
    values: dict[str, Any] = {}
    for name, field in fields.items():
        key_path, variable = f"{path}{name}", f"{prefix}_{name.upper()}"
        hint = hints[name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            values[name] = _build(hint, data.get(name, {}), env, variable, key_path + ".", _default(field))
        elif variable in env:
            values[name] = _coerce(hint, _parse_env(env[variable], hint), f"{key_path} (${variable})")
        elif name in data:
            values[name] = _coerce(hint, data[name], key_path)
        elif base is not None:
            values[name] = getattr(base, name)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key_path}: missing")
    return _construct(cls, values, path)


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None if field.default is dataclasses.MISSING else field.default


def _construct(cls: type[T], values: dict[str, Any], path: str) -> T:
    try:
        return cls(**values)
    except ValueError as exc:  # __post_init__ validation names its own key, within its table
        message = str(exc)
        raise ConfigError(message if message.startswith(path) else path + message) from exc


def _parse_env(text: str, hint: Any) -> Any:
    if hint is str or hint == str | None:
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _coerce(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in typing.get_args(hint):
            return None
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(inner[0], value, path)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: must be a table")
        key_hint, item = typing.get_args(hint)
        return {_coerce(key_hint, k, path): _coerce(item, v, f"{path}.{k}") for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: must be a list")
        item = typing.get_args(hint)[0]
        return tuple(_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{path}: must be {_type_name(hint)}, not {type(value).__name__}")
    return value


def _type_name(hint: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(hint, str(hint))


def dump(config: Any) -> str:
    """TOML text for a configuration dataclass (None values are left out)."""
    lines: list[str] = []
    tables: list[tuple[str, Any]] = []
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            tables.append((field.name, value))
        elif value is not None:
            lines.append(f"{field.name} = {_toml_value(value)}")
    for name, table in tables:
        lines.append(f"\n[{name}]")
        lines.extend(dump(table).splitlines())
    return "\n".join(lines).strip() + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic strings
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")
