"""Dialogue dubbing through the pipeline: a driving track per character, the silence modes, their stats,
and the bad inputs. Real speech from ../shared/media, synthetic cartoon faces (ColorFaceBackend), and
recording generator doubles that keep every mel window they are given."""

from __future__ import annotations

import logging
import wave
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import resample_poly

from conftest import shared_file
from lipsync.audio import mel_window, num_audio_frames, wav2lip_mel
from lipsync.audio import vad as vad_module
from lipsync.config import Settings
from lipsync.errors import EmptyAudio, InputError, NotAMediaFile
from lipsync.media import decode_audio, probe
from lipsync.media.mix import CEILING, MixedAudioSource
from lipsync.options import LipSyncOptions
from lipsync.pipeline import LipSyncPipeline, LipSyncRequest
from lipsync.stages.frames import point_for
from lipsync.stages.silence import RAMP_FRAMES, silence_window
from lipsync.types import Character
from pipeline_fixtures import (
    PALETTE,
    ColorFaceBackend,
    FaceSpec,
    IdentityGenerator,
    MouthMarkGenerator,
    moving_box,
    psnr,
    reencode_reference,
    stream_durations,
    write_reference_image,
    write_synthetic_video,
)

pytestmark = pytest.mark.shared_media

W, H, FPS = 256, 192, 25
PADS = (0, 20, 0, 0)
RED = FaceSpec("red", moving_box(40, 30, 64, 84, dx=0.3))
BLUE = FaceSpec("blue", moving_box(150, 40, 60, 80, dx=-0.3))
RATE = 16000
# A silence of 1.2 s of faint room noise (-50 dBFS) cut into real speech at 1.0 s of the output.
GAP_START, GAP_S = 1.0, 1.2


def write_wav(path: Path, samples: np.ndarray, rate: int = RATE) -> Path:
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


def speech(seconds: float, start: float = 1.0, peak: float = 0.9) -> np.ndarray:
    """``seconds`` of the real recording from ``start``, normalised to ``peak``."""
    wav = decode_audio(shared_file("speech_16k_mono_19.8s_long.wav"), RATE)
    part = wav[round(start * RATE) : round((start + seconds) * RATE)].astype(np.float64)
    return (part * (peak / np.abs(part).max())).astype(np.float32)


def room_tone(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.003 * np.random.default_rng(seed).standard_normal(round(seconds * RATE))).astype(np.float32)


def speech_with_silence(path: Path) -> Path:
    """1.0 s of speech, 1.2 s of room tone, 0.8 s of speech (3 s)."""
    voice = speech(1.8, start=1.0)
    cut = round(GAP_START * RATE)
    return write_wav(path, np.concatenate([voice[:cut], room_tone(GAP_S), voice[cut:]]))


class RecordingGenerator(IdentityGenerator):
    """Keeps each face's identity (by its colour) and the mel window it was given, in call order."""

    def __init__(self, inner=None, batch_size: int = 8) -> None:
        super().__init__(batch_size)
        self.inner = inner
        self.rows: list[tuple[str, np.ndarray]] = []

    def __call__(self, faces: np.ndarray, mels: np.ndarray) -> np.ndarray:
        super().__call__(faces, mels)
        for face, mel in zip(faces, mels, strict=True):
            centre = face[40:56, 40:56].reshape(-1, 3).mean(axis=0)
            who = min(PALETTE, key=lambda c: float(np.abs(centre - PALETTE[c]).sum()))
            self.rows.append((who, mel.copy()))
        return self.inner(faces, mels) if self.inner is not None else faces.copy()

    def mels_of(self, who: str) -> list[np.ndarray]:
        return [m for w, m in self.rows if w == who]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("dub")
    return {
        "one": write_synthetic_video(d / "one.mp4", [RED], width=W, height=H, fps=FPS, seconds=3.0),
        "two": write_synthetic_video(d / "two.mp4", [RED, BLUE], width=W, height=H, fps=FPS, seconds=1.2),
        "red_ref": write_reference_image(d / "red.png", "red"),
        "blue_ref": write_reference_image(d / "blue.png", "blue"),
        "green_ref": write_reference_image(d / "green.png", "green"),
        "gapped": speech_with_silence(d / "gapped.wav"),
    }


