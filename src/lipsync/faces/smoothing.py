"""Zero-phase temporal smoothing of box and landmark tracks.

A causal exponential moving average lags behind a moving face. Running it forward and then backward
over the same segment cancels the lag (the two phase shifts are opposite), so a face moving at constant
speed keeps its boxes centred on it while jitter is damped.

``strength`` in [0, 1] is the ``temporal_smoothing`` setting: 0 = off; the EMA's weight on the new
sample is ``1 - 0.9 * strength`` (0.3 -> 0.73 per pass, 1.0 -> 0.1). Smoothing runs per contiguous
segment (a run of consecutive frames within one shot), so it never mixes boxes across a gap or a cut.
"""

from __future__ import annotations

import numpy as np


def ema_alpha(strength: float) -> float:
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"temporal_smoothing must be within [0, 1], got {strength}")
    return 1.0 - 0.9 * float(strength)


def zero_phase_ema(values: np.ndarray, strength: float) -> np.ndarray:
    """Forward-backward EMA over axis 0 of ``values`` (T, ...); returns a new float array."""
    x = np.asarray(values, dtype=np.float64)
    alpha = ema_alpha(strength)
    if len(x) < 2 or alpha >= 1.0:
        return x.copy()
    fwd = np.empty_like(x)
    fwd[0] = x[0]
    for t in range(1, len(x)):
        fwd[t] = alpha * x[t] + (1.0 - alpha) * fwd[t - 1]
    out = np.empty_like(x)
    out[-1] = fwd[-1]
    for t in range(len(x) - 2, -1, -1):
        out[t] = alpha * fwd[t] + (1.0 - alpha) * out[t + 1]
    return out


def edge_pad(strength: float, length: int) -> int:
    """Rows of odd reflection added at each end of a segment of ``length`` rows by :func:`smooth_segment`:
    enough for the EMA to settle (about 4 / alpha), at most ``length - 1``."""
    return min(length - 1, max(3, int(np.ceil(4.0 / ema_alpha(strength)))))


def smooth_segment(values: np.ndarray, strength: float) -> np.ndarray:
    """Zero-phase EMA with odd reflection padding at both ends, so a steady motion stays unbiased at
    the segment edges too (``2*x[0] - x[k]`` continues a straight line through the edge)."""
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    if n < 3 or strength <= 0.0:
        return x.copy()
    pad = edge_pad(strength, n)
    head = 2.0 * x[0] - x[pad:0:-1]
    tail = 2.0 * x[-1] - x[-2 : -pad - 2 : -1]
    padded = np.concatenate([head, x, tail])
    return zero_phase_ema(padded, strength)[pad : pad + n]


def contiguous_runs(frames: list[int], breaks: set[int] | frozenset[int] = frozenset()) -> list[list[int]]:
    """Split sorted frame numbers into runs of consecutive frames; a frame in ``breaks`` (the first
    frame of a shot) starts a new run."""
    runs: list[list[int]] = []
    for f in frames:
        if runs and f == runs[-1][-1] + 1 and f not in breaks:
            runs[-1].append(f)
        else:
            runs.append([f])
    return runs
