"""The Wav2Lip mel spectrogram: parity with the same recipe written with librosa, windows, edge cases."""

from __future__ import annotations

import math
import subprocess
import wave
from fractions import Fraction

import numpy as np
import pytest
from scipy import signal

from lipsync.audio import (
    MEL_STEP,
    mel_batch,
    mel_filterbank,
    mel_window,
    mel_windows,
    num_audio_frames,
    wav2lip_mel,
)
from lipsync.errors import EmptyAudio, InputError

librosa = pytest.importorskip("librosa", reason="librosa is the test-only reference for the mel recipe")

SR = 16000
PARITY = 1e-4


def librosa_reference(wav: np.ndarray) -> np.ndarray:
    """The Wav2Lip recipe as written with librosa: periodic Hann, centred frames, reflect padding (the
    default of librosa 0.7, which Wav2Lip was trained with; newer librosa defaults to zeros)."""
    y = signal.lfilter([1.0, -0.97], [1.0], wav)
    spec = np.abs(librosa.stft(y=y, n_fft=800, hop_length=200, win_length=800, pad_mode="reflect"))
    basis = librosa.filters.mel(sr=SR, n_fft=800, n_mels=80, fmin=55, fmax=7600, htk=False, norm="slaney")
    db = 20.0 * np.log10(np.maximum(1e-5, basis @ spec)) - 20.0
    return np.clip(8.0 * ((db + 100.0) / 100.0) - 4.0, -4.0, 4.0)


def chirp(seconds: float = 4.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    sweep = 0.5 * signal.chirp(t, f0=60, t1=seconds, f1=7500, method="logarithmic")
    # An amplitude envelope with quiet stretches exercises the dB floor and the clipping at -4.
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 0.7 * t) ** 3
    return (sweep * envelope).astype(np.float32)


def read_wav_mono_16k(path) -> np.ndarray:
    with wave.open(str(path), "rb") as wf:
        channels, width, rate = wf.getnchannels(), wf.getsampwidth(), wf.getframerate()
        raw = wf.readframes(wf.getnframes())
    assert width == 2, "test helper reads 16-bit PCM"
    data = np.frombuffer(raw, dtype="<i2").astype(np.float64) / 32768.0
    data = data.reshape(-1, channels).mean(axis=1)
    if rate != SR:
        g = math.gcd(rate, SR)
        data = signal.resample_poly(data, SR // g, rate // g)
    return data.astype(np.float32)


# --- parity -----------------------------------------------------------------------------------------


def test_filterbank_matches_librosa_slaney():
    ref = librosa.filters.mel(sr=SR, n_fft=800, n_mels=80, fmin=55, fmax=7600, htk=False, norm="slaney")
    ours = mel_filterbank()
    assert ours.shape == ref.shape == (80, 401)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-8)


