"""The job settings as documentation and as data: the README's generated table (``python -m
lipsync.options_doc --markdown``) and GET /options, both read from :mod:`lipsync.options`."""

from __future__ import annotations

import json
from typing import Any

from pydantic.fields import FieldInfo

from lipsync.options import (
    GROUPS,
    TRACKING,
    LipSyncOptions,
    _Options,
    field_bounds,
    field_choices,
    field_meta,
)


def cli_flag(name: str) -> str:
    """The CLI spelling of a setting: the API's name in dash form."""
    return "--" + name.replace("_", "-")


def _type_text(info: FieldInfo) -> str:
    choices = field_choices(info)
    if choices:
        return "string"
    text = str(info.annotation)
    for word in ("list", "bool", "float", "int"):
        if word in text:
            return {"list": "int[4]"}.get(word, word)
    return "string"


def default_text(info: FieldInfo) -> str:
    default = info.get_default(call_default_factory=True)
    if default is None:
        return field_meta(info).get("none_means", "unset")
    return json.dumps(default)


def _allowed_text(info: FieldInfo) -> str:
    choices = field_choices(info)
    if choices:
        return ", ".join(f"`{c}`" for c in choices)
    lo, hi = field_bounds(info)
    if lo is None and hi is None:
        return ""
    each = "each " if isinstance(info.get_default(call_default_factory=True), list) else ""
    return f"{each}{lo:g}–{hi:g}" if lo is not None and hi is not None else f"{lo}–{hi}"


def options_markdown() -> str:
    """The README's table of job settings, generated from the model (a test keeps the README in step)."""
    rows = [
        "| API field | CLI | type | default | allowed | jobs | description |",
        "|---|---|---|---|---|---|---|",
    ]
    for group in GROUPS:
        for name, info in LipSyncOptions.model_fields.items():
            meta = field_meta(info)
            if meta.get("group") != group:
                continue
            shown = default_text(info)
            flags = [cli_flag(name)]
            if _type_text(info) == "bool":
                flags.append(f"--no-{name.replace('_', '-')}")
            cli = "—" if meta.get("cli") is False else " ".join(
                [*(f"`{f}`" for f in flags), *(f"`{a}`" for a in meta.get("cli_aliases", [])),
                 *([f"`{meta['cli_flag_off']}`"] if "cli_flag_off" in meta else [])]
            )
            kinds = ", ".join("/face-tracking, track" if k == TRACKING else "lipsync, run" for k in meta["kinds"])
            rows.append(
                f"| `{name}` | {cli} | {_type_text(info)} | `{shown}` | {_allowed_text(info)} | {kinds} "
                f"| {group}: {info.description} |"
            )
    return "\n".join(rows) + "\n"


def option_schema(model: type[_Options] = LipSyncOptions) -> dict[str, Any]:
    """The settings as plain data for forms (GET /options): the order, groups and texts of the model."""
    fields = []
    for name, info in model.model_fields.items():
        meta = field_meta(info)
        lo, hi = field_bounds(info)
        fields.append({
            "name": name, "type": _type_text(info), "default": info.get_default(call_default_factory=True),
            "min": lo, "max": hi, "choices": list(field_choices(info) or []) or None,
            "nullable": "None" in str(info.annotation), "description": info.description or "",
            "group": meta.get("group"), "kinds": meta.get("kinds", []), "alias_of": meta.get("alias_of"),
            "default_text": default_text(info),
        })
    return {"groups": list(GROUPS), "fields": fields}


if __name__ == "__main__":  # python -m lipsync.options_doc --markdown
    import sys

    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m lipsync.options_doc --markdown")
    sys.stdout.write(options_markdown())
