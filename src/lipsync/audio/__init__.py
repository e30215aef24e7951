"""Audio features for Wav2Lip: the mel spectrogram and its per-video-frame windows."""

from lipsync.audio.mel import (
    MEL_FPS,
    MEL_STEP,
    NUM_MELS,
    SAMPLE_RATE,
    mel_batch,
    mel_filterbank,
    mel_window,
    mel_windows,
    num_audio_frames,
    wav2lip_mel,
)

__all__ = [
    "MEL_FPS",
    "MEL_STEP",
    "NUM_MELS",
    "SAMPLE_RATE",
    "mel_batch",
    "mel_filterbank",
    "mel_window",
    "mel_windows",
    "num_audio_frames",
    "wav2lip_mel",
]