def test_parity_on_synthetic_chirp():
    wav = chirp()
    ours = wav2lip_mel(wav)
    ref = librosa_reference(wav)
    assert ours.shape == ref.shape == (80, 1 + len(wav) // 200)
    assert ours.dtype == np.float32
    assert np.abs(ours - ref).max() <= PARITY
    # Not trivially saturated: the comparison covers a real dynamic range.
    assert ours.min() < -3.0 and ours.max() > 0.5


def test_parity_on_real_speech(shared_media):
    path = shared_media("speech_en_16k_stereo_8s.wav")
    wav = read_wav_mono_16k(path)
    ours = wav2lip_mel(wav)
    ref = librosa_reference(wav)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= PARITY


@pytest.mark.filterwarnings("ignore:n_fft=800 is too large:UserWarning")
def test_parity_on_odd_lengths():
    # Lengths that do not divide the hop check the frame count and the end padding.
    rng = np.random.default_rng(0)
    for n in (1, 199, 200, 201, 799, 801, 3001):
        wav = (0.1 * rng.standard_normal(n)).astype(np.float32)
        ours, ref = wav2lip_mel(wav), librosa_reference(wav)
        assert ours.shape == ref.shape == (80, 1 + n // 200), n
        assert np.abs(ours - ref).max() <= PARITY, n


def test_tts_speech_is_finite_and_matches(espeak, tmp_path):
    out = tmp_path / "tts.wav"
    subprocess.run(
        [espeak, "-w", str(out), "The quick brown fox jumps over the lazy dog. Lip sync test."],
        check=True,
        capture_output=True,
        timeout=60,
    )
    wav = read_wav_mono_16k(out)  # espeak-ng writes 22050 Hz; resampled in the helper
    mel = wav2lip_mel(wav)
    assert np.isfinite(mel).all()
    assert mel.min() >= -4.0 and mel.max() <= 4.0
    assert mel.max() > 0.0  # real speech energy, not a floor
    assert np.abs(mel - librosa_reference(wav)).max() <= PARITY


def test_digital_silence_is_floor_not_nan():
    mel = wav2lip_mel(np.zeros(SR, dtype=np.float32))
    assert np.isfinite(mel).all()
    assert (mel == -4.0).all()


def test_integer_pcm_and_other_rates_are_accepted():
    wav = chirp(1.0)
    at_48k = signal.resample_poly(wav.astype(np.float64), 3, 1)
    direct = wav2lip_mel(signal.resample_poly(at_48k, 1, 3))
    np.testing.assert_allclose(wav2lip_mel(at_48k, sample_rate=48000), direct, atol=1e-6)
    pcm = np.round(wav * 32767).astype(np.int16)
    mel = wav2lip_mel(pcm)
    assert mel.shape == (80, 81)
    # Scaled like float audio: only 16-bit quantisation noise separates the two.
    np.testing.assert_allclose(mel, wav2lip_mel(pcm.astype(np.float64) / 32768.0), atol=1e-6)
    # Compared above 16-bit PCM's own noise floor (about -96 dBFS, i.e. -3.7 on the [-4, 4] scale): below it
    # the quantisation noise is the signal (the reflect-padded last frame of this fading chirp sits there).
    reference = wav2lip_mel(wav)
    audible = reference > -3.5
    assert audible.sum() >= 500  # the sweep lights a few bands at a time: still a thousand bins compared
    assert np.abs(mel - reference)[audible].max() < 0.05


def test_long_audio_is_processed_in_blocks():
    # Longer than one block of STFT frames, so the block seams are checked against the reference.
    rng = np.random.default_rng(3)
    wav = (0.2 * rng.standard_normal(4096 * 200 + 4321)).astype(np.float32)
    ours = wav2lip_mel(wav)
    assert ours.shape == (80, 1 + len(wav) // 200)
    assert np.abs(ours - librosa_reference(wav)).max() <= PARITY


@pytest.mark.parametrize(
    ("wav", "error", "field"),
    [
        (np.zeros((2, 100), dtype=np.float32), InputError, "audio"),
        (np.zeros(0, dtype=np.float32), EmptyAudio, "audio"),
        (np.array([0.0, np.nan, 0.0]), InputError, "audio"),
        (np.array([0.0, np.inf]), InputError, "audio"),
    ],
)
def test_bad_audio_raises_input_error(wav, error, field):
    with pytest.raises(error) as info:
        wav2lip_mel(wav)
    assert info.value.field == field
    assert info.value.message


def test_bad_sample_rate():
    with pytest.raises(InputError) as info:
        wav2lip_mel(np.zeros(100, dtype=np.float32), sample_rate=0)
    assert info.value.field == "sample_rate"


# --- windows ----------------------------------------------------------------------------------------


def ramp_mel(columns: int) -> np.ndarray:
    # Column j holds the value j, so a window's first entry names its start column.
    return np.tile(np.arange(columns, dtype=np.float32), (80, 1))


@pytest.mark.parametrize("fps", [Fraction(25), Fraction(30000, 1001), Fraction(24000, 1001), Fraction(60)])
def test_window_start_is_exact_floor(fps):
    mel = ramp_mel(10_000)
    for i in range(0, 3000, 7):
        start = math.floor(Fraction(i * 80) / fps)
        if start + MEL_STEP > mel.shape[1]:
            start = mel.shape[1] - MEL_STEP
        window = mel_window(mel, i, fps)
        assert window.shape == (80, MEL_STEP)
        assert window[0, 0] == start, (i, fps)


def test_window_float_fps_matches_wav2lip_arithmetic():
    mel = ramp_mel(5000)
    for i in range(500):
        assert mel_window(mel, i, 25.0)[0, 0] == int(80.0 * (i / 25.0))
        assert mel_window(mel, i, 25)[0, 0] == int(80.0 * (i / 25.0))


def test_window_past_end_uses_last_columns():
    mel = ramp_mel(100)
    last = mel_window(mel, 10_000, Fraction(25))
    np.testing.assert_array_equal(last, mel[:, -MEL_STEP:])
    # Frame 27 at 25 fps starts at column 86: 86 + 16 > 100, so clamp.
    assert mel_window(mel, 27, 25)[0, 0] == 100 - MEL_STEP


def test_short_audio_window_is_padded_with_silence():
    mel = wav2lip_mel(np.full(400, 0.1, dtype=np.float32))  # 3 columns
    assert mel.shape == (80, 3)
    window = mel_window(mel, 0, 25)
    assert window.shape == (80, MEL_STEP)
    np.testing.assert_array_equal(window[:, :3], mel)
    assert (window[:, 3:] == -4.0).all()


def test_mel_windows_and_batch_agree_with_mel_window():
    mel = wav2lip_mel(chirp(2.0))
    fps = Fraction(30000, 1001)
    n = num_audio_frames(2 * SR, SR, fps)
    windows = list(mel_windows(mel, fps, n))
    assert len(windows) == n == 60
    batch = mel_batch(mel, range(n), fps)
    assert batch.shape == (n, 80, MEL_STEP) and batch.dtype == np.float32
    for i, w in enumerate(windows):
        np.testing.assert_array_equal(w, mel_window(mel, i, fps))
        np.testing.assert_array_equal(batch[i], w)


def test_num_audio_frames_is_ceil():
    assert num_audio_frames(16000, 16000, 25) == 25
    assert num_audio_frames(16001, 16000, 25) == 26
    assert num_audio_frames(0, 16000, 25) == 0
    assert num_audio_frames(8 * 16000, 16000, Fraction(30000, 1001)) == math.ceil(8 * 30000 / 1001)
    assert num_audio_frames(16000, 16000, "30000/1001") == 30


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda m: mel_window(m, -1, 25), "frame_index"),
        (lambda m: mel_window(m, 0, 0), "fps"),
        (lambda m: mel_window(m, 0, -25), "fps"),
        (lambda m: mel_window(m, 0, "fast"), "fps"),
        (lambda m: mel_window(m[:40], 0, 25), "mel"),
        (lambda m: list(mel_windows(m, 25, -1)), "num_frames"),
        (lambda m: mel_batch(m, [0, -2], 25), "frame_index"),
        (lambda m: num_audio_frames(-1, 16000, 25), "num_samples"),
        (lambda m: num_audio_frames(10, 0, 25), "sample_rate"),
    ],
)
def test_window_argument_errors(call, field):
    with pytest.raises(InputError) as info:
        call(ramp_mel(50))
    assert info.value.field == field
