"""Audio decode: anything FFmpeg reads -> float32 at the rate asked for, resampled by libswresample."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np

from lipsync.errors import CorruptMedia, EmptyAudio, MediaTooLarge, NoAudioStream
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
    librosa's mono=True, so a centred voice keeps its level), else (n, channels) with channels 1 or 2
    (surround is downmixed to stereo).
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
        elif layout.nb_channels > 2:
            # Surround: let swresample fold it to stereo with the layout's proper downmix matrix
            # (centre and surrounds at -3 dB, LFE dropped) rather than averaging six channels.
            layout = "stereo"
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=sample_rate)
        chunks: list[np.ndarray] = []

        def take(frames: list[av.AudioFrame]) -> None:
            for out in frames:
                if out.samples:
                    chunks.append(out.to_ndarray())  # (channels, samples) float32, planar

        time_base = stream.time_base
        # MP4/MOV know every packet from the index, so their declared length is a promise: a track
        # that stops well short of it was cut off (a download ending exactly between packets).
        declared = None
        if "mp4" in container.format.name and stream.duration and time_base:
            declared = float(stream.duration * time_base)
        end_ticks: int | None = None  # where the last packet ends: the real end of the track
        first_time: float | None = None
        try:
            for packet in container.demux(stream):
                if packet.pts is not None and packet.duration and time_base:
                    end = packet.pts + packet.duration
                    end_ticks = end if end_ticks is None else max(end_ticks, end)
                for frame in packet.decode():
                    if first_time is None and frame.time is not None:
                        first_time = float(frame.time)
                    take(resampler.resample(frame))
            take(resampler.resample(None))
        except av.FFmpegError as exc:
            raise corrupt_partway(p, "decoding audio", exc) from exc
    finally:
        container.close()

    decoded_s = sum(c.shape[1] for c in chunks) / sample_rate
    if declared is not None and decoded_s > 0 and decoded_s < declared - 0.25 - declared / 1000:
        raise CorruptMedia(
            f"{display_name(p)} ends early: its audio stops at {decoded_s:.2f} s but the file declares "
            f"{declared:.2f} s. It is probably truncated; re-export or re-download it.",
            field="audio",
        )
    if not chunks or sum(c.shape[1] for c in chunks) == 0:
        raise EmptyAudio(
            f"{display_name(p)} has an audio stream but no samples (zero length). "
            "Export the audio again and check that it plays.",
            field="audio",
        )
    audio = np.concatenate(chunks, axis=1).astype(np.float32, copy=False)
    if end_ticks is not None and first_time is not None and time_base:
        # Decoders return whole codec frames; the container's last packet duration says how much of
        # the final AAC/Opus frame is real. Trim that encoder padding (never more than 0.1 s).
        wanted = round((float(end_ticks * time_base) - first_time) * sample_rate)
        if 0 < wanted < audio.shape[1] <= wanted + sample_rate // 10:
            audio = audio[:, :wanted]
    if not np.all(np.isfinite(audio)):
        audio = np.nan_to_num(audio, nan=0.0, posinf=1.0, neginf=-1.0)
    if mono:
        return np.ascontiguousarray(audio.mean(axis=0, dtype=np.float32))
    return np.ascontiguousarray(audio.T)
