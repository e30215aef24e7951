"""Voice activity (lipsync.audio.vad) on real speech, its energy fallback, the speech weights of the silence
modes, and the stems' limiter (lipsync.media.mix)."""

from __future__ import annotations

import logging
import re
import sys
from fractions import Fraction
from importlib import metadata

import numpy as np
import pytest

from conftest import shared_file
from lipsync.audio import vad
from lipsync.audio.vad import EnergyVAD, SileroVAD, SpeechSpans, detect_speech, load_detector, speech_spans
from lipsync.media import AudioSource, decode_audio
from lipsync.media.mix import CEILING, Limiter, MixedAudioSource
from lipsync.options import LipSyncOptions
from lipsync.stages.silence import RAMP_FRAMES, speech_weights

RATE = 16000
DEFAULTS = LipSyncOptions()
TOLERANCE_S = 0.060


def _settings() -> dict[str, float]:
    return {
        "threshold": DEFAULTS.vad_threshold,
        "min_speech_s": DEFAULTS.vad_min_speech_ms / 1000,
        "min_silence_s": DEFAULTS.vad_min_silence_ms / 1000,
    }


def _loudest_near(wav: np.ndarray, t: float) -> int:
    """The sample of the loudest 20 ms within 0.1 s of ``t``: a cut there is inside a voiced sound, so the
    speech's true edge is exactly the cut."""
    i = int(t * RATE)
    seg = wav[i - 1600 : i + 1600].astype(np.float64)
    energy = np.convolve(seg**2, np.ones(320) / 320, "same")
    return i - 1600 + int(np.argmax(energy))


def speech_with_gaps(cuts: list[float], gaps: list[float]) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Real speech with digital silences of ``gaps`` seconds inserted at ``cuts`` (seconds into the
    recording); returns the audio and each silence's (start, end) in it."""
    wav = decode_audio(shared_file("speech_16k_mono_19.8s_long.wav"), RATE)
    parts, silences, prev, shift = [], [], 0, 0.0
    for t, gap in zip(cuts, gaps, strict=True):
        i = _loudest_near(wav, t)
        parts += [wav[prev:i], np.zeros(round(gap * RATE), np.float32)]
        silences.append((i / RATE + shift, i / RATE + shift + gap))
        shift += round(gap * RATE) / RATE
        prev = i
    parts.append(wav[prev:])
    return np.concatenate(parts), silences


CUTS = [2.0, 6.5, 11.0, 15.5]
GAPS = [0.5, 1.0, 2.0, 1.5]


def _boundary_errors(found: SpeechSpans, silences: list[tuple[float, float]]) -> list[float]:
    errors = []
    for start, end in silences:
        ends, starts = found.spans[:, 1], found.spans[:, 0]
        errors.append(float(np.min(np.abs(ends - start))))  # speech stops where the silence starts
        errors.append(float(np.min(np.abs(starts - end))))  # and comes back where it ends
    return errors


def test_silero_model_comes_from_the_installed_package_without_importing_it():
    path = vad.silero_model_path()
    assert path is not None and path.name == "silero_vad.onnx" and "silero_vad" in str(path)
    detector = load_detector()
    assert isinstance(detector, SileroVAD) and detector.name == "silero"
    # Only the ONNX file is used: the package (which imports torch) is never imported, and depending on
    # it brings in nothing but torch (ours already) and packaging: torchaudio sits in its extras only.
    assert "silero_vad" not in sys.modules
    plain = {re.split(r"[ <>=;!~\[]", r, maxsplit=1)[0].lower()
             for r in metadata.requires("silero-vad") or [] if "extra ==" not in r}  # fmt: skip
    assert plain <= {"torch", "packaging"}, plain


@pytest.mark.shared_media
def test_silero_finds_each_inserted_silence_within_60_ms():
    audio, silences = speech_with_gaps(CUTS, GAPS)
    found = detect_speech(load_detector(), audio, **_settings())
    assert found.detector == "silero"
    errors = _boundary_errors(found, silences)
    assert max(errors) <= TOLERANCE_S, [round(e * 1000) for e in errors]
    # No silence is found inside the silences, and none in the speech between them (natural pauses are
    # shorter than vad_min_silence_ms except one, 16.2-17.0 s of the recording, which lies after the cuts).
    for start, end in silences:
        inside = (found.spans[:, 0] < end - TOLERANCE_S) & (found.spans[:, 1] > start + TOLERANCE_S)
        assert not inside.any()


