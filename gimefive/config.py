"""Typed configuration: dataclasses filled from ``configs/*.yaml`` and command-line overrides.

The default files ship inside the package (``gimefive.configs``, the top-level
``configs/`` folder); :func:`shipped_config` finds them in a checkout and in a wheel install.

Unknown keys and wrongly typed values are errors that name the key, the expected type
and what was given, so a typo in a YAML file never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from gimefive.errors import GimefiveError

T = TypeVar("T")


def shipped_config(name: str) -> Path:
    """Path of a shipped default config (``configs/NAME``) wherever gimefive is installed.

    Read through importlib.resources so that no code assumes a checkout beside the package.
    """
    return Path(str(resources.files("gimefive.configs") / name))


def _coerce(name: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(name, value, args[0])
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise GimefiveError(f"config key {name!r}: expected a list, got {value!r}")
        (inner, *_) = typing.get_args(hint) or (Any,)
        return origin(_coerce(name, v, inner) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise GimefiveError(f"config key {name!r}: expected true/false, got {value!r}")
    if hint in (int, float, str):
        if isinstance(value, bool) or (hint is int and isinstance(value, float)
                                       and not value.is_integer()):
            raise GimefiveError(f"config key {name!r}: expected {hint.__name__}, got {value!r}")
        try:
            return hint(value)
        except (TypeError, ValueError):
            raise GimefiveError(
                f"config key {name!r}: expected {hint.__name__}, got {value!r}") from None
    return value


def from_dict(cls: type[T], data: dict[str, Any], source: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and bad types."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise GimefiveError(
            f"{source}: unknown key(s) {unknown}; expected some of {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _coerce(k, v, hints[k]) for k, v in data.items()})


def load_config(cls: type[T], path: str | Path | None = None, **overrides: Any) -> T:
    """Defaults from the dataclass, then the YAML file, then non-None ``overrides``."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise GimefiveError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise GimefiveError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
        if not isinstance(loaded, dict):
            raise GimefiveError(f"{path}: expected a mapping of keys to values")
        data.update(loaded)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(cls, data, source=str(path or cls.__name__))


def to_dict(config: Any) -> dict[str, Any]:
    def plain(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        return v
    return {k: plain(v) for k, v in dataclasses.asdict(config).items()}


def save_config(config: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML (beside the artifact it produced)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    return path
