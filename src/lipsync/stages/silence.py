"""The driving tracks of a job and what silence does to the faces that follow them.

A *voice* is one driving track: the main audio, or a character's own stem. Each is decoded once at
16 kHz for its mel spectrogram and its voice activity (lipsync.audio.vad); only the mel and the speech
spans outlive the load. Every synced character follows one voice: its own, else the main audio.

Per voice and output frame, a *speech weight*: 1 where the frame overlaps speech, falling linearly to 0
over ``RAMP_FRAMES`` frames into a silence (so a mouth eases shut or open instead of popping), 0 in the
rest of a silence and past the voice's end. What it does depends on the ``silence`` setting:

* ``generate``: nothing (the mouth follows whatever the track holds, noise included);
* ``closed``: the generator's mel window is blended toward the mel of true silence by the weight, so in
  a silence it gets exactly that mel and the mouth rests closed;
* ``original``: the synced face is blended back toward the source frame by the weight, so a silence
  shows the source face untouched (and is not generated at all).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import numpy as np

from lipsync.audio import MEL_STEP, mel_batch, num_audio_frames, wav2lip_mel
from lipsync.audio.mel import MEL_FPS
from lipsync.audio.vad import SpeechSpans, VoiceDetector, detect_speech
from lipsync.errors import LipSyncError, MediaError
from lipsync.media import decode_audio, probe
from lipsync.options import LipSyncOptions
from lipsync.types import Box, SilenceMode

log = logging.getLogger(__name__)

AUDIO_RATE = 16000  # Wav2Lip's mel and the VAD are defined at 16 kHz
MAX_OUTPUT_AUDIO_RATE = 48000
RAMP_FRAMES = 3  # frames over which a mouth eases between speech and silence


@lru_cache(maxsize=1)
def silence_window() -> np.ndarray:
    """The (80, 16) mel window of digital silence (what Wav2Lip sees when nothing is said)."""
    mel = wav2lip_mel(np.zeros(AUDIO_RATE // 2, np.float32), AUDIO_RATE)
    window = np.ascontiguousarray(mel[:, :MEL_STEP])
    window.setflags(write=False)
    return window


def name_field(exc: LipSyncError, field_name: str) -> LipSyncError:
    """Name the track's own field: the media layer calls every audio ``audio``."""
    if exc.field in (None, "audio"):
        exc.field = field_name
    return exc


@dataclass(frozen=True)
class Voice:
    """One driving track, as far as the render needs it."""

    path: Path
    field: str  # the request field it came from: "audio" or "characters[i].audio"
    mel: np.ndarray  # (80, T)
    num_samples: int  # at 16 kHz
    native_rate: int  # the file's own rate (AUDIO_RATE when unknown)
    speech: SpeechSpans

    @property
    def duration_s(self) -> float:
        return self.num_samples / AUDIO_RATE

    def frames(self, fps: Fraction) -> int:
        return num_audio_frames(self.num_samples, AUDIO_RATE, fps)


def load_voice(
    path: Path, field_name: str, detector: VoiceDetector, options: LipSyncOptions, *, offset_s: float = 0.0
) -> Voice:
    """Decode a track at 16 kHz, take its mel and its speech spans, and drop the waveform. ``offset_s``:
    where the track starts relative to the video (nonzero when it is the video's own sound)."""
    try:
        wav = decode_audio(path, sample_rate=AUDIO_RATE, offset_s=offset_s)
        native = AUDIO_RATE
        with contextlib.suppress(LipSyncError):
            native = int(probe(path).audio_sample_rate or AUDIO_RATE)
    except MediaError as exc:
        raise name_field(exc, field_name) from None
    speech = detect_speech(
        detector, wav, threshold=options.vad_threshold, min_speech_s=options.vad_min_speech_ms / 1000,
        min_silence_s=options.vad_min_silence_ms / 1000,
    )  # fmt: skip
    log.info(
        "%s (%s): %.2f s, %.2f s of speech in %d spans (%s VAD)",
        path.name, field_name, len(wav) / AUDIO_RATE, speech.speech_s, len(speech.spans), speech.detector,
    )  # fmt: skip
    return Voice(Path(path), field_name, wav2lip_mel(wav, AUDIO_RATE), len(wav), native, speech)


def output_rate(voices: list[Voice]) -> int:
    """The rate to mux at: the highest input rate, clamped to 16-48 kHz."""
    native = max(v.native_rate for v in voices)
    return int(min(MAX_OUTPUT_AUDIO_RATE, max(AUDIO_RATE, native)))