@pytest.mark.shared_media
def test_energy_fallback_runs_with_a_warning_when_the_model_file_is_missing(monkeypatch, caplog):
    monkeypatch.setattr(vad, "silero_model_path", lambda: None)  # a broken install: no model file
    with caplog.at_level(logging.WARNING, logger="lipsync.audio.vad"):
        detector = load_detector()
    assert isinstance(detector, EnergyVAD)
    assert any("energy" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    audio, silences = speech_with_gaps(CUTS, GAPS)
    found = detect_speech(detector, audio, **_settings())
    assert found.detector == "energy"
    errors = _boundary_errors(found, silences)
    assert max(errors) <= TOLERANCE_S, [round(e * 1000) for e in errors]


def test_a_damaged_model_file_falls_back_too(tmp_path, caplog):
    broken = tmp_path / "silero_vad.onnx"
    broken.write_bytes(b"not an onnx model")
    with caplog.at_level(logging.WARNING, logger="lipsync.audio.vad"):
        assert isinstance(load_detector(broken), EnergyVAD)
    assert "could not be loaded" in caplog.text


def test_digital_silence_has_no_speech():
    found = detect_speech(load_detector(), np.zeros(RATE * 2, np.float32), **_settings())
    assert len(found.spans) == 0 and found.speech_s == 0.0


def test_spans_fill_short_silences_and_drop_short_speech():
    chunk = vad.CHUNK_S
    scores = np.zeros(100, np.float32)
    scores[10:30] = 0.9  # 0.64 s of speech
    scores[33:60] = 0.9  # a 3-chunk (96 ms) pause: filled
    scores[80:82] = 0.9  # 64 ms: a click, dropped
    found = speech_spans(scores, 100 * chunk, threshold=0.5, min_speech_s=0.12, min_silence_s=0.3)
    np.testing.assert_allclose(found.spans, [[10 * chunk, 60 * chunk]])
    # Hysteresis: 0.4 keeps a span open (above 0.5 - 0.15) but does not open one.
    scores = np.array([0.0, 0.6, 0.4, 0.4, 0.0, 0.4, 0.0], np.float32)
    found = speech_spans(scores, 7 * chunk, threshold=0.5, min_speech_s=0.0, min_silence_s=0.0)
    np.testing.assert_allclose(found.spans, [[chunk, 4 * chunk]])


def test_speech_weights_ramp_over_a_few_frames():
    fps = Fraction(25)
    spans = SpeechSpans(np.array([[1.0, 2.0]]), 4.0, "test")
    w = speech_weights(spans, fps, 100)
    assert np.all(w[25:50] == 1.0) and np.all(w[:21] == 0.0) and np.all(w[54:] == 0.0)
    # Eases in over RAMP_FRAMES frames before speech and out after it, never jumping by more than a step.
    assert w[25 - RAMP_FRAMES : 25].tolist() == pytest.approx([0.25, 0.5, 0.75])
    assert w[50 : 50 + RAMP_FRAMES].tolist() == pytest.approx([0.75, 0.5, 0.25])
    assert np.max(np.abs(np.diff(w))) <= 1 / (RAMP_FRAMES + 1) + 1e-6


# --- the stems' mix --------------------------------------------------------------------------------------


def _read_all(source, block: int) -> np.ndarray:
    out = []
    while True:
        got = source.read(block)
        if not got.shape[1]:
            return np.concatenate(out, axis=1) if out else np.zeros((source.channels, 0), np.float32)
        out.append(got)


def test_mix_of_loud_stems_never_clips_and_keeps_the_longest_length():
    rate = 48000
    t = np.arange(2 * rate) / rate
    a = (0.95 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    b = np.stack([0.9 * np.sin(2 * np.pi * 331 * t[:rate]), 0.9 * np.sin(2 * np.pi * 97 * t[:rate])], 1)
    with MixedAudioSource([AudioSource.from_array(a, rate), AudioSource.from_array(b.astype(np.float32), rate)],
                          rate) as mix:  # fmt: skip
        assert mix.channels == 2  # a mono stem is centred in a stereo mix
        out = _read_all(mix, 1000)
    assert out.shape == (2, 2 * rate)
    naive = np.abs(a[None, :rate] + b.T).max()
    assert naive > 1.5 and np.abs(out).max() <= CEILING + 1e-6
    # After the loud overlap the gain recovers: the lone stem comes back at (nearly) its own level.
    assert np.abs(out[0, -rate // 4 :]).max() == pytest.approx(0.95 * min(1.0, CEILING / 0.95), rel=0.02)


def test_quiet_stems_mix_to_their_exact_sum_whatever_the_block_size():
    rate = 16000
    rng = np.random.default_rng(3)
    a = (0.2 * rng.standard_normal(rate)).clip(-0.35, 0.35).astype(np.float32)
    b = (0.2 * rng.standard_normal(rate // 2)).clip(-0.35, 0.35).astype(np.float32)
    expected = a.copy()
    expected[: len(b)] += b
    for block in (1, 777, 5000, 40000):
        with MixedAudioSource([AudioSource.from_array(a, rate), AudioSource.from_array(b, rate)], rate) as mix:
            got = _read_all(mix, block)
        assert got.shape == (1, rate)
        np.testing.assert_allclose(got[0], expected, atol=1e-6)


def test_limiter_gain_moves_smoothly():
    rate = 16000
    x = np.zeros((1, rate), np.float32)
    x[0, 8000:8400] = 3.0  # a burst three times over full scale
    lim = Limiter(rate, 1)
    y = np.concatenate([lim.process(x[:, :5000]), lim.process(x[:, 5000:]), lim.flush()], axis=1)[:, lim.look :]
    assert y.shape == x.shape and np.abs(y).max() <= CEILING + 1e-6
    gain = np.ones(rate)
    gain[x[0] != 0] = y[0][x[0] != 0] / x[0][x[0] != 0]
    assert gain.min() == pytest.approx(CEILING / 3.0, rel=1e-3)


def test_mix_open_names_the_bad_stem_and_closes_the_others(tmp_path):
    from lipsync.errors import NotAMediaFile
    from pipeline_fixtures import write_speechlike_wav

    good = write_speechlike_wav(tmp_path / "good.wav", 0.5)
    bad = tmp_path / "bad.wav"
    bad.write_text("this is not audio\n" * 50)
    with pytest.raises(NotAMediaFile) as info:
        MixedAudioSource.open([(good, "characters[0].audio"), (bad, "characters[1].audio")], 16000)
    assert info.value.field == "characters[1].audio"
