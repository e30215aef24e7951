"""decode_audio: every format -> float32 mono 16 kHz, resampled (not decimated); typed errors."""

from __future__ import annotations

import av
import numpy as np
import pytest

from lipsync.errors import (
    CorruptMedia,
    EmptyAudio,
    MediaNotFound,
    MediaTooLarge,
    NoAudioStream,
    NotAMediaFile,
)
from lipsync.media import MediaLimits, decode_audio, probe
from media_fixtures import AUDIO_FORMATS, write_audio, write_empty_wav, write_video


def _peak_hz(audio: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
    return float(np.argmax(spectrum) * rate / audio.size)


@pytest.mark.parametrize("name", sorted(AUDIO_FORMATS))
def test_every_format_decodes_to_16k_mono_float(tmp_path, name):
    fmt, codec, sample_fmt, rate = AUDIO_FORMATS[name]
    path = tmp_path / name
    write_audio(path, fmt, codec, sample_fmt, rate, seconds=1.0, freq=440.0)
    assert probe(path).audio_sample_rate == rate
    audio = decode_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1 and audio.flags.c_contiguous
    # Lossy codecs may add or drop a few ms of priming; the length is still one second.
    assert abs(audio.size - 16000) <= 160, audio.size
    assert _peak_hz(audio, 16000) == pytest.approx(440.0, abs=3.0)
    middle = audio[4000:12000]
    assert np.sqrt(np.mean(middle**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.1)


def test_resampling_removes_content_above_new_nyquist(tmp_path):
    """A 6 kHz tone survives, a 12 kHz tone must vanish (decimation would alias it to 4 kHz)."""
    write_audio(tmp_path / "ok.wav", "wav", "pcm_f32le", "flt", 44100, freq=6000.0)
    write_audio(tmp_path / "hi.wav", "wav", "pcm_f32le", "flt", 44100, freq=12000.0)
    kept = decode_audio(tmp_path / "ok.wav")
    gone = decode_audio(tmp_path / "hi.wav")
    assert np.sqrt(np.mean(kept[1000:-1000] ** 2)) > 0.3
    assert np.sqrt(np.mean(gone[1000:-1000] ** 2)) < 0.01


def test_stereo_is_averaged_and_other_rates_work(tmp_path):
    path = tmp_path / "st.wav"
    write_audio(path, "wav", "pcm_s16le", "s16", 48000, channels=2, stereo_right_gain=0.0)
    mono = decode_audio(path)
    # Left = 0.5 sine, right silent: the mean is a 0.25 sine.
    assert np.abs(mono[2000:-2000]).max() == pytest.approx(0.25, abs=0.01)
    both = decode_audio(path, 22050, mono=False)
    assert both.shape[1] == 2 and abs(both.shape[0] - 22050) <= 2
    assert np.abs(both[:, 1]).max() < 1e-3


def test_surround_is_downmixed_to_stereo(tmp_path):
    path = tmp_path / "surround.wav"
    write_audio(path, "wav", "pcm_s16le", "s16", 48000, channels=6)
    assert probe(path).audio_channels == 6
    stereo = decode_audio(path, mono=False)
    assert stereo.shape[1] == 2 and abs(stereo.shape[0] - 16000) <= 2
    assert decode_audio(path).ndim == 1


def test_audio_track_of_a_video(tmp_path):
    path = write_video(tmp_path / "av.mp4", frames=50, fps=25, audio_seconds=2.0, audio_rate=44100)
    audio = decode_audio(path)
    assert abs(audio.size - 32000) <= 400
    assert _peak_hz(audio, 16000) == pytest.approx(440.0, abs=3.0)


def test_shared_speech_files(shared_media):
    mp3 = decode_audio(shared_media("speech_44k_mono_5s.mp3"))
    assert mp3.size / 16000 == pytest.approx(4.91, abs=0.05)
    wav = decode_audio(shared_media("speech_en_16k_stereo_8s.wav"))
    assert wav.size == 128000
    assert 0.01 < np.sqrt(np.mean(wav**2)) < 0.5


# --- errors ---------------------------------------------------------------------------------------


def test_no_audio_stream(tmp_path):
    path = write_video(tmp_path / "silent.mp4", frames=5)
    with pytest.raises(NoAudioStream, match=r"silent\.mp4 has no audio stream.*wav, mp3") as err:
        decode_audio(path)
    assert err.value.code == "no_audio_stream" and err.value.field == "audio"


def test_zero_length_audio(tmp_path):
    path = write_empty_wav(tmp_path / "empty.wav")
    with pytest.raises(EmptyAudio, match=r"no samples \(zero length\).*Export the audio again") as err:
        decode_audio(path)
    assert err.value.code == "empty_audio"


def test_missing_and_not_media(tmp_path):
    with pytest.raises(MediaNotFound, match="no such file"):
        decode_audio(tmp_path / "missing.mp3")
    page = tmp_path / "speech.mp3"
    page.write_text("<html><body>Access denied</body></html>")
    with pytest.raises(NotAMediaFile, match=r"not a media file.*HTML"):
        decode_audio(page)


def test_truncated_audio_is_corrupt(tmp_path):
    path = write_video(tmp_path / "av.mp4", frames=50, fps=25, audio_seconds=2.0)
    data = path.read_bytes()
    cut = tmp_path / "cut.m4a"
    cut.write_bytes(data[: len(data) // 3])  # moov is at the end: the index is gone
    with pytest.raises(CorruptMedia, match="truncated or damaged"):
        decode_audio(cut)


def test_audio_cut_between_packets_is_corrupt(tmp_path):
    path = write_video(tmp_path / "av.mp4", frames=25, fps=25, audio_seconds=3.0, faststart=True)
    with av.open(str(path)) as container:
        entries = container.streams.audio[0].index_entries
        cut_at = max(e.pos for e in entries[: len(entries) // 2])
    cut = tmp_path / "cut.m4a"
    cut.write_bytes(path.read_bytes()[:cut_at])
    with pytest.raises(CorruptMedia, match=r"ends early: its audio stops at .* declares 3\.0"):
        decode_audio(cut)


def test_audio_duration_limit(tmp_path):
    write_audio(tmp_path / "a.wav", "wav", "pcm_s16le", "s16", 16000, seconds=2.0)
    with pytest.raises(MediaTooLarge, match=r"lasts 2\.0 s; the limit is 1 s"):
        decode_audio(tmp_path / "a.wav", limits=MediaLimits(max_duration_s=1.0))
