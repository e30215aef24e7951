"""The Wav2Lip mel spectrogram, in numpy/scipy only (librosa is a test-time reference, never a runtime need).

Recipe (the one Wav2Lip and its SyncNet expert were trained with):

1. 16 kHz mono, preemphasis ``y[n] = x[n] - 0.97 x[n-1]``;
2. STFT with n_fft = win = 800, hop = 200, a periodic Hann window, ``center=True`` with reflect padding
   of n_fft // 2 on each side (librosa 0.7's default, which Wav2Lip used; librosa >= 0.10 defaults to
   zeros, so a librosa reference must pass ``pad_mode="reflect"``), magnitude ``|X|``;
3. 80 mel bands on the Slaney scale with Slaney (area) normalisation, 55 Hz .. 7600 Hz;
4. ``20 log10(max(1e-5, S)) - 20`` dB;
5. symmetric normalisation ``clip(8 (S + 100) / 100 - 4, -4, 4)``.

There are 80 mel columns per second (16000 / 200), so video frame *i* at *fps* starts at column
``floor(i * 80 / fps)`` and takes 16 columns (0.2 s).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from fractions import Fraction
from functools import lru_cache
from numbers import Rational

import numpy as np

from lipsync.errors import EmptyAudio, InputError

SAMPLE_RATE = 16000
N_FFT = 800
HOP_LENGTH = 200
WIN_LENGTH = 800
NUM_MELS = 80
FMIN = 55.0
FMAX = 7600.0
PREEMPHASIS = 0.97
MIN_LEVEL_DB = -100.0
REF_LEVEL_DB = 20.0
MAX_ABS_VALUE = 4.0
AMP_FLOOR = 1e-5
MEL_STEP = 16  # mel columns per Wav2Lip window (0.2 s)
MEL_FPS = SAMPLE_RATE // HOP_LENGTH  # 80 mel columns per second

# STFT frames are processed in blocks so a 3-hour track never materialises its (frames, 800) framing.
_BLOCK_FRAMES = 4096


# --- mel filterbank ---------------------------------------------------------------------------------

# Slaney's Auditory Toolbox scale: linear (200/3 Hz per mel) below 1 kHz, logarithmic above it.
_F_SP = 200.0 / 3.0
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOG_STEP = math.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / _F_SP
    log_part = hz >= _MIN_LOG_HZ
    mel[log_part] = _MIN_LOG_MEL + np.log(hz[log_part] / _MIN_LOG_HZ) / _LOG_STEP
    return mel


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    hz = mel * _F_SP
    log_part = mel >= _MIN_LOG_MEL
    hz[log_part] = _MIN_LOG_HZ * np.exp(_LOG_STEP * (mel[log_part] - _MIN_LOG_MEL))
    return hz


@lru_cache(maxsize=4)
def mel_filterbank(
    sample_rate: int = SAMPLE_RATE,
    n_fft: int = N_FFT,
    n_mels: int = NUM_MELS,
    fmin: float = FMIN,
    fmax: float = FMAX,
) -> np.ndarray:
    """(n_mels, 1 + n_fft // 2) triangular filters, Slaney scale, each scaled to unit area (Slaney norm).

    Cached and returned read-only: it is a constant of the recipe.
    """
    fft_hz = np.linspace(0.0, sample_rate / 2.0, 1 + n_fft // 2)
    # n_mels + 2 edges equally spaced in mel: filter m rises from edge m to m+1 and falls to m+2.
    edges_hz = mel_to_hz(
        np.linspace(hz_to_mel(np.array([fmin]))[0], hz_to_mel(np.array([fmax]))[0], n_mels + 2)
    )
    widths = np.diff(edges_hz)
    lower, upper = edges_hz[:-2, None], edges_hz[2:, None]
    rising = (fft_hz[None, :] - lower) / widths[:-1, None]
    falling = (upper - fft_hz[None, :]) / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    # Slaney normalisation: divide each triangle by half its base width so every band has equal area.
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    weights.setflags(write=False)
    return weights


@lru_cache(maxsize=4)
def _hann_periodic(n: int) -> np.ndarray:
    # Periodic ("DFT-even") Hann, the window librosa.stft uses: 0.5 - 0.5 cos(2 pi k / n), k = 0..n-1.
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)
    window.setflags(write=False)
    return window


# --- spectrogram ------------------------------------------------------------------------------------


def _count(value: object, field: str, *, minimum: int = 0) -> int:
    """An integer argument (Python or numpy, never bool) of at least ``minimum``, or an InputError naming it."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        kind = "positive" if minimum > 0 else "non-negative"
        raise InputError(f"{field} must be a {kind} integer, got {value!r}", field=field)
    return int(value)


def _as_mono_16k(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """Validate; resample to 16 kHz when needed. Float or integer samples, not copied when already 16 kHz."""
    wav = np.asarray(wav)
    if wav.ndim != 1:
        raise InputError(
            f"audio must be a mono 1-D array of samples, got shape {wav.shape}; downmix it first",
            field="audio",
        )
    if wav.size == 0:
        raise EmptyAudio("the audio has no samples; provide speech of non-zero length", field="audio")
    if not np.issubdtype(wav.dtype, np.floating) and not np.issubdtype(wav.dtype, np.integer):
        raise InputError(f"audio samples must be numbers, got dtype {wav.dtype}", field="audio")
    sample_rate = _count(sample_rate, "sample_rate", minimum=1)
    if sample_rate != SAMPLE_RATE:
        # The network was trained on 16 kHz features; resample with a proper polyphase low-pass.
        # Imported here: scipy.signal pulls in scipy.stats and costs about a third of the run path's
        # start-up, and the pipeline's own audio arrives at 16 kHz already (media.decode_audio).
        from scipy.signal import resample_poly

        g = math.gcd(SAMPLE_RATE, sample_rate)
        wav = resample_poly(_to_float(wav), SAMPLE_RATE // g, sample_rate // g)
    return wav


def _to_float(samples: np.ndarray) -> np.ndarray:
    # Integer PCM is scaled to [-1, 1) like every decoder's float output; the dB levels assume that scale.
    if np.issubdtype(samples.dtype, np.integer):
        return samples.astype(np.float64) / float(2 ** (8 * samples.dtype.itemsize - 1))
    return samples.astype(np.float64, copy=False)


def _reflect(idx: np.ndarray, n: int) -> np.ndarray:
    """Indices folded into ``0:n`` the way ``np.pad(mode="reflect")`` extends a signal (edge not repeated;
    pads longer than the signal reflect again)."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    folded = np.mod(idx, period)
    return np.where(folded >= n, period - folded, folded)


def _preemphasized(x: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Samples ``start:stop`` of ``y = lfilter([1, -0.97], [1], x)``, reflected outside ``0:len(x)``.

    Reflect padding is what Wav2Lip's training features had (librosa 0.7's stft default); newer librosa
    pads with zeros, which changes the first and last two mel columns. The filter is FIR, so any stretch of
    y needs just one sample of history.
    """
    idx = _reflect(np.arange(start, stop), len(x))
    base = max(0, int(idx.min()) - 1)
    cur_and_history = _to_float(x[base : int(idx.max()) + 1])
    if not np.all(np.isfinite(cur_and_history)):
        raise InputError("the audio contains NaN or infinite samples", field="audio")
    cur = cur_and_history[idx - base]
    prev = np.where(idx > 0, cur_and_history[np.maximum(idx - 1 - base, 0)], 0.0)
    return cur - PREEMPHASIS * prev


def _normalised_db(mel: np.ndarray) -> np.ndarray:
    db = 20.0 * np.log10(np.maximum(AMP_FLOOR, mel)) - REF_LEVEL_DB
    scaled = (2.0 * MAX_ABS_VALUE) * ((db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS_VALUE
    return np.clip(scaled, -MAX_ABS_VALUE, MAX_ABS_VALUE)


def _wav2lip_features(x: np.ndarray) -> np.ndarray:
    """Normalised dB mel of |STFT| of the preemphasised ``x``: (n_mels, 1 + len(x) // hop) float32.

    Worked in blocks of frames straight from ``x``: memory beyond the output stays bounded however long
    the audio is (a 3-hour track would otherwise make several gigabyte-sized float64 copies).
    """
    pad = N_FFT // 2
    n_frames = 1 + len(x) // HOP_LENGTH  # = 1 + (len(x) + 2 * pad - n_fft) // hop, as n_fft = 2 * pad
    window = _hann_periodic(WIN_LENGTH)  # win == n_fft, so no centring of a shorter window is needed
    basis = mel_filterbank()
    out = np.empty((NUM_MELS, n_frames), dtype=np.float32)
    for first in range(0, n_frames, _BLOCK_FRAMES):
        count = min(_BLOCK_FRAMES, n_frames - first)
        # Frame f covers padded samples [f * hop, f * hop + n_fft), i.e. signal samples shifted by -pad.
        seg_start = first * HOP_LENGTH - pad
        segment = _preemphasized(x, seg_start, seg_start + (count - 1) * HOP_LENGTH + N_FFT)
        frames = np.lib.stride_tricks.sliding_window_view(segment, N_FFT)[::HOP_LENGTH]
        magnitude = np.abs(np.fft.rfft(frames * window, n=N_FFT, axis=1))
        out[:, first : first + count] = _normalised_db(basis @ magnitude.T)
    return out


def wav2lip_mel(wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The Wav2Lip mel spectrogram of a mono waveform: (80, 1 + n // 200) float32 in [-4, 4].

    ``wav`` holds float samples (nominally -1..1) or integer PCM (scaled to -1..1 by its type's range).
    Audio at another ``sample_rate`` is resampled to 16 kHz first. Silence maps to -4, never NaN or -inf.
    """
    return _wav2lip_features(_as_mono_16k(wav, sample_rate))


# --- per-video-frame windows ------------------------------------------------------------------------


def _exact_fps(fps: object) -> Fraction:
    if isinstance(fps, bool):
        raise InputError(f"fps must be a positive number, got {fps!r}", field="fps")
    try:
        # Fraction(float) is the float's exact binary value, so floor() below matches int(i * 80 / f)
        # except where float rounding would have crossed an integer; exact is the intended recipe.
        exact = Fraction(fps) if isinstance(fps, Rational | float | int | str) else Fraction(float(fps))
    except (TypeError, ValueError, OverflowError, ZeroDivisionError) as exc:
        raise InputError(f"fps must be a positive number, got {fps!r}", field="fps") from exc
    if exact <= 0:
        raise InputError(f"fps must be a positive number, got {fps!r}", field="fps")
    return exact


def _check_mel(mel: np.ndarray) -> None:
    if not isinstance(mel, np.ndarray) or mel.ndim != 2 or mel.shape[0] != NUM_MELS or mel.shape[1] == 0:
        shape = getattr(mel, "shape", None)
        raise InputError(f"mel must be an ({NUM_MELS}, T>0) array, got shape {shape}", field="mel")


def _window_start(frame_index: int, fps: Fraction) -> int:
    # floor(i * 80 / fps) in exact rational arithmetic; i * 80 * den // num for fps = num / den.
    return (frame_index * MEL_FPS * fps.denominator) // fps.numerator


def _window(mel: np.ndarray, start: int) -> np.ndarray:
    total = mel.shape[1]
    if total < MEL_STEP:
        # Audio under 0.2 s: pad on the right with silence (-4) so the network still gets 16 columns.
        out = np.full((NUM_MELS, MEL_STEP), -MAX_ABS_VALUE, dtype=np.float32)
        out[:, :total] = mel
        return out
    if start + MEL_STEP > total:
        start = total - MEL_STEP
    return mel[:, start : start + MEL_STEP]


def mel_window(mel: np.ndarray, frame_index: int, fps: Fraction | float | int) -> np.ndarray:
    """The (80, 16) window for output video frame ``frame_index`` at ``fps`` (a view where possible).

    Columns ``floor(i * 80 / fps)`` .. +16; past the end, the last 16 columns.
    """
    _check_mel(mel)
    return _window(mel, _window_start(_count(frame_index, "frame_index"), _exact_fps(fps)))


def mel_windows(mel: np.ndarray, fps: Fraction | float | int, num_frames: int) -> Iterator[np.ndarray]:
    """Yield the (80, 16) window for frames 0 .. num_frames - 1, lazily."""
    _check_mel(mel)
    exact = _exact_fps(fps)
    count = _count(num_frames, "num_frames")

    def generate() -> Iterator[np.ndarray]:
        for i in range(count):
            yield _window(mel, _window_start(i, exact))

    return generate()


def mel_batch(mel: np.ndarray, frame_indices: list[int] | range, fps: Fraction | float | int) -> np.ndarray:
    """Stack the windows of several frames into (N, 80, 16) float32, ready to become (N, 1, 80, 16)."""
    _check_mel(mel)
    exact = _exact_fps(fps)
    out = np.empty((len(frame_indices), NUM_MELS, MEL_STEP), dtype=np.float32)
    for row, i in enumerate(frame_indices):
        out[row] = _window(mel, _window_start(_count(i, "frame_index"), exact))
    return out


def num_audio_frames(num_samples: int, sample_rate: int, fps: Fraction | float | int) -> int:
    """How many video frames at ``fps`` the audio covers: ceil(num_samples * fps / sample_rate), exactly."""
    samples = _count(num_samples, "num_samples")
    rate = _count(sample_rate, "sample_rate", minimum=1)
    return math.ceil(Fraction(samples) * _exact_fps(fps) / rate)
