"""``lipsync run``: lip-sync a video to a new audio track, end to end, on this machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import click

from lipsync.config import Settings
from lipsync.errors import InputError
from lipsync.types import DEFAULT_PADS, DEVICE_CHOICES, LOOP_MODES, Character


def parse_characters(values: tuple[str, ...]) -> tuple[Character, ...]:
    """``ID:NAME:IMAGE`` strings -> characters; repeating an ID adds reference images to that character."""
    order: list[str] = []
    names: dict[str, str] = {}
    images: dict[str, list[Path]] = {}
    for value in values:
        parts = value.split(":", 2)
        if len(parts) != 3 or not parts[0] or not parts[2]:
            raise InputError(f"--character must look like ID:NAME:IMAGE, got {value!r}", field="characters")
        cid, name, image = parts
        if cid not in names:
            order.append(cid)
            names[cid] = name or cid
            images[cid] = []
        images[cid].append(Path(image))
    return tuple(Character(cid, names[cid], tuple(images[cid])) for cid in order)


class _Bars:
    """One tqdm bar per pipeline stage, driven by the pipeline's (stage, done, total) callback."""

    _LABELS: ClassVar[dict[str, str]] = {
        "prepare": "prepare",
        "track": "tracking faces",
        "lipsync": "lip-syncing",
        "encode": "finishing",
    }

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.stage: str | None = None
        self.bar = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(
                total=total or None, desc=self._LABELS.get(stage, stage), unit="frame", leave=True
            )
        if self.bar is not None:
            if total and self.bar.total != total:
                self.bar.total = total
            self.bar.n = done
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _DownloadBar:
    """A byte progress bar for one model download, opened on the first byte (nothing shows for files
    already present or when the download is refused)."""

    def __init__(self, name: str, enabled: bool) -> None:
        self.name, self.enabled, self.bar = name, enabled, None

    def __call__(self, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(desc=f"downloading {self.name}", unit="B", unit_scale=True, unit_divisor=1024)
        if total is not None and self.bar.total != total:
            self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


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
        characters=parse_characters(characters),
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
    pipeline = LipSyncPipeline(settings)
    for name in pipeline.required_models(enhance):
        bar = _DownloadBar(name, progress)
        try:
            pipeline.store.ensure(name, progress=bar)
        finally:
            bar.close()

    bars = _Bars(progress)
    try:
        result = pipeline(request, progress=bars)
    finally:
        bars.close()

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
