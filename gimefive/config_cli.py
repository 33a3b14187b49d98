"""Click options generated from a config dataclass's :func:`~gimefive.config.setting` fields.

A command lists which fields it offers; each becomes an option with the field's help, its
choices (``click.Choice``) or range (a ``click.BadParameter`` naming it) and the dataclass
default shown in ``--help``. Only flags the user actually gave are passed on as overrides,
so a value from a ``--config`` file is never replaced by a flag's shown default.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable
from typing import Any

import click
from click.core import ParameterSource

from gimefive.config import violates

GIVEN = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT, ParameterSource.PROMPT)


def _range_check(field: dataclasses.Field) -> Callable:
    def check(ctx, param, value):
        if (wanted := violates(field, value)) is not None:
            raise click.BadParameter(f"must be {wanted}, got {value}")
        return value
    return check


def _scalar_type(hint: Any) -> Any:
    """``int | None`` -> int: the type a flag's value is parsed as."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _option(cls: type, field: dataclasses.Field, extra: dict[str, Any]) -> Callable:
    meta, hint = field.metadata, _scalar_type(typing.get_type_hints(cls)[field.name])
    default = field.default_factory() if field.default is dataclasses.MISSING \
        else field.default
    kwargs: dict[str, Any] = {"help": meta["help"], "default": default,
                              "show_default": default is not None}
    if hint is bool:  # a switch that turns the default over: --landmarks68, --no-cam
        flags = meta.get("flag") or f"--{'no-' if default else ''}{field.name.replace('_', '-')}"
        kwargs.update(is_flag=True, flag_value=not default, show_default=False)
    else:
        flags = meta.get("flag") or f"--{field.name.replace('_', '-')}"
        kwargs["type"] = click.Choice(meta["choices"]) if meta.get("choices") else \
            click.Path() if meta.get("path") else hint
        if meta.get("min") is not None or meta.get("max") is not None:
            kwargs["callback"] = _range_check(field)
    kwargs.update(extra)
    return click.option(*flags.split(), field.name, **kwargs)  # flag "-o --out": both


def config_options(cls: type, *names: str, dest: str = "overrides",
                   **extra: dict[str, Any]) -> Callable:
    """Decorator: options for fields ``names`` of ``cls``; the command receives the ones
    given on the command line as one dict keyword ``dest`` (field name -> value), ready
    for ``load_config(cls, path, **overrides)``. ``extra[name]`` adjusts one option's
    click arguments (a metavar, a parsing callback)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(names) - set(fields))
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {unknown}")

    def decorate(command: Callable) -> Callable:
        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            ctx = click.get_current_context()
            given = {name: kwargs.pop(name) for name in names}
            kwargs[dest] = {name: value for name, value in given.items()
                            if ctx.get_parameter_source(name) in GIVEN}
            return command(*args, **kwargs)

        for name in reversed(names):
            wrapper = _option(cls, fields[name], extra.get(name, {}))(wrapper)
        return wrapper
    return decorate
