"""Voice activity: where a driving track has speech, as (start, end) spans in seconds.

Two detectors share one post-processing:

* ``SileroVAD``: the silero-vad ONNX model (MIT) that ships inside the ``silero-vad`` PyPI package, run
  through onnxruntime. The file is located through the installed distribution's metadata
  (``importlib.metadata``), so the package itself (which imports torch) is never imported and nothing is
  downloaded at run time. It scores 32 ms chunks (512 samples at 16 kHz, each preceded by the previous
  chunk's last 64 samples, with a recurrent state carried along), in one sequential pass.
* ``EnergyVAD``: the fallback when that file is missing (a broken install): a chunk's level against the
  track's own noise floor and peak, mapped to a 0-1 score so the same threshold applies. It is cruder
  (breath and noise bursts count as speech), so its use is logged as a warning.

``speech_spans`` turns chunk scores into spans with hysteresis (a span opens above ``threshold`` and
closes below ``threshold - 0.15``), drops speech shorter than ``min_speech_s`` and fills silences shorter
than ``min_silence_s``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)

VAD_RATE = 16000
CHUNK = 512  # samples per score at 16 kHz (32 ms), the model's fixed window
CONTEXT = 64  # samples of the previous chunk the model sees before each chunk
CHUNK_S = CHUNK / VAD_RATE
HYSTERESIS = 0.15  # a span closes below threshold - this (silero's own recipe)

SILERO_DIST = "silero-vad"
SILERO_FILE = "silero_vad/data/silero_vad.onnx"


class VoiceDetector(Protocol):
    name: str

    def scores(self, wav: np.ndarray) -> np.ndarray:
        """One 0-1 speech score per 32 ms chunk of 16 kHz mono ``wav`` (the last chunk zero-padded)."""
        ...


@dataclass(frozen=True)
class SpeechSpans:
    """Where a track has speech. ``spans`` is (k, 2) float64 seconds, sorted, disjoint."""

    spans: np.ndarray
    duration_s: float
    detector: str

    @property
    def speech_s(self) -> float:
        return float((self.spans[:, 1] - self.spans[:, 0]).sum()) if len(self.spans) else 0.0


def silero_model_path() -> Path | None:
    """The ONNX file inside the installed silero-vad distribution, or None when it is not there."""
    try:
        dist = metadata.distribution(SILERO_DIST)
    except metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(SILERO_FILE)))
    return path if path.is_file() else None


class SileroVAD:
    """Thin wrapper around one onnxruntime session of the silero-vad model (names read from it)."""

    name = "silero"

    def __init__(self, session) -> None:
        self.session = session
        inputs = {i.name for i in session.get_inputs()}
        missing = {"input", "state", "sr"} - inputs
        if missing:
            raise ValueError(f"not a silero-vad v5+ model: inputs {sorted(inputs)} lack {sorted(missing)}")
        self._out = [o.name for o in session.get_outputs()]

    @classmethod
    def load(cls, path: Path) -> SileroVAD:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        # A recurrent model stepped 32 ms at a time: threads cost more in handoff than they gain.
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        return cls(session)

    def scores(self, wav: np.ndarray) -> np.ndarray:
        x = np.asarray(wav, np.float32)
        count = max(1, math.ceil(len(x) / CHUNK))
        padded = np.zeros(CONTEXT + count * CHUNK, np.float32)
        padded[CONTEXT : CONTEXT + len(x)] = x
        state = np.zeros((2, 1, 128), np.float32)
        sr = np.array(VAD_RATE, np.int64)
        out = np.empty(count, np.float32)
        run = self.session.run
        for k in range(count):
            window = padded[None, k * CHUNK : (k + 1) * CHUNK + CONTEXT]
            prob, state = run(self._out, {"input": window, "state": state, "sr": sr})
            out[k] = prob.reshape(-1)[0]
        return out


class EnergyVAD:
    """Level-based fallback: a chunk scores 0.5 where its level is ``margin_db`` above the track's noise
    floor (its 10th-percentile chunk level), capped 30 dB under the loudest chunks, so quiet and loud
    recordings both split where a speaker pauses."""

    name = "energy"

    def __init__(self, margin_db: float = 12.0, slope_db: float = 3.0) -> None:
        self.margin_db = margin_db
        self.slope_db = slope_db

    def scores(self, wav: np.ndarray) -> np.ndarray:
        x = np.asarray(wav, np.float32)
        count = max(1, math.ceil(len(x) / CHUNK))
        padded = np.zeros(count * CHUNK, np.float32)
        padded[: len(x)] = x
        rms = np.sqrt(np.mean(padded.reshape(count, CHUNK).astype(np.float64) ** 2, axis=1))
        db = 20 * np.log10(np.maximum(rms, 1e-6))
        floor, peak = np.percentile(db, 10), np.percentile(db, 98)
        level = min(floor + self.margin_db, peak - 30.0) if peak - floor > self.margin_db else peak + 1.0
        level = max(level, -70.0)  # digital near-silence is never speech
        return (1.0 / (1.0 + np.exp(-(db - level) / self.slope_db))).astype(np.float32)


def load_detector(path: Path | None = None) -> VoiceDetector:
    """Silero when its model file is installed (or given), else the energy fallback, with a warning."""
    path = path if path is not None else silero_model_path()
    if path is not None and Path(path).is_file():
        try:
            return SileroVAD.load(Path(path))
        except Exception as exc:  # a damaged file or runtime: the job still runs, on the fallback
            log.warning("silero-vad model %s could not be loaded (%s); using the energy VAD", path, exc)
            return EnergyVAD()
    log.warning(
        "silero-vad model file not found (is the silero-vad package installed?); using the energy-based "
        "VAD, which is less accurate: pip install silero-vad"
    )
    return EnergyVAD()


def speech_spans(
    scores: np.ndarray, duration_s: float, *, threshold: float, min_speech_s: float, min_silence_s: float,
    detector: str = "",
) -> SpeechSpans:  # fmt: skip
    """Spans of speech from per-chunk scores (see the module docstring)."""
    spans: list[list[float]] = []
    start: int | None = None
    low = max(0.0, threshold - HYSTERESIS)
    for k, p in enumerate(np.asarray(scores, np.float32)):
        if start is None and p >= threshold:
            start = k
        elif start is not None and p < low:
            spans.append([start * CHUNK_S, k * CHUNK_S])
            start = None
    if start is not None:
        spans.append([start * CHUNK_S, len(scores) * CHUNK_S])
    # Short silences are filled first (a word's stop consonant is not a pause), then short speech dropped.
    merged: list[list[float]] = []
    for span in spans:
        if merged and span[0] - merged[-1][1] < min_silence_s:
            merged[-1][1] = span[1]
        else:
            merged.append(span)
    kept = [s for s in merged if s[1] - s[0] >= min_speech_s]
    arr = np.array(kept, np.float64).reshape(-1, 2)
    np.clip(arr, 0.0, duration_s, out=arr)
    return SpeechSpans(arr, float(duration_s), detector)


EDGE_HOP = 160  # 10 ms level frames for edge refinement
EDGE_MAX_SHIFT_S = 0.8
EDGE_MARGIN_DB = 10.0  # an edge frame must be this far above the silence around it
EDGE_RANGE_DB = 50.0  # ... and within this range of the track's peak


def refine_edges(found: SpeechSpans, wav: np.ndarray, max_shift_s: float = EDGE_MAX_SHIFT_S) -> SpeechSpans:
    """Move each span's edges outwards to where the sound really starts and stops.

    The model needs 100-200 ms of a voice to be sure of it, so its spans open late (measured on real
    speech cut mid-word: 100-230 ms, once 775 ms); their ends are accurate (within 30 ms). The level decides *where*:
    from each edge, the span grows (by at most ``max_shift_s``, never into its neighbour) over the 10 ms
    frames that stay above the silence's level: its noise floor plus a margin, and no lower than 50 dB under
    the track's peak."""
    spans = found.spans.copy()
    x = np.asarray(wav, np.float32)
    count = len(x) // EDGE_HOP
    if not len(spans) or count == 0:
        return found
    frames = x[: count * EDGE_HOP].reshape(count, EDGE_HOP).astype(np.float64)
    db = 10 * np.log10(np.maximum(np.mean(frames**2, axis=1), 1e-18))
    hop_s = EDGE_HOP / VAD_RATE
    top = float(db.max()) - EDGE_RANGE_DB
    reach = int(max_shift_s / hop_s)

    def level(a: int, b: int) -> float:
        # The silence next to this edge sets the bar: a noisy room and digital zero differ by 100 dB.
        gap = db[max(0, a) : max(max(0, a), b)]
        floor = float(np.percentile(gap, 20)) if len(gap) else -180.0
        return max(floor + EDGE_MARGIN_DB, top)

    for k in range(len(spans)):
        lo = math.ceil(spans[k - 1, 1] / hop_s) if k else 0
        hi = int(spans[k + 1, 0] / hop_s) if k + 1 < len(spans) else count
        i = min(int(spans[k, 0] / hop_s), count)
        bar = level(lo, i)
        stop = max(lo, i - reach)
        while i - 1 >= stop and db[i - 1] > bar:
            i -= 1
        j = min(math.ceil(spans[k, 1] / hop_s), count)
        bar = level(j, hi)
        end = min(hi, j + reach, count)
        while j < end and db[j] > bar:
            j += 1
        spans[k] = (min(spans[k, 0], i * hop_s), max(spans[k, 1], min(j * hop_s, found.duration_s)))
    return SpeechSpans(spans, found.duration_s, found.detector)


def detect_speech(
    detector: VoiceDetector, wav: np.ndarray, *, threshold: float, min_speech_s: float, min_silence_s: float,
) -> SpeechSpans:  # fmt: skip
    """Speech spans of 16 kHz mono ``wav``: scored, joined into spans, edges refined, short gaps filled."""
    found = speech_spans(
        detector.scores(wav), len(wav) / VAD_RATE, threshold=threshold, min_speech_s=min_speech_s,
        min_silence_s=min_silence_s, detector=detector.name,
    )  # fmt: skip
    refined = refine_edges(found, wav)
    return _merge(refined, min_silence_s)


def _merge(found: SpeechSpans, min_silence_s: float) -> SpeechSpans:
    """Join spans whose refined edges now leave less than ``min_silence_s`` between them."""
    out: list[list[float]] = []
    for a, b in found.spans:
        if out and a - out[-1][1] < min_silence_s:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return SpeechSpans(np.array(out, np.float64).reshape(-1, 2), found.duration_s, found.detector)