def run(tmp_path, video, audio, generator, characters=(), **kw):
    pipe = LipSyncPipeline(Settings(), generator=generator, face_backend=ColorFaceBackend())
    options = LipSyncOptions(**{"enhance": "off", "pads": list(PADS), "loop_mode": "none", **kw})
    return pipe(LipSyncRequest(video, audio, tmp_path / "out.mp4", tuple(characters), options))


def silent_frames() -> range:
    """Output frames inside the inserted silence, away from its edges by the VAD's tolerance, the ramp
    and the 0.2 s a mel window spans."""
    first = int(np.ceil((GAP_START + 0.06) * FPS)) + RAMP_FRAMES
    last = int(np.floor((GAP_START + GAP_S - 0.06 - 0.2) * FPS)) - RAMP_FRAMES
    return range(first, last)


def speech_frames() -> range:
    return range(2, int((GAP_START - 0.3) * FPS))


# --- silence modes --------------------------------------------------------------------------------------


def test_closed_mode_gives_the_generator_the_mel_of_true_silence_in_a_silence(tmp_path, clips):
    gen = RecordingGenerator()
    result = run(tmp_path, clips["one"], clips["gapped"], gen, silence="closed")
    mels = gen.mels_of("red")
    assert len(mels) == result.stats.frames == 75  # every frame synced: the face rests, it is not skipped
    silence = silence_window()
    assert np.all(silence == -4.0)
    for i in silent_frames():
        np.testing.assert_array_equal(mels[i], silence, err_msg=f"frame {i}")
    # In speech the mel is the track's own, untouched.
    track_mel = wav2lip_mel(decode_audio(clips["gapped"], RATE))
    for i in speech_frames():
        np.testing.assert_allclose(mels[i], mel_window(track_mel, i, FPS), atol=1e-5)
        assert not np.array_equal(mels[i], silence)
    stats = result.stats.characters["face"]
    assert stats.silence_mode == "closed" and stats.vad == "silero" and stats.audio == "main"
    assert stats.frames_synced == 75 and stats.frames_passed_through == 0
    assert stats.speech_frames + stats.silent_frames == 75
    # The silence is 1.2 s = 30 frames; the VAD's edges land within 60 ms of it.
    assert 27 <= stats.silent_frames <= 33, stats


def test_generate_mode_keeps_the_tracks_own_mel_in_a_silence(tmp_path, clips):
    gen = RecordingGenerator()
    result = run(tmp_path, clips["one"], clips["gapped"], gen, silence="generate")
    track_mel = wav2lip_mel(decode_audio(clips["gapped"], RATE))
    mels = gen.mels_of("red")
    for i in silent_frames():
        np.testing.assert_allclose(mels[i], mel_window(track_mel, i, FPS), atol=1e-5)
        assert not np.array_equal(mels[i], silence_window())  # room tone is not digital silence
    assert result.stats.characters["face"].silence_mode == "generate"


def test_original_mode_keeps_the_source_face_in_a_silence(tmp_path, clips):
    gen = RecordingGenerator(inner=MouthMarkGenerator())
    result = run(tmp_path, clips["one"], clips["gapped"], gen, silence="original", crf=0)
    ref = reencode_reference(clips["one"], result.plan, tmp_path / "ref.mp4", crf=0)
    from pipeline_fixtures import decode_frames

    out = decode_frames(result.output)
    assert len(out) == len(ref) == 75

    def box_psnr(i: int) -> float:
        box = point_for(result.tracks[0], result.plan[i]).box.padded(PADS, W, H)
        x1, y1, x2, y2 = (int(v) for v in box.as_list())
        return psnr(out[i][y1:y2, x1:x2], ref[i][y1:y2, x1:x2])

    silent = [box_psnr(i) for i in silent_frames()]
    spoken = [box_psnr(i) for i in speech_frames()]
    assert min(silent) >= 40.0, silent
    assert max(spoken) < 30.0, spoken  # where the speaker speaks, the generated mouth shows
    stats = result.stats.characters["face"]
    # Silent frames are not generated at all; the ramp frames are, and fade toward the source.
    assert len(gen.rows) == stats.frames_synced < 75
    assert stats.frames_passed_through == 75 - stats.frames_synced
    assert stats.frames_passed_through >= len(silent_frames())
    assert stats.silence_mode == "original"
    # The fade: frames ramping into the silence lie between the synced and the source face.
    edge = silent_frames().start - RAMP_FRAMES - 1
    ramp = [box_psnr(i) for i in range(edge - RAMP_FRAMES, edge + 2)]
    assert max(spoken) < max(ramp) and min(ramp) < min(silent)


