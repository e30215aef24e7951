"""Audio decode: anything FFmpeg reads -> float32 at the rate asked for, resampled by libswresample.

Three ways in, one decode loop:

* ``iter_audio`` yields planar (channels, n) float32 chunks as they are decoded, so nothing holds the
  whole track;
* ``decode_audio`` concatenates those chunks into one array (what the mel spectrogram needs);
* ``AudioSource`` reads the chunks sequentially in any block size (what the MP4 writer needs), and
  wraps an in-memory array behind the same interface.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from lipsync.errors import CorruptMedia, EmptyAudio, MediaTooLarge, NoAudioStream
from lipsync.media._open import AUDIO_HINT, check_complete, corrupt_partway, display_name, open_input
from lipsync.media.info import MediaInfo, MediaLimits, pick_audio_stream

# Samples (per channel) gathered before a chunk is yielded: big enough that per-chunk numpy overhead
# vanishes, small enough (0.3 s at 48 kHz stereo = 128 KiB) that a reader holds next to nothing.
_CHUNK = 16384


def iter_audio(
    path: str | os.PathLike[str],
    sample_rate: int = 16000,
    *,
    mono: bool = True,
    limits: MediaLimits | None = None,
    offset_s: float = 0.0,
) -> Iterator[np.ndarray]:
    """Decode the first audio stream of ``path`` chunk by chunk.

    ``offset_s`` moves the audio's start: positive skips that much of its beginning, negative puts
    that much silence before it. Keeping a file's own sound under its video needs
    ``video_start - audio_start`` (``MediaInfo``): players line streams up by their start times.

    Yields planar float32 arrays of shape (channels, n), n > 0, at ``sample_rate``: channels is 1 when
    ``mono`` (the channel mean, like librosa's mono=True, so a centred voice keeps its level), else 1 or
    2 (surround is downmixed to stereo). Concatenated, the chunks are exactly ``decode_audio``'s result.

    The file is opened at the first ``next()``, so every error is raised from iteration: MediaNotFound,
    NotAMediaFile, NoAudioStream, MediaTooLarge at once; CorruptMedia when decoding fails part-way or an
    MP4/MOV track ends well before its declared length (after the chunks before the damage were
    yielded); EmptyAudio when the stream has no samples at all. Closing the iterator closes the file.
    """
    if sample_rate <= 0:  # checked here, not at the first next(): a bad argument is the caller's bug
        raise ValueError("sample_rate must be positive")
    chunks = _decode_chunks(Path(path), int(sample_rate), mono, limits or MediaLimits())
    shift = round(offset_s * sample_rate)
    return _shifted(chunks, shift) if shift else chunks


class _Tail:
    """Decoded samples not yet yielded.

    The last ``sample_rate // 10`` samples are always held back until the end of the stream: the
    encoder-padding trim (see _decode_chunks) removes at most that many, and only the end of the stream
    tells how many.
    """

    def __init__(self, mono: bool) -> None:
        self.mono = mono
        self.parts: list[np.ndarray] = []
        self.size = 0

    def add(self, frames: list[av.AudioFrame]) -> int:
        added = 0
        for out in frames:
            if out.samples:
                self.parts.append(out.to_ndarray())  # (channels, samples) float32, planar
                added += out.samples
        self.size += added
        return added

    def take(self, count: int) -> np.ndarray:
        """Remove and return the first ``count`` held samples, cleaned and (if asked) mixed to mono."""
        block = self.parts[0] if len(self.parts) == 1 else np.concatenate(self.parts, axis=1)
        head, rest = block[:, :count], block[:, count:]
        # The remainder is copied so the (larger) concatenated block is freed with the chunk.
        self.parts = [rest.copy()] if rest.shape[1] else []
        self.size -= head.shape[1]
        head = head.astype(np.float32, copy=False)
        if not np.all(np.isfinite(head)):
            head = np.nan_to_num(head, nan=0.0, posinf=1.0, neginf=-1.0)
        if self.mono:
            # Averaged here rather than by swresample: its stereo->mono matrix sums at -3 dB, louder than
            # the mean the mel features expect. The mean is per sample, so chunking cannot change it.
            return np.ascontiguousarray(head.mean(axis=0, dtype=np.float32, keepdims=True))
        return np.ascontiguousarray(head)


def _decode_chunks(p: Path, sample_rate: int, mono: bool, limits: MediaLimits) -> Iterator[np.ndarray]:
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
        if container.format.name == "wav":
            check_complete(p)
        # Headers can be missing or lie (raw streams, a damaged length field): count as we decode too.
        max_samples = limits.max_duration_s * sample_rate
        # Keep the source layout through the resampler and average channels ourselves (see _Tail.take).
        layout = stream.codec_context.layout
        if layout is None or layout.nb_channels == 0:
            layout = "mono"
        elif layout.nb_channels > 2:
            # Surround: let swresample fold it to stereo with the layout's proper downmix matrix
            # (centre and surrounds at -3 dB, LFE dropped) rather than averaging six channels.
            layout = "stereo"
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=sample_rate)
        hold = sample_rate // 10  # the most encoder padding ever trimmed from the end
        tail = _Tail(mono)
        total = 0  # samples decoded, before any trim
        yielded = 0

        time_base = stream.time_base
        # MP4/MOV know every packet from the index, and AIFF states its sample count, so their declared
        # length is a promise: a track that stops well short of it was cut off (a download ending
        # exactly between packets). (A cut WAV is caught from its header above.)
        declared = None
        promises = "mp4" in container.format.name or container.format.name == "aiff"
        if promises and stream.duration and time_base:
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
                    total += tail.add(resampler.resample(frame))
                if total > max_samples:
                    raise MediaTooLarge(
                        f"{display_name(p)} lasts over {limits.max_duration_s:.0f} s, the limit. Cut the audio "
                        "shorter or raise LIPSYNC_MAX_DURATION_S.",
                        field="audio",
                    )
                if tail.size >= hold + _CHUNK:
                    chunk = tail.take(tail.size - hold)
                    yielded += chunk.shape[1]
                    yield chunk
            total += tail.add(resampler.resample(None))
        except av.FFmpegError as exc:
            raise corrupt_partway(p, "decoding audio", exc, field="audio") from exc
    finally:
        container.close()

    decoded_s = total / sample_rate
    if declared is not None and decoded_s > 0 and decoded_s < declared - 0.25 - declared / 1000:
        raise CorruptMedia(
            f"{display_name(p)} ends early: its audio stops at {decoded_s:.2f} s but the file declares "
            f"{declared:.2f} s. It is probably truncated; re-export or re-download it.",
            field="audio",
        )
    if total == 0:
        raise EmptyAudio(
            f"{display_name(p)} has an audio stream but no samples (zero length). "
            "Export the audio again and check that it plays.",
            field="audio",
        )
    keep = tail.size
    if end_ticks is not None and first_time is not None and time_base:
        # Decoders return whole codec frames; the container's last packet duration says how much of
        # the final AAC/Opus frame is real. Trim that encoder padding (never more than 0.1 s), which
        # always lies within the held-back tail.
        wanted = round((float(end_ticks * time_base) - first_time) * sample_rate)
        if 0 < wanted < total <= wanted + hold:
            keep = wanted - yielded
    if keep > 0:
        yield tail.take(keep)


def decode_audio(
    path: str | os.PathLike[str],
    sample_rate: int = 16000,
    *,
    mono: bool = True,
    limits: MediaLimits | None = None,
    offset_s: float = 0.0,
) -> np.ndarray:
    """Decode the first audio stream of ``path`` (an audio file or a video's sound track) in one array.
    ``offset_s`` as in ``iter_audio``.

    Returns float32 samples at ``sample_rate``: shape (n,) when ``mono`` (the channel mean, like
    librosa's mono=True, so a centred voice keeps its level), else (n, channels) with channels 1 or 2
    (surround is downmixed to stereo). The whole track is in memory: to stream it, use ``AudioSource``
    or ``iter_audio``.
    Raises MediaNotFound, NotAMediaFile, NoAudioStream, EmptyAudio, CorruptMedia, MediaTooLarge.
    """
    chunks = list(iter_audio(path, sample_rate, mono=mono, limits=limits, offset_s=offset_s))
    if not chunks:  # only when offset_s skipped past the end
        raise EmptyAudio(f"{display_name(Path(path))} has no audio after {offset_s:.2f} s.", field="audio")
    audio = chunks[0] if len(chunks) == 1 else np.concatenate(chunks, axis=1)
    del chunks
    if mono:
        return np.ascontiguousarray(audio[0])
    return np.ascontiguousarray(audio.T)


class AudioSource:
    """Planar float32 audio read front to back in blocks of any size: a decoded file or an array.

    ``read(n)`` returns shape (channels, m) float32 with m == n until the audio runs out, then fewer,
    then 0. A returned block may be a view into the source's buffer (or the wrapped array): copy it
    before modifying it. An opened file holds at most one decoded chunk (~16k samples) plus a remainder,
    whatever the track's length. Use as a context manager, or call ``close()``.
    """

    def __init__(self, chunks: Iterator[np.ndarray], first: np.ndarray, rate: int) -> None:
        # Use AudioSource.open or AudioSource.from_array; this takes an already started chunk stream.
        self.rate = int(rate)
        self.channels = int(first.shape[0])
        self._chunks: Iterator[np.ndarray] | None = chunks
        self._chunk = first
        self._pos = 0
        self._closed = False

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        sample_rate: int = 16000,
        *,
        mono: bool = True,
        limits: MediaLimits | None = None,
        offset_s: float = 0.0,
    ) -> AudioSource:
        """Stream the first audio stream of ``path`` at ``sample_rate``; ``mono`` as in ``iter_audio``
        (False keeps mono/stereo and downmixes surround to stereo).

        ``offset_s`` as in ``iter_audio``.

        The first chunk is decoded here, so a missing, unreadable, stream-less or empty file fails at
        open with the same typed errors as ``decode_audio``; damage found later (CorruptMedia) is raised
        by the ``read`` that reaches it.
        """
        chunks = iter_audio(path, sample_rate, mono=mono, limits=limits, offset_s=offset_s)
        first = next(chunks, None)
        if first is None:  # iter_audio raises EmptyAudio instead of ending without a chunk
            raise EmptyAudio(f"{display_name(Path(path))} has no audio samples.", field="audio")
        return cls(chunks, first, sample_rate)

    @classmethod
    def from_array(cls, array: np.ndarray, rate: int) -> AudioSource:
        """Wrap in-memory samples: float in [-1, 1] or int16, shape (n,) or (n, channels), channels 1
        or 2. Nothing is copied up front; each ``read`` converts only its own block to float32."""
        if rate <= 0:
            raise ValueError("rate must be positive")
        a = np.asarray(array)
        if a.dtype != np.int16 and not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"audio must be float32 in [-1, 1] or int16, got {a.dtype}")
        if a.ndim == 1:
            a = a[None, :]
        elif a.ndim == 2:
            if not 1 <= a.shape[1] <= 2:
                raise ValueError("audio must be mono or stereo: shape (n,) or (n, 1|2)")
            a = a.T
        else:
            raise ValueError("audio must have shape (n,) or (n, channels)")
        source = cls(iter(()), a, rate)
        source._chunks = None  # nothing follows the array
        return source

    @property
    def closed(self) -> bool:
        return self._closed

    def read(self, n: int) -> np.ndarray:
        """The next ``n`` samples per channel, (channels, <=n) float32; fewer only at the end."""
        if self._closed:
            raise ValueError("read from a closed AudioSource")
        if n < 0:
            raise ValueError("n must be >= 0")
        pieces: list[np.ndarray] = []
        got = 0
        while got < n:
            if self._pos >= self._chunk.shape[1] and not self._next_chunk():
                break
            take = min(n - got, self._chunk.shape[1] - self._pos)
            pieces.append(self._chunk[:, self._pos : self._pos + take])
            self._pos += take
            got += take
        if not pieces:
            return np.zeros((self.channels, 0), np.float32)
        block = pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=1)
        if block.dtype == np.int16:
            return block.astype(np.float32) / np.float32(32768.0)
        return block.astype(np.float32, copy=False)

    def _next_chunk(self) -> bool:
        nxt = next(self._chunks, None) if self._chunks is not None else None
        if nxt is None:
            self._chunks = None
            return False
        self._chunk, self._pos = nxt, 0
        return True

    def close(self) -> None:
        """Release the decoder and file (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._chunks is not None and hasattr(self._chunks, "close"):
            self._chunks.close()  # runs the generator's finally: the container is closed
        self._chunks = None
        self._chunk = np.zeros((self.channels, 0), np.float32)

    def __enter__(self) -> AudioSource:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()


def _shifted(chunks: Iterator[np.ndarray], shift: int) -> Iterator[np.ndarray]:
    """The chunks without their first ``shift`` samples (shift > 0), or after -shift samples of silence."""
    try:
        for chunk in chunks:
            if shift < 0:
                yield np.zeros((chunk.shape[0], -shift), np.float32)
                shift = 0
            elif shift > 0:
                drop = min(shift, chunk.shape[1])
                shift -= drop
                chunk = chunk[:, drop:]
                if not chunk.shape[1]:
                    continue
            yield chunk
    finally:
        if hasattr(chunks, "close"):
            chunks.close()  # closes the file with this wrapper


def source_audio_offset(video: MediaInfo, audio: str | os.PathLike[str]) -> float:
    """The ``offset_s`` that keeps ``audio`` in sync under ``video``: when the audio is the video file's
    own sound track, its streams' start times apart (the sound may start 0.85 s before the picture);
    for a separate audio file, 0 (its first sample goes with the first frame)."""
    try:
        same = os.path.samefile(video.path, audio)
    except OSError:
        return 0.0
    return video.video_start - video.audio_start if same and video.has_audio else 0.0

