"""The CLI face of :mod:`lipsync.options`: click options generated from the options model, so
``lipsync run`` and ``lipsync track`` have the API's names (in dash form), defaults, ranges and
descriptions, and an out-of-range value fails exactly as in the API (the model validates it).

Click only parses the text into a number, a flag or a word; ranges and choices are the model's to check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, get_args

import click
from pydantic.fields import FieldInfo

from lipsync.options import (
    GROUPS,
    field_bounds,
    field_choices,
    field_meta,
    parse_options,
)
from lipsync.options_doc import cli_flag

F = Callable[..., Any]


def _range_text(info: FieldInfo) -> str:
    lo, hi = field_bounds(info)
    if lo is None and hi is None:
        return ""
    fmt = (lambda v: f"{v:g}") if isinstance(lo, float) or isinstance(hi, float) else str
    return f"{fmt(lo) if lo is not None else '...'}-{fmt(hi) if hi is not None else '...'}"


def _default_text(info: FieldInfo) -> str:
    default = info.get_default(call_default_factory=True)
    if default is None:
        return str(field_meta(info).get("none_means", "unset"))
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, list):
        return " ".join(str(v) for v in default)
    return str(default)


def help_text(info: FieldInfo) -> str:
    """``--help`` text: the model's description, its range or choices, and its default."""
    parts = [info.description or ""]
    choices = field_choices(info)
    bounds = _range_text(info)
    if choices:
        parts.append(f"One of: {', '.join(choices)}.")
    elif bounds:
        parts.append(f"Range {bounds}.")
    parts.append(f"[default: {_default_text(info)}]")
    return " ".join(p for p in parts if p)


def _scalar_type(info: FieldInfo) -> Any:
    annotation = info.annotation
    args = [a for a in get_args(annotation) if a is not type(None)]
    base = args[0] if args and getattr(annotation, "__origin__", None) is not list else annotation
    if getattr(annotation, "__origin__", None) is list:
        return click.INT
    if base is bool:
        return bool
    if base is int:
        return click.INT
    if base is float:
        return click.FLOAT
    return click.STRING  # choices: the model checks them, with the API's message


def cli_fields(model: type) -> list[tuple[str, FieldInfo]]:
    """The model's fields that the CLI offers, grouped as the README lists them."""
    fields = [(n, f) for n, f in model.model_fields.items() if field_meta(f).get("cli", True)]
    return sorted(fields, key=lambda nf: GROUPS.index(field_meta(nf[1]).get("group", GROUPS[-1])))


def add_options(model: type) -> Callable[[F], F]:
    """A decorator adding one click option per field of ``model``. Every option defaults to "not given"
    (None), so the model's own default applies and is the only one there is."""

    def decorate(command: F) -> F:
        for name, info in reversed(cli_fields(model)):
            meta = field_meta(info)
            flag = cli_flag(name)
            names = [flag, *meta.get("cli_aliases", [])]
            kind = _scalar_type(info)
            if kind is bool:
                decl = [f"{flag}/--no-{flag[2:]}"]
                command = click.option(*decl, name, default=None, help=help_text(info))(command)
                continue
            kwargs: dict[str, Any] = {"type": kind, "default": None, "help": help_text(info)}
            if getattr(info.annotation, "__origin__", None) is list:
                kwargs["nargs"] = info.metadata[0].min_length if info.metadata else 4
                kwargs["metavar"] = meta.get("cli_metavar")
            elif field_choices(info):
                kwargs["metavar"] = "[" + "|".join(field_choices(info) or ()) + "]"
            command = click.option(*names, name, **kwargs)(command)
            if "cli_flag_off" in meta:
                off = meta["cli_flag_off"]
                command = click.option(
                    off, f"_{name}_off", is_flag=True, default=False, help=f"Same as {flag} off."
                )(command)
        return command

    return decorate


def options_from_cli(model: type, params: dict[str, Any]) -> Any:
    """Pop the model's options out of a command's keyword arguments and validate them into ``model``.
    Values left unset take the model's defaults; a bad one raises OptionsInvalid naming the field."""
    given: dict[str, Any] = {}
    for name, _info in cli_fields(model):
        value = params.pop(name, None)
        if params.pop(f"_{name}_off", False):
            if value not in (None, "off"):
                raise click.UsageError(f"{cli_flag(name)} {value} contradicts --no-{name}")
            value = "off"
        if value is not None:
            given[name] = list(value) if isinstance(value, tuple) else value
    return parse_options(model, given)