# --- a track per character ------------------------------------------------------------------------------


def test_each_character_follows_its_own_stem_and_the_mix_does_not_clip(tmp_path, clips):
    # Red speaks 0-1.5 s, blue 0.9-2.4 s (at 44.1 kHz): loud and overlapping, so their plain sum clips.
    a = np.concatenate([speech(1.5, start=1.0, peak=0.98)])
    b = np.concatenate([np.zeros(round(0.9 * RATE), np.float32), speech(1.5, start=6.0, peak=0.98)])
    red = write_wav(tmp_path / "red.wav", a)
    blue = write_wav(tmp_path / "blue.wav", resample_poly(b, 441, 160).astype(np.float32), 44100)
    n = min(len(a), len(b))
    assert np.abs(a[:n] + b[:n]).max() > 1.0
    characters = [
        Character("red", "Red", (clips["red_ref"],), audio=red),
        Character("blue", "Blue", (clips["blue_ref"],), audio=blue),
    ]
    gen = RecordingGenerator()
    result = run(tmp_path, clips["two"], None, gen, characters, silence="generate", loop_mode="pingpong")
    # The longest stem (2.4 s) sets the length; the 1.2 s clip is extended by pingpong.
    assert result.stats.frames == 60
    for who, path in (("red", red), ("blue", blue)):
        own_wav = decode_audio(path, RATE)
        own = wav2lip_mel(own_wav)
        other = wav2lip_mel(decode_audio(blue if who == "red" else red, RATE))
        mels = gen.mels_of(who)
        assert len(mels) == 60
        frames_in = num_audio_frames(len(own_wav), RATE, FPS)
        for i, mel in enumerate(mels):
            if i >= frames_in:  # past its end a stem is silent
                np.testing.assert_array_equal(mel, silence_window())
                continue
            np.testing.assert_allclose(mel, mel_window(own, i, FPS), atol=1e-5, err_msg=f"{who} frame {i}")
        diffs = [np.abs(m - mel_window(other, i, FPS)).max() for i, m in enumerate(mels[:30])]
        assert max(diffs) > 1.0  # the other track's windows are really different
        assert result.stats.characters[who].audio == "own"
    # The output's sound is the stems' mix, at the highest input rate, limited under full scale.
    info = probe(result.output)
    assert info.audio_sample_rate == 44100
    with MixedAudioSource.open([(red, "red"), (blue, "blue")], 44100) as mix:
        limited = np.concatenate([mix.read(8192) for _ in range(16)], axis=1)
    assert limited.shape[1] == round(2.4 * 44100) and np.abs(limited).max() <= CEILING + 1e-6
    mixed = decode_audio(result.output, 44100)
    assert np.abs(mixed).max() < 1.0  # decoded: the AAC encoder overshoots the limiter's ceiling a little
    frames, video_s, audio_s = stream_durations(result.output)
    assert frames == 60 and abs(video_s - audio_s) <= 1 / FPS
    # Both voices are in the mix: each stem correlates with it.
    mono = decode_audio(result.output, RATE)
    for stem in (a, b):
        n = min(len(stem), len(mono))
        corr = np.corrcoef(stem[:n], mono[:n])[0, 1]
        assert corr > 0.3, corr


