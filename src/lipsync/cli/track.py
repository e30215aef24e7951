"""``lipsync track``: find the characters in a video and write a visual check (and/or the tracks as JSON)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from lipsync.cli._common import ProgressBar, parse_character_specs
from lipsync.cli.options import add_options, options_from_cli
from lipsync.config import Settings
from lipsync.options import TrackOptions
from lipsync.types import DEVICE_CHOICES, FACE_BACKENDS


@click.command("track")
@click.option(
    "--video",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Input video.",
)
@click.option(
    "--character", "characters", multiple=True, metavar="ID:NAME:IMAGE",
    help="A character by reference image; repeat for several (the same ID again adds an image). "
    "Without any, the most prominent face is tracked as 'face'.",
)  # fmt: skip
@add_options(TrackOptions)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the tracks as JSON here.")  # fmt: skip
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the visual check (MP4 with the source audio) here.")  # fmt: skip
@click.option("--backend", type=click.Choice(FACE_BACKENDS), default=None,
              help="Face backend (default: LIPSYNC_FACE_BACKEND or insightface).")  # fmt: skip
@click.option(
    "--device", type=click.Choice(DEVICE_CHOICES), default=None, help="Default: LIPSYNC_DEVICE or auto."
)
@click.option("--progress/--no-progress", default=True, help="Show progress bars (on stderr).")
def track(
    video: Path,
    characters: tuple[str, ...],
    json_path: Path | None,
    out: Path | None,
    backend: str | None,
    device: str | None,
    progress: bool,
    **settings_given: Any,
) -> None:
    """Track faces in VIDEO: boxes per character in its own colour, labelled with name and similarity;
    dashed boxes and hollow markers show interpolated frames."""
    if out is None and json_path is None:
        raise click.UsageError("nothing to write: give --out vis.mp4 and/or --json tracks.json")
    options = options_from_cli(TrackOptions, settings_given)
    chars = parse_character_specs(characters)

    from lipsync.faces import (
        TrackingOptions,
        create_face_backend,
        face_device,
        render_tracking,
        track_characters,
        tracks_to_json,
    )
    from lipsync.media import MediaLimits, iter_frames, probe

    overrides: dict = {}
    if backend is not None:
        overrides["face_backend"] = backend
    if device is not None:
        overrides["device"] = device
    settings = Settings(**overrides)
    info = probe(video, MediaLimits.from_settings(settings))
    if not info.has_video:
        raise click.BadParameter(f"{video} has no video stream", param_hint="--video")
    faces = create_face_backend(settings)
    with ProgressBar(progress) as bar:
        tracks = track_characters(
            iter_frames(video, info=info), faces, chars, TrackingOptions.from_job(options, face_device(faces)),
            num_frames=info.num_frames,
            progress=bar.for_label("tracking"),
        )  # fmt: skip
        if json_path is not None:
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(
                json.dumps(tracks_to_json(tracks, info.fps, info.num_frames), indent=1) + "\n"
            )
        if out is not None:
            render_tracking(video, tracks, out, info=info, progress=bar.for_label("rendering"))

    if not tracks:
        click.echo(f"no face found in {video.name} ({info.num_frames} frames)")
    for t in tracks:
        detected = sum(not p.interpolated for p in t.points.values())
        click.echo(
            f"{t.name} ({t.character_id}): in {len(t)}/{info.num_frames} frames "
            f"({detected} detected, {len(t) - detected} interpolated)"
        )
    for path in (json_path, out):
        if path is not None:
            click.echo(f"wrote {path}")
