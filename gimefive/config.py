"""Typed configuration: dataclasses filled from ``configs/*.yaml`` and command-line overrides.

The dataclass is the schema: each field is declared with :func:`setting`, which carries its
help, range and choices once. Validation (:func:`check_settings`), the command-line options
(:mod:`gimefive.config_cli`) and the shipped YAML files (:func:`render_defaults`, written by
``python -m gimefive.config --write-defaults``) are derived from it, and a test keeps the
shipped files equal to what the dataclasses say.

The default files ship inside the package (``gimefive.configs``, the top-level
``configs/`` folder); :func:`shipped_config` finds them in a checkout and in a wheel install.

Unknown keys and wrongly typed values are errors that name the key, the expected type
and what was given, so a typo in a YAML file never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
import textwrap
import types
import typing
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from gimefive.errors import GimefiveError

T = TypeVar("T")
_MISSING: Any = dataclasses.MISSING


def setting(default: Any = _MISSING, *, help: str, min: float | None = None,
            max: float | None = None, min_open: bool = False, max_open: bool = False,
            choices: typing.Iterable[str] | None = None, flag: str | None = None,
            path: bool = False, factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field that documents itself: its help, valid range or choices, and the
    command-line flag it gets (default ``--name-with-dashes``; ``path``: a file flag).

    Everything else (``__post_init__`` checks, click options and their shown defaults,
    the commented default YAML) reads this metadata, so a setting is described once.
    """
    meta = {"help": help, "min": min, "max": max, "min_open": min_open, "max_open": max_open,
            "choices": tuple(choices) if choices is not None else None, "flag": flag,
            "path": path}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def expected(field: dataclasses.Field) -> str | None:
    """What ``field`` accepts, in words (">= 1", "in (0, 1]", "one of tcp, udp"), if limited."""
    meta = field.metadata
    if meta.get("choices"):
        return "one of " + ", ".join(meta["choices"])
    low, high = meta.get("min"), meta.get("max")
    if low is not None and high is not None:
        return (f"in {'(' if meta['min_open'] else '['}{low:g}, {high:g}"
                f"{')' if meta['max_open'] else ']'}")
    if low is not None:
        return f"{'>' if meta['min_open'] else '>='} {low:g}"
    if high is not None:
        return f"{'<' if meta['max_open'] else '<='} {high:g}"
    return None


def violates(field: dataclasses.Field, value: Any) -> str | None:
    """``expected(field)`` when ``value`` is outside it, else None (None values pass:
    they mean "decided elsewhere", e.g. the shipped weights)."""
    meta = field.metadata
    if value is None or not meta:
        return None
    low, high = meta.get("min"), meta.get("max")
    bad = (meta.get("choices") is not None and value not in meta["choices"]) or \
        (low is not None and (value <= low if meta["min_open"] else value < low)) or \
        (high is not None and (value >= high if meta["max_open"] else value > high))
    return expected(field) if bad else None


def check_settings(config: Any, label: str = "config key") -> None:
    """Raise one line naming the first field whose value its metadata does not allow;
    what every config dataclass's ``__post_init__`` calls."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if (wanted := violates(field, value)) is not None:
            raise GimefiveError(f"{label} {field.name!r}: expected {wanted}, got {value!r}")


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


# ------------------------------------------------------------------- shipped default files
#: shipped file -> its dataclass (imported on use: the dataclasses import this module)
DEFAULT_FILES: dict[str, Callable[[], type]] = {
    "annotate.yaml": lambda: _attr("gimefive.pipeline.config", "AnnotateConfig"),
    "monitor.yaml": lambda: _attr("gimefive.pipeline.live_monitor", "MonitorConfig"),
    "export.yaml": lambda: _attr("gimefive.export.run", "ExportConfig"),
    "train_default.yaml": lambda: _attr("gimefive.train.config", "TrainConfig"),
}


def _attr(module: str, name: str) -> type:
    return getattr(importlib.import_module(module), name)


def render_defaults(cls: type) -> str:
    """The commented default YAML of ``cls``: every field, its help above it, its default.

    The shipped ``configs/*.yaml`` are this text, so the default config file documents
    every setting and never disagrees with the dataclass.
    """
    lines = [f"# Defaults of {cls.__module__}.{cls.__name__}, one entry per setting.",
             "# Generated by `python -m gimefive.config --write-defaults`: edit the "
             "dataclass, not this file.",
             "# A --config file of your own needs only the keys it changes; command-line "
             "flags override both."]
    for field in dataclasses.fields(cls):
        default = field.default_factory() if field.default is _MISSING else field.default
        limits = expected(field)
        tail = " [" + limits.replace(" ", "\0") + "]" if limits else ""  # kept on one line
        lines += ["", *(line.replace("\0", " ") for line in textwrap.wrap(
            field.metadata["help"] + tail, 88, initial_indent="# ", subsequent_indent="# ",
            break_long_words=False))]  # a long list of choices: one line of its own
        lines.append(yaml.safe_dump({field.name: default}, default_flow_style=False,
                                    sort_keys=False, width=1000).rstrip())
    return "\n".join(lines) + "\n"


def write_defaults() -> list[Path]:
    """Rewrite every shipped default file from its dataclass; returns the paths."""
    written = []
    for name, cls in DEFAULT_FILES.items():
        path = shipped_config(name)
        path.write_text(render_defaults(cls()))
        written.append(path)
    return written


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-defaults"]:
        sys.exit("usage: python -m gimefive.config --write-defaults")
    for written_path in write_defaults():
        print(f"wrote {written_path}")
