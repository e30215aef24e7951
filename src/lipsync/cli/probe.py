"""``lipsync probe FILE [--json]``: print what lipsync sees in a media file."""

from __future__ import annotations

import json
from pathlib import Path

import click


def _limits():
    from lipsync.config import Settings
    from lipsync.media import MediaLimits

    return MediaLimits.from_settings(Settings())


def _human(info) -> str:
    lines = [f"file:       {info.path}", f"container:  {info.format_name}, {info.duration:.3f} s"]
    if info.has_video:
        kind = (
            "still image"
            if info.is_image
            else ("variable frame rate" if info.is_vfr else "constant frame rate")
        )
        lines += [
            f"video:      {info.video_codec} {info.pix_fmt}, stored {info.width}x{info.height}, "
            f"displayed {info.display_width}x{info.display_height} (rotation {info.rotation}°)",
            f"frames:     {info.num_frames} at {info.fps} fps (~{float(info.fps):.3f}, {kind}), "
            f"{info.video_duration:.3f} s; {info.source_frames} stored",
        ]
        if info.stream_fps and info.stream_fps != info.fps and not info.is_image:
            from lipsync.media import MIN_FPS

            lines.append(f"            resampled: the stream runs at {info.stream_fps} fps (under {MIN_FPS} fps)")
        if info.has_audio and abs(info.video_start - info.audio_start) >= 0.001:
            lines.append(
                f"starts:     video at {info.video_start:.3f} s, audio at {info.audio_start:.3f} s "
                "(kept in sync where its own sound is used)"
            )
    else:
        lines.append("video:      none")
    if info.has_audio:
        duration = f"{info.audio_duration:.3f} s" if info.audio_duration is not None else "unknown length"
        lines.append(
            f"audio:      {info.audio_codec}, {info.audio_sample_rate} Hz, {info.audio_channels} ch, {duration}"
        )
    else:
        lines.append("audio:      none")
    return "\n".join(lines)


@click.command()
@click.argument("file", type=click.Path(dir_okay=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the MediaInfo as JSON.")
def probe(file: Path, as_json: bool) -> None:
    """Show duration, frame rate (exact, VFR or not), frame count, size, rotation and audio of FILE."""
    from lipsync.media import probe as probe_media

    info = probe_media(file, limits=_limits())
    if as_json:
        click.echo(json.dumps(info.to_dict(), indent=2))
    else:
        click.echo(_human(info))
