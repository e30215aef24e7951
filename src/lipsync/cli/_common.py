"""Pieces every subcommand shares: the ``--character`` syntax and tqdm progress bars."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import click

from lipsync.types import Character

_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def parse_character_specs(values: tuple[str, ...] | list[str]) -> tuple[Character, ...]:
    """``ID:NAME:IMAGE`` strings -> characters. The image part may itself contain ':' (Windows drive
    letters); repeating an ID adds another reference image to that character. Raises click.BadParameter
    naming the offending value."""
    order: list[str] = []
    names: dict[str, str] = {}
    images: dict[str, list[Path]] = {}
    for value in values:
        parts = value.split(":", 2)
        if len(parts) != 3:
            raise click.BadParameter(
                f"{value!r} is not ID:NAME:IMAGE (e.g. host:Jane Doe:refs/jane.jpg)", param_hint="--character"
            )
        cid, name, image = (p.strip() for p in parts)
        if not _ID.match(cid):
            raise click.BadParameter(
                f"{value!r}: the ID must be 1-64 letters, digits, '_', '.' or '-'", param_hint="--character"
            )
        if not image:
            raise click.BadParameter(f"{value!r}: the IMAGE part is empty", param_hint="--character")
        path = Path(image).expanduser()
        if not path.is_file():
            raise click.BadParameter(
                f"{value!r}: reference image {path} does not exist", param_hint="--character"
            )
        name = name or cid
        if cid in names:
            if name not in (names[cid], cid):
                raise click.BadParameter(
                    f"{value!r}: character {cid!r} was already named {names[cid]!r}", param_hint="--character"
                )
        else:
            order.append(cid)
            names[cid] = name
            images[cid] = []
        images[cid].append(path)
    return tuple(Character(cid, names[cid], tuple(images[cid])) for cid in order)


def attach_character_audio(
    characters: tuple[Character, ...], values: tuple[str, ...] | list[str]
) -> tuple[Character, ...]:
    """``ID=PATH`` strings (``--character-audio``) -> the characters with their own driving tracks.
    Raises click.BadParameter naming the value: an unknown ID, an ID given twice, a missing file."""
    tracks: dict[str, Path] = {}
    known = {c.id for c in characters}
    for value in values:
        cid, sep, path_text = value.partition("=")
        cid, path_text = cid.strip(), path_text.strip()
        if not sep or not cid or not path_text:
            raise click.BadParameter(f"{value!r} is not ID=PATH (e.g. host=stems/jane.wav)",
                                     param_hint="--character-audio")  # fmt: skip
        if cid not in known:
            given = ", ".join(repr(c) for c in sorted(known)) or "none (add --character ID:NAME:IMAGE)"
            raise click.BadParameter(f"{value!r}: no character has the ID {cid!r} (characters: {given})",
                                     param_hint="--character-audio")  # fmt: skip
        if cid in tracks:
            raise click.BadParameter(f"{value!r}: character {cid!r} already has an audio track",
                                     param_hint="--character-audio")  # fmt: skip
        path = Path(path_text).expanduser()
        if not path.is_file():
            raise click.BadParameter(f"{value!r}: audio file {path} does not exist", param_hint="--character-audio")
        tracks[cid] = path
    return tuple(replace(c, audio=tracks.get(c.id, c.audio)) for c in characters)


class ProgressBar:
    """A tqdm bar on stderr that opens on the first update and starts afresh whenever the label changes,
    so one object serves a multi-stage ``(label, done, total)`` callback. ``unit="B"`` shows bytes."""

    def __init__(self, enabled: bool = True, *, unit: str = "frame", labels: dict[str, str] | None = None):
        self.enabled, self.unit, self.labels = enabled, unit, labels or {}
        self.label: str | None = None
        self.bar = None

    def update(self, label: str, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        if label != self.label:
            self.close()
            self.label = label
        if self.bar is None:
            from tqdm import tqdm  # only when a bar is really shown

            scale = {"unit_scale": True, "unit_divisor": 1024} if self.unit == "B" else {}
            self.bar = tqdm(total=total or None, desc=self.labels.get(label, label), unit=self.unit, **scale)
        if total and self.bar.total != total:
            self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def for_label(self, label: str):
        """A ``(done, total)`` callback bound to one label (downloads, single-stage work)."""
        return lambda done, total: self.update(label, done, total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
