"""Pieces every subcommand shares: the ``--character`` syntax and tqdm progress bars."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

import click

from lipsync.errors import LipSyncError, MediaError
from lipsync.media._open import check_exists
from lipsync.types import CHARACTER_ID_RULE, Character, is_character_id

#: Exit status of every command that failed on a user-fixable problem (README, "Command line").
ERROR_EXIT = 2


def check_outputs(paths: dict[str, Path | None]) -> None:
    """Refuse, before any work, output paths that cannot be written (a directory, a folder that is a
    file, no permission); missing folders are fine: they are created, by every command alike."""
    from lipsync.media import check_output_file

    for field, path in paths.items():
        if path is not None:
            check_output_file(path, field)


def write_text(path: Path, text: str) -> None:
    """Write a small output file (JSON stats, tracks), creating its folder like the video writers do."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


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
        if not is_character_id(cid):
            raise click.BadParameter(f"{value!r}: the ID must be {CHARACTER_ID_RULE}", param_hint="--character")
        if not image:
            raise click.BadParameter(f"{value!r}: the IMAGE part is empty", param_hint="--character")
        path = Path(image).expanduser()
        if not path.exists():
            raise click.BadParameter(
                f"{value!r}: reference image {path} does not exist", param_hint="--character"
            )
        try:
            check_exists(path, "characters")  # a directory, an empty or unreadable file: the shared words
        except MediaError as exc:
            raise click.BadParameter(f"{value!r}: {exc.message}", param_hint="--character") from None
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


def error_line(exc: LipSyncError, field: str | None = None) -> str:
    """The one-line form of an error every command prints: ``error (code) [field]: message``."""
    where = field or exc.field
    return f"error ({exc.code})" + (f" [{where}]" if where else "") + f": {exc.message}"


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


def echo_error(exc: LipSyncError, field: str | None = None) -> None:
    click.echo(error_line(exc, field), err=True)


# How the pipeline's stages are shown; a command's own ``labels`` take precedence.
STAGE_LABELS = {
    "prepare": "prepare",
    "track": "tracking faces",
    "lipsync": "lip-syncing",
    "enhance": "enhancing faces",
    "encode": "finishing",
}
# Off a terminal (a log file, a CI job), a counted stage prints a line each time another STEP of it is
# done, or after INTERVAL_S seconds without a line: never a line per frame.
STEP = 0.05
INTERVAL_S = 10.0


def _is_tty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _amount(value: float, unit: str) -> str:
    if unit != "B":
        return f"{int(value)}"
    for prefix in ("", "Ki", "Mi", "Gi"):
        if value < 1024 or prefix == "Gi":
            return f"{value:.0f} B" if not prefix else f"{value:.1f} {prefix}B"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover - the loop returns


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


@dataclass
class _Stage:
    desc: str
    total: int | None
    started: float
    done: int = 0
    last_line: float = 0.0
    last_step: int = -1  # the last STEP multiple a line was printed for
    bar: Any = None  # the tqdm bar, on a terminal
    finished: bool = False