def speech_weights(speech: SpeechSpans, fps: Fraction, num_frames: int, ramp: int = RAMP_FRAMES) -> np.ndarray:
    """(num_frames,) float32: 1 on frames overlapping speech, ramping to 0 over ``ramp`` frames away."""
    is_speech = np.zeros(num_frames, bool)
    f = float(fps)
    for a, b in speech.spans:
        first = int(np.floor(a * f))
        last = int(np.ceil(b * f))  # exclusive: frame i covers [i / fps, (i + 1) / fps)
        is_speech[max(0, first) : max(0, min(num_frames, last))] = True
    if not is_speech.any():
        return np.zeros(num_frames, np.float32)
    # Distance in frames to the nearest speech frame, forwards and backwards.
    idx = np.arange(num_frames)
    last_seen = np.maximum.accumulate(np.where(is_speech, idx, -(10**9)))
    next_seen = np.minimum.accumulate(np.where(is_speech, idx, 10**9)[::-1])[::-1]
    distance = np.minimum(idx - last_seen, next_seen - idx)
    return np.clip(1.0 - distance / (ramp + 1), 0.0, 1.0).astype(np.float32)


@dataclass
class VoicePlan:
    """Which voice each character follows, and each voice's speech weight per output frame."""

    voices: list[Voice]
    follows: list[int]  # per character (track) index: its voice's index
    weights: list[np.ndarray]  # per voice: (num_out,) float32
    mode: SilenceMode
    fps: Fraction
    ends: list[int] = field(default_factory=list)  # per voice: its output frame count

    @classmethod
    def build(cls, voices: list[Voice], follows: list[int], mode: SilenceMode, fps: Fraction,
              num_out: int) -> VoicePlan:  # fmt: skip
        weights = [speech_weights(v.speech, fps, num_out) for v in voices]
        return cls(voices, follows, weights, mode, fps, [v.frames(fps) for v in voices])

    @classmethod
    def single(cls, mel: np.ndarray, fps: Fraction, num_out: int, characters: int = 1) -> VoicePlan:
        """One track, all speech, followed by every character: today's behaviour (``silence=generate``)
        for callers that have a mel and no VAD (tests, tools)."""
        seconds = mel.shape[1] / MEL_FPS
        speech = SpeechSpans(np.array([[0.0, seconds]]), seconds, "none")
        voice = Voice(Path(""), "audio", mel, round(seconds * AUDIO_RATE), AUDIO_RATE, speech)
        return cls.build([voice], [0] * characters, "generate", fps, num_out)

    def speech_frames(self, character: int) -> int:
        return int(np.count_nonzero(self.weights[self.follows[character]] >= 1.0))

    def face_weight(self, character: int, frame: int) -> float:
        """How much of the synced face shows: 1 fully; below 1 (``original`` mode) blended toward the
        source; 0: the face passes through untouched and is not generated."""
        if self.mode != "original":
            return 1.0
        return float(self.weights[self.follows[character]][frame])

    def mel_windows(self, characters: list[int], frames: list[int]) -> np.ndarray:
        """(N, 80, 16) mel windows for these (character, output frame) pairs, from each one's voice."""
        out = np.empty((len(frames), *silence_window().shape), np.float32)
        by_voice: dict[int, list[int]] = {}
        for row, ch in enumerate(characters):
            by_voice.setdefault(self.follows[ch], []).append(row)
        for v, rows in by_voice.items():
            voice, weights = self.voices[v], self.weights[v]
            rows_in = [r for r in rows if frames[r] < self.ends[v]]
            # Past its end a track is silent: the mix pads it with silence, and so does its mel.
            out[[r for r in rows if frames[r] >= self.ends[v]]] = silence_window()
            if not rows_in:
                continue
            windows = mel_batch(voice.mel, [frames[r] for r in rows_in], self.fps)
            if self.mode == "closed":
                w = weights[[frames[r] for r in rows_in]][:, None, None]
                windows = w * windows + (1.0 - w) * silence_window()
            out[rows_in] = windows
        return out


def fade_face(before: np.ndarray, after: np.ndarray, box: Box, weight: float) -> np.ndarray:
    """``after`` with its ``box`` region blended back toward ``before`` (1: all ``after``)."""
    if weight >= 1.0:
        return after
    x1, y1, x2, y2 = (int(v) for v in box.as_list())
    out = after.copy() if after is before else after
    region = before[y1:y2, x1:x2].astype(np.float32)
    mixed = region + weight * (after[y1:y2, x1:x2].astype(np.float32) - region)
    out[y1:y2, x1:x2] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return out
