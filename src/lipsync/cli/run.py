"""``lipsync run``: lip-sync a video to a new audio track, end to end, on this machine."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from lipsync.cli._common import (
    ProgressBar,
    attach_character_audio,
    check_outputs,
    parse_character_specs,
    write_text,
)
from lipsync.cli.options import add_options, options_from_cli
from lipsync.config import Settings
from lipsync.errors import LipSyncError
from lipsync.options import LipSyncOptions
from lipsync.request import LipSyncRequest
from lipsync.types import DEVICE_CHOICES, Character


@contextlib.contextmanager
def cli_fields_named(cast: tuple[Character, ...]) -> Iterator[None]:
    """Name a stem's errors by this command's option: characters[1].audio -> --character-audio ID."""
    try:
        yield
    except LipSyncError as exc:
        match = re.fullmatch(r"characters\[(\d+)\]\.audio", exc.field or "")
        if match and int(match.group(1)) < len(cast):
            exc.field = f"--character-audio {cast[int(match.group(1))].id}"
        raise


@click.command("run")
@click.option(
    "--video", required=True, type=click.Path(path_type=Path), help="Input video (or a still image)."
)
@click.option(
    "--audio", default=None, type=click.Path(path_type=Path),
    help="New audio (any format FFmpeg reads); the output's sound. Optional only when every character has "
    "--character-audio (their stems are then mixed).",
)  # fmt: skip
@click.option("--out", "output", required=True, type=click.Path(path_type=Path), help="Output .mp4 path.")
@click.option(
    "--character", "characters", multiple=True, metavar="ID:NAME:IMAGE",
    help="A character to sync, by reference image; repeat for several (same ID again adds an image). "
    "Without any, the most prominent face is synced.",
)  # fmt: skip
@click.option(
    "--character-audio", "character_audio", multiple=True, metavar="ID=PATH",
    help="A character's own driving track (a dub's stem): that character's mouth follows it; the others "
    "follow --audio. Repeat per character.",
)  # fmt: skip
@add_options(LipSyncOptions)
@click.option(
    "--device", type=click.Choice(DEVICE_CHOICES), default=None, help="Default: LIPSYNC_DEVICE or auto."
)
@click.option("--stats", "stats_path", type=click.Path(path_type=Path), default=None,
              help="Write the run's statistics as JSON here.")  # fmt: skip
@click.option("--progress/--no-progress", default=True, help="Show progress bars (on stderr).")
def run(
    video: Path,
    audio: Path | None,
    output: Path,
    characters: tuple[str, ...],
    character_audio: tuple[str, ...],
    device: str | None,
    stats_path: Path | None,
    progress: bool,
    **settings_given: Any,
) -> None:
    """Lip-sync VIDEO to AUDIO and write OUT (MP4, H.264 + AAC)."""
    # Settings first: a bad value fails in a second, before any model is downloaded or loaded.
    options = options_from_cli(LipSyncOptions, settings_given)
    cast = attach_character_audio(parse_character_specs(characters), character_audio)
    request = LipSyncRequest(video, audio, output, cast, options)
    from lipsync.media import MediaLimits, check_job_media
    from lipsync.models.preflight import ensure_models, needs_for_run
    from lipsync.pipeline import LipSyncPipeline, check_request

    with cli_fields_named(cast):
        check_request(request)
    overrides: dict[str, Any] = {"device": device} if device is not None else {}
    if options.wav2lip_batch_size is not None:
        # A one-off process: the loaded generator's own cap (and OOM back-off start) is the asked batch.
        overrides["batch_size"] = options.wav2lip_batch_size
    settings = Settings(**overrides)
    stems = [(c.audio, f"characters[{i}].audio") for i, c in enumerate(cast) if c.audio is not None]
    with cli_fields_named(cast):  # errors name --character-audio ID, not characters[i].audio
        check_job_media(video, audio, MediaLimits.from_settings(settings), stems)  # limits, from the headers
    check_outputs({"stats": stats_path})
    pipeline = LipSyncPipeline(settings)
    # Every model the run needs, checked (and fetched) before any work: one error lists all that are missing.
    with ProgressBar(progress, unit="B") as downloads:
        needs = needs_for_run(settings, enhance=pipeline.enhance_enabled(options),
                              occlusion=options.occlusion_mask == "on")
        ensure_models(pipeline.store, needs, progress=lambda name: downloads.for_label(f"downloading {name}"))

    with ProgressBar(progress) as bars, cli_fields_named(cast):  # stages as cli._common names them
        result = pipeline(request, progress=bars.update)

    stats = result.stats
    if stats_path is not None:
        write_text(stats_path, json.dumps(stats.to_dict(), indent=2) + "\n")
    per_char = ", ".join(
        f"{c.name}: {c.frames_synced} synced / {c.frames_passed_through} passed through "
        f"({c.speech_frames} speech, {c.silent_frames} silent, silence={c.silence_mode})"
        for c in stats.characters.values()
    )
    click.echo(
        f"wrote {result.output} ({stats.frames} frames, {stats.duration_s:.2f} s) in {stats.wall_seconds:.1f} s "
        f"({stats.realtime_factor:.2f}x realtime); {per_char}; "
        f"blending: {stats.poisson} poisson, {stats.feather} feathered"
    )