def test_a_character_without_a_track_follows_the_main_audio(tmp_path, clips):
    red = write_wav(tmp_path / "red.wav", speech(1.0, start=1.0))
    characters = [
        Character("red", "Red", (clips["red_ref"],), audio=red),
        Character("blue", "Blue", (clips["blue_ref"],)),
    ]
    gen = RecordingGenerator()
    result = run(tmp_path, clips["two"], clips["gapped"], gen, characters, silence="generate")
    main = wav2lip_mel(decode_audio(clips["gapped"], RATE))
    blue = gen.mels_of("blue")
    assert result.stats.frames == len(blue) == 30  # loop_mode none: the 1.2 s clip sets the length
    for i, mel in enumerate(blue):
        np.testing.assert_allclose(mel, mel_window(main, i, FPS), atol=1e-5)
    # The main audio is the output's sound (the final mix), at its own rate.
    assert probe(result.output).audio_sample_rate == 16000
    assert result.stats.characters["blue"].audio == "main" and result.stats.characters["red"].audio == "own"


def test_a_track_whose_character_has_no_face_is_still_heard(tmp_path, clips, caplog):
    red = write_wav(tmp_path / "red.wav", speech(1.0, start=1.0))
    green = write_wav(tmp_path / "green.wav", speech(1.6, start=8.0))
    characters = [
        Character("red", "Red", (clips["red_ref"],), audio=red),
        Character("narrator", "Green", (clips["green_ref"],), audio=green),  # never on screen
    ]
    with caplog.at_level(logging.WARNING):
        result = run(tmp_path, clips["two"], None, IdentityGenerator(), characters, loop_mode="repeat")
    assert "its voice is still heard" in caplog.text
    narrator = result.stats.characters["narrator"]
    assert narrator.frames_synced == 0 and narrator.frames_passed_through == result.stats.frames == 40
    mono = decode_audio(result.output, RATE)
    n = min(len(mono), round(1.6 * RATE))
    assert np.corrcoef(mono[:n], decode_audio(green, RATE)[:n])[0, 1] > 0.3


def test_energy_fallback_in_the_pipeline(tmp_path, clips, monkeypatch, caplog):
    monkeypatch.setattr(vad_module, "silero_model_path", lambda: None)
    gen = RecordingGenerator()
    with caplog.at_level(logging.WARNING, logger="lipsync.audio.vad"):
        result = run(tmp_path, clips["one"], clips["gapped"], gen, silence="closed")
    assert "energy-based VAD" in caplog.text
    stats = result.stats.characters["face"]
    assert stats.vad == "energy" and 27 <= stats.silent_frames <= 33
    mels = gen.mels_of("red")
    for i in silent_frames():
        np.testing.assert_array_equal(mels[i], silence_window())


# --- bad inputs: a typed error naming the field, nothing left behind ------------------------------------


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


@pytest.mark.parametrize("case", ["not_audio", "zero_length"])
def test_a_bad_stem_is_named(tmp_path, clips, case):
    stem = tmp_path / "blue.wav"
    if case == "not_audio":
        stem.write_text("<html><body>not a sound</body></html>\n" * 20)
    else:
        write_wav(stem, np.zeros(0, np.float32))
    characters = [
        Character("red", "Red", (clips["red_ref"],)),
        Character("blue", "Blue", (clips["blue_ref"],), audio=stem),
    ]
    expected = NotAMediaFile if case == "not_audio" else EmptyAudio
    with pytest.raises(expected) as info:
        run(tmp_path, clips["two"], clips["gapped"], IdentityGenerator(), characters)
    assert info.value.field == "characters[1].audio" and "blue.wav" in info.value.message
    assert _leftovers(tmp_path, {"blue.wav"}) == []


def test_no_main_audio_while_a_character_has_no_track(tmp_path, clips):
    red = write_wav(tmp_path / "red.wav", speech(1.0))
    characters = [
        Character("red", "Red", (clips["red_ref"],), audio=red),
        Character("blue", "Blue", (clips["blue_ref"],)),
    ]
    with pytest.raises(InputError) as info:
        run(tmp_path, clips["two"], None, IdentityGenerator(), characters)
    assert info.value.field == "audio" and "'blue'" in info.value.message
    with pytest.raises(InputError) as info:
        run(tmp_path, clips["two"], None, IdentityGenerator(), ())
    assert info.value.field == "audio"
    assert _leftovers(tmp_path, {"red.wav"}) == []
