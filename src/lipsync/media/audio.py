"""Audio decode: anything FFmpeg reads -> float32 at the rate asked for, resampled by libswresample."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np

from lipsync.errors import EmptyAudio, MediaTooLarge, NoAudioStream
from lipsync.media._open import AUDIO_HINT, corrupt_partway, display_name, open_input
from lipsync.media.info import MediaLimits, pick_audio_stream


def decode_audio(
    path: str | os.PathLike[str],
    sample_rate: int = 16000,
    *,
    mono: bool = True,
    limits: MediaLimits | None = None,
) -> np.ndarray:
    """Decode the first audio stream of ``path`` (an audio file or a video's sound track).

    Returns float32 samples at ``sample_rate``: shape (n,) when ``mono`` (the channel mean, like
    librosa's mono=True, so a centred voice keeps its level), else (n, channels).
    Raises MediaNotFound, NotAMediaFile, NoAudioStream, EmptyAudio, CorruptMedia, MediaTooLarge.
    """
    if sample_rate <= 0:
        raise ValueError("sample_rate must be positive")
    limits = limits or MediaLimits()
    p = Path(path)
    container = open_input(p)
    try:
        stream = pick_audio_stream(container)
        if stream is None:
            raise NoAudioStream(
                f"{display_name(p)} has no audio stream, so there is nothing to lip-sync to. {AUDIO_HINT}",
                field="audio",
            )
        if container.duration and container.duration / av.time_base > limits.max_duration_s:
            raise MediaTooLarge(
                f"{display_name(p)} lasts {container.duration / av.time_base:.1f} s; the limit is "
                f"{limits.max_duration_s:.0f} s. Cut the audio shorter or raise LIPSYNC_MAX_DURATION_S.",
                field="audio",
            )
        # Keep the source layout through the resampler and average channels ourselves: swresample's
        # stereo->mono matrix sums at -3 dB, which is louder than the mean the mel features expect.
        layout = stream.codec_context.layout
        if layout is None or layout.nb_channels == 0:
            layout = "mono"
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=sample_rate)
        chunks: list[np.ndarray] = []

        def take(frames: list[av.AudioFrame]) -> None:
            for out in frames:
                if out.samples:
                    chunks.append(out.to_ndarray())  # (channels, samples) float32, planar

        try:
            for packet in container.demux(stream):
                for frame in packet.decode():
                    take(resampler.resample(frame))
            take(resampler.resample(None))
        except av.FFmpegError as exc:
            raise corrupt_partway(p, "decoding audio", exc) from exc
    finally:
        container.close()

    if not chunks or sum(c.shape[1] for c in chunks) == 0:
        raise EmptyAudio(
            f"{display_name(p)} has an audio stream but no samples (zero length). "
            "Export the audio again and check that it plays.",
            field="audio",
        )
    audio = np.concatenate(chunks, axis=1).astype(np.float32, copy=False)
    if not np.all(np.isfinite(audio)):
        audio = np.nan_to_num(audio, nan=0.0, posinf=1.0, neginf=-1.0)
    if mono:
        return np.ascontiguousarray(audio.mean(axis=0, dtype=np.float32))
    return np.ascontiguousarray(audio.T)
