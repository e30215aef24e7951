"""``lipsync run``: lip-sync a video to a new audio track, end to end, on this machine."""

from __future__ import annotations

import json
from pathlib import Path

import click

from lipsync.cli._common import ProgressBar, check_outputs, parse_character_specs, write_text
from lipsync.config import Settings
from lipsync.types import DEFAULT_PADS, DEVICE_CHOICES, LOOP_MODES

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
@click.option("--loop-mode", type=click.Choice(LOOP_MODES), default="crossfade", show_default=True,
              help="How to extend a video shorter than the audio.")  # fmt: skip
@click.option("--crossfade-frames", type=click.IntRange(0, 1000), default=10, show_default=True)
@click.option("--enhance/--no-enhance", default=True, show_default=True, help="GFPGAN face enhancement.")
@click.option("--similarity-threshold", type=click.FloatRange(0, 1), default=None,
              help="Face match threshold, 0-1 (default: the face backend's, 0.5).")  # fmt: skip
@click.option("--temporal-smoothing", type=click.FloatRange(0, 1), default=0.3, show_default=True)
@click.option("--pads", type=click.IntRange(0, 1000), nargs=4, default=DEFAULT_PADS, show_default=True,
              metavar="T B L R", help="Face crop padding in pixels: top bottom left right.")  # fmt: skip
@click.option("--batch-size", type=click.IntRange(1, 1024), default=None,
              help="Wav2Lip batch size (default: 128 on CUDA, 16 on CPU).")  # fmt: skip
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
    loop_mode: str,
    crossfade_frames: int,
    enhance: bool,
    similarity_threshold: float | None,
    temporal_smoothing: float,
    pads: tuple[int, int, int, int],
    batch_size: int | None,
    device: str | None,
    stats_path: Path | None,
    progress: bool,
) -> None:
    """Lip-sync VIDEO to AUDIO and write OUT (MP4, H.264 + AAC)."""
    from lipsync.media import MediaLimits, check_job_media
    from lipsync.pipeline import LipSyncPipeline, LipSyncRequest, check_request

    overrides: dict = {}
    if device is not None:
        overrides["device"] = device
    if batch_size is not None:
        overrides["batch_size"] = batch_size
    settings = Settings(**overrides) if overrides else Settings()
    request = LipSyncRequest(
        video=video,
        audio=audio,
        output=output,
        characters=parse_character_specs(characters),
        loop_mode=loop_mode,  # type: ignore[arg-type]  # click.Choice(LOOP_MODES) guarantees it
        crossfade_frames=crossfade_frames,
        enhance=enhance,
        similarity_threshold=similarity_threshold,
        temporal_smoothing=temporal_smoothing,
        pads=tuple(pads),  # type: ignore[arg-type]
        batch_size=batch_size,
    )
    # Bad inputs fail in a second, before any model is downloaded or loaded.
    check_request(request)
    check_job_media(video, audio, MediaLimits.from_settings(settings))  # limits, from the headers
    check_outputs({"stats": stats_path})
    pipeline = LipSyncPipeline(settings)
    with ProgressBar(progress, unit="B") as downloads:
        for name in pipeline.required_models(enhance):
            pipeline.store.ensure(name, progress=downloads.for_label(f"downloading {name}"))

    with ProgressBar(progress, labels=_STAGE_LABELS) as bars:
        result = pipeline(request, progress=bars.update)

    stats = result.stats
    if stats_path is not None:
        write_text(stats_path, json.dumps(stats.to_dict(), indent=2) + "\n")
    per_char = ", ".join(
        f"{c.name}: {c.frames_synced} synced / {c.frames_passed_through} passed through"
        for c in stats.characters.values()
    )
    click.echo(
        f"wrote {result.output} ({stats.frames} frames, {stats.duration_s:.2f} s) in {stats.wall_seconds:.1f} s "
        f"({stats.realtime_factor:.2f}x realtime); {per_char}; "
        f"blending: {stats.poisson} poisson, {stats.feather} feathered"
    )
