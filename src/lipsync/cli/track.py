"""``lipsync track``: find the characters in a video and write a visual check (and/or the tracks as JSON)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from lipsync.cli._common import ProgressBar, check_outputs, parse_character_specs, write_text
from lipsync.cli.options import add_options, options_from_cli
from lipsync.config import Settings
from lipsync.options import TrackOptions
from lipsync.types import DEVICE_CHOICES, FACE_BACKENDS


@click.command("track")
@click.option(
    "--video",
    required=True,
    type=click.Path(path_type=Path),  # checked by probe_input, in the words every command uses
    help="Input video.",
)
@click.option(
    "--character", "characters", multiple=True, metavar="ID:NAME:IMAGE",
    help="A character by reference image; repeat for several (the same ID again adds an image). "
    "Without any, the most prominent face is tracked as 'face'.",
)  # fmt: skip
@add_options(TrackOptions)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
              default=None, help="Write the tracks as JSON here; '-' writes them to standard output (the "
              "summary then goes to standard error).")  # fmt: skip
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

    from lipsync.faces import create_face_backend, render_tracking, tracks_to_json
    from lipsync.media import MediaLimits, probe_input
    from lipsync.models import ModelStore
    from lipsync.models.preflight import ensure_models, needs_for_tracking
    from lipsync.stages.track import run_tracking
    from lipsync.stages.track_cache import TrackCache

    overrides: dict = {}
    if backend is not None:
        overrides["face_backend"] = backend
    if device is not None:
        overrides["device"] = device
    settings = Settings(**overrides)
    info = probe_input(video, MediaLimits.from_settings(settings), "video", need="video")
    to_stdout = json_path == Path("-")
    check_outputs({"out": out, "json": None if to_stdout else json_path})
    store = ModelStore(settings)
    ensure_models(store, needs_for_tracking(settings))  # all missing face models in one error
    faces = create_face_backend(settings, store)
    with ProgressBar(progress) as bar:
        tracking = bar.for_label("tracking")
        tracks = run_tracking(
            video, info, faces, chars, options, info.num_frames, lambda _stage, done, total: tracking(done, total),
            cache=TrackCache.from_settings(settings), settings=settings,
        )  # fmt: skip
        if json_path is not None:
            text = json.dumps(tracks_to_json(tracks, info.fps, info.num_frames), indent=1) + "\n"
            if to_stdout:
                click.echo(text, nl=False)
            else:
                write_text(json_path, text)
        if out is not None:
            render_tracking(video, tracks, out, info=info, progress=bar.for_label("rendering"))

    # With the JSON on standard output, the summary keeps out of it.
    if not tracks:
        click.echo(f"no face found in {video.name} ({info.num_frames} frames)", err=to_stdout)
    for t in tracks:
        detected = sum(not p.interpolated for p in t.points.values())
        click.echo(
            f"{t.name} ({t.character_id}): in {len(t)}/{info.num_frames} frames "
            f"({detected} detected, {len(t) - detected} interpolated)",
            err=to_stdout,
        )
    for path in (None if to_stdout else json_path, out):
        if path is not None:
            click.echo(f"wrote {path}", err=to_stdout)
