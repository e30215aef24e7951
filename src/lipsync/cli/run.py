"""``lipsync run``: lip-sync a video to a new audio track, end to end, on this machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from lipsync.cli._common import ProgressBar, parse_character_specs
from lipsync.cli.options import add_options, options_from_cli
from lipsync.config import Settings
from lipsync.options import LipSyncOptions
from lipsync.request import LipSyncRequest
from lipsync.types import DEVICE_CHOICES

_STAGE_LABELS = {
    "prepare": "prepare",
    "track": "tracking faces",
    "lipsync": "lip-syncing",
    "encode": "finishing",
}


@click.command("run")
@click.option(
    "--video", required=True, type=click.Path(path_type=Path), help="Input video (or a still image)."
)
@click.option(
    "--audio", required=True, type=click.Path(path_type=Path), help="New audio (any format FFmpeg reads)."
)
@click.option("--out", "output", required=True, type=click.Path(path_type=Path), help="Output .mp4 path.")
@click.option(
    "--character", "characters", multiple=True, metavar="ID:NAME:IMAGE",
    help="A character to sync, by reference image; repeat for several (same ID again adds an image). "
    "Without any, the most prominent face is synced.",
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
    audio: Path,
    output: Path,
    characters: tuple[str, ...],
    device: str | None,
    stats_path: Path | None,
    progress: bool,
    **settings_given: Any,
) -> None:
    """Lip-sync VIDEO to AUDIO and write OUT (MP4, H.264 + AAC)."""
    # Settings first: a bad value fails in a second, before any model is downloaded or loaded.
    options = options_from_cli(LipSyncOptions, settings_given)
    request = LipSyncRequest(video, audio, output, parse_character_specs(characters), options)
    from lipsync.pipeline import LipSyncPipeline, check_request

    check_request(request)
    overrides: dict[str, Any] = {"device": device} if device is not None else {}
    if options.wav2lip_batch_size is not None:
        # A one-off process: the loaded generator's own cap (and OOM back-off start) is the asked batch.
        overrides["batch_size"] = options.wav2lip_batch_size
    settings = Settings(**overrides)
    pipeline = LipSyncPipeline(settings)
    with ProgressBar(progress, unit="B") as downloads:
        needed = pipeline.required_models(pipeline.enhance_enabled(options), options.occlusion_mask == "on")
        for name in needed:
            pipeline.store.ensure(name, progress=downloads.for_label(f"downloading {name}"))

    with ProgressBar(progress, labels=_STAGE_LABELS) as bars:
        result = pipeline(request, progress=bars.update)

    stats = result.stats
    if stats_path is not None:
        stats_path.write_text(json.dumps(stats.to_dict(), indent=2) + "\n")
    per_char = ", ".join(
        f"{c.name}: {c.frames_synced} synced / {c.frames_passed_through} passed through"
        for c in stats.characters.values()
    )
    click.echo(
        f"wrote {result.output} ({stats.frames} frames, {stats.duration_s:.2f} s) in {stats.wall_seconds:.1f} s "
        f"({stats.realtime_factor:.2f}x realtime); {per_char}; "
        f"blending: {stats.poisson} poisson, {stats.feather} feathered"
    )