class ProgressBar:
    """Progress of a multi-stage ``(label, done, total)`` callback, on stderr.

    On a terminal each counted stage gets a tqdm bar; stages may interleave (lip-syncing and enhancing
    take turns per batch), and a bar closes once its stage is complete or when the stage after it
    starts. Off a terminal (``stream`` not a TTY) plain lines are printed instead: at most one per stage
    per 5 % of it, or one every 10 s while it moves, and one when it ends. A stage whose total is 1
    (``prepare``, ``finishing``) is a step, not a count: it is shown as started and done, with its
    time, never as "1 frame". ``unit="B"`` shows bytes (downloads)."""

    def __init__(
        self,
        enabled: bool = True,
        *,
        unit: str = "frame",
        labels: dict[str, str] | None = None,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.enabled, self.unit, self.labels = enabled, unit, labels or {}
        self.stream = stream if stream is not None else sys.stderr
        self.tty = _is_tty(self.stream)
        self.clock = clock
        self.stages: dict[str, _Stage] = {}

    def update(self, label: str, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        now = self.clock()
        stage = self.stages.get(label)
        if stage is not None and stage.finished and (not total or done >= (stage.total or 0)):
            return  # a repeated final report
        if stage is None or stage.finished:
            self._finish_others(label)
            desc = self.labels.get(label) or STAGE_LABELS.get(label, label)
            stage = self.stages[label] = _Stage(desc, total or None, now, last_line=now)
            if self._is_step(stage):
                self._line(f"{stage.desc} ...")
        if total and stage.total != total:
            stage.total = total
        stage.done = done
        if self._is_step(stage):
            if stage.total and done >= stage.total:
                self._end(stage, now)
            return
        if self.tty:
            self._tty(stage)
        else:
            self._log(stage, now)
        if stage.total and done >= stage.total:
            self._end(stage, now)

    @staticmethod
    def _is_step(stage: _Stage) -> bool:
        return stage.total == 1

    def _tty(self, stage: _Stage) -> None:
        if stage.bar is None:
            from tqdm import tqdm  # only when a bar is really shown

            scale = {"unit_scale": True, "unit_divisor": 1024} if self.unit == "B" else {}
            stage.bar = tqdm(total=stage.total, desc=stage.desc, unit=self.unit, file=self.stream, **scale)
        if stage.total and stage.bar.total != stage.total:
            stage.bar.total = stage.total
        stage.bar.n = stage.done
        stage.bar.refresh()

    def _log(self, stage: _Stage, now: float) -> None:
        step = int(stage.done / stage.total / STEP) if stage.total else -1
        complete = bool(stage.total and stage.done >= stage.total)
        first = stage.last_step < 0 and stage.done == 0
        if complete or first or step > stage.last_step or now - stage.last_line >= INTERVAL_S:
            if not complete:  # the final line is written by _end
                self._line(self._status(stage, now))
            stage.last_step, stage.last_line = max(step, 0), now

    def _status(self, stage: _Stage, now: float) -> str:
        elapsed = now - stage.started
        unit = "" if self.unit == "B" else f" {self.unit}s"
        if not stage.total:
            return f"{stage.desc}: {_amount(stage.done, self.unit)}{unit}, {_clock(elapsed)} elapsed"
        pct = 100.0 * stage.done / stage.total
        text = f"{stage.desc}: {_amount(stage.done, self.unit)}/{_amount(stage.total, self.unit)}{unit} ({pct:.0f}%)"
        if stage.done and elapsed > 0:
            eta = elapsed * (stage.total - stage.done) / stage.done
            text += f", {_clock(elapsed)} elapsed, ETA {_clock(eta)}"
        return text

    def _end(self, stage: _Stage, now: float) -> None:
        if stage.finished:
            return
        stage.finished = True
        elapsed = now - stage.started
        if stage.bar is not None:
            stage.bar.close()
            stage.bar = None
        elif self._is_step(stage):
            self._line(f"{stage.desc}: done in {elapsed:.1f} s")
        else:
            amount = _amount(stage.done, self.unit) + ("" if self.unit == "B" else f" {self.unit}s")
            self._line(f"{stage.desc}: done, {amount} in {_clock(elapsed)}")

    def _finish_others(self, label: str) -> None:
        # A new stage closes the bars of finished ones; an unfinished one may still be interleaved with
        # it (lip-syncing / enhancing) and is left open.
        for name, stage in self.stages.items():
            if name != label and stage.bar is not None and stage.total and stage.done >= stage.total:
                stage.bar.close()
                stage.bar = None

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def for_label(self, label: str):
        """A ``(done, total)`` callback bound to one label (downloads, single-stage work)."""
        return lambda done, total: self.update(label, done, total)

    def close(self) -> None:
        for stage in self.stages.values():
            if stage.bar is not None:
                stage.bar.close()
                stage.bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
