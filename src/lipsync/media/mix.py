"""Mixing the characters' stems into the output's sound, streamed: their sum through a look-ahead
limiter, so nothing clips, in blocks, with nothing held but a block and the limiter's look-ahead.

The limiter's gain at sample n is the mean, over the next L samples, of a gain curve that is at most the
gain every sample in the L samples before it needs (ceiling / |x|) and recovers linearly (``release``).
Every sample the mean covers is thus at most what sample n needs, so ``|gain * x| <= ceiling`` holds
exactly, and the gain moves smoothly (over L samples) instead of stepping. Where the sum stays under the
ceiling the gain is exactly 1 and the mix is the plain sum.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lipsync.errors import MediaError
from lipsync.media.audio import AudioSource

CEILING = 10 ** (-2.0 / 20)  # -2 dBFS: AAC overshoots peaks (by 1.3 dB measured on limited speech)
LOOKAHEAD_S = 0.005
RELEASE_S = 0.25  # from full reduction back to unity gain


class Limiter:
    """Look-ahead peak limiter for planar (channels, n) float32 blocks; delays the signal by L samples."""

    def __init__(self, rate: int, channels: int, ceiling: float = CEILING) -> None:
        self.ceiling = float(ceiling)
        self.look = 2 * max(1, round(LOOKAHEAD_S * rate / 2))  # even: the sliding minimum below needs it
        self.release = 1.0 / max(1.0, RELEASE_S * rate)  # gain recovered per sample
        self.channels = channels
        # The last 2L samples of input and their needed gains carry over between blocks.
        self._x = np.zeros((channels, 2 * self.look), np.float32)
        self._need = np.ones(2 * self.look, np.float64)
        self._smooth = np.ones(self.look, np.float64)  # released gains of the last L samples
        self._last = 1.0  # the released gain just before them

    def process(self, block: np.ndarray) -> np.ndarray:
        """Feed ``block`` (channels, n); returns n samples delayed by L (the first call's start is silence)."""
        n = block.shape[1]
        if n == 0:
            return np.zeros((self.channels, 0), np.float32)
        peak = np.abs(block).max(axis=0).astype(np.float64)
        need = np.minimum(1.0, self.ceiling / np.maximum(peak, 1e-12))
        x = np.concatenate([self._x, block], axis=1)
        need_all = np.concatenate([self._need, need])
        L = self.look
        # h[k]: the least gain any sample in [k - L, k] needs (a sliding minimum, window L + 1 ending at k).
        # (origin L/2 puts scipy's odd window of L + 1 samples wholly at and before its centre.)
        from scipy.ndimage import minimum_filter1d  # scipy loads on first use, not at start-up

        h = minimum_filter1d(need_all, size=L + 1, origin=L // 2, mode="nearest")[2 * L :]
        # Linear release: r[k] = min over m <= k of h[m] + release * (k - m), carried across blocks.
        steps = np.arange(1, n + 1, dtype=np.float64)
        r = np.minimum(np.minimum.accumulate(h - self.release * steps) + self.release * steps,
                       self._last + self.release * steps)  # fmt: skip
        r = np.minimum(r, 1.0)
        gains = np.concatenate([self._smooth, r])  # released gains from sample -L on
        # Output sample m (input index m - L) takes the mean of the released gains of [m - L, m].
        csum = np.concatenate([[0.0], np.cumsum(gains)])
        g = (csum[L + 1 :] - csum[: n]) / (L + 1)
        out = (x[:, L : L + n] * g[None, :]).astype(np.float32)
        self._x, self._need = x[:, -2 * L :], need_all[-2 * L :]
        self._smooth, self._last = gains[-L:], float(r[-1])
        return out

    def flush(self) -> np.ndarray:
        """The last L samples still held (feeds silence through)."""
        return self.process(np.zeros((self.channels, self.look), np.float32))


class MixedAudioSource(AudioSource):
    """The stems summed and limited: an ``AudioSource`` (``rate``, ``channels``, ``read``, ``close``), so
    the MP4 writer takes it as it is. Mono stems are centred in a stereo mix; shorter stems end in
    silence; the mix lasts as long as the longest stem."""

    def __init__(self, sources: Sequence[AudioSource], rate: int) -> None:  # no super().__init__: it reads its stems, not a file
        self.rate = int(rate)
        self.channels = max(s.channels for s in sources)
        self._sources = list(sources)
        self._live = [True] * len(self._sources)
        self._limiter = Limiter(self.rate, self.channels)
        self._skip = self._limiter.look  # the limiter's delay: its first L output samples are dropped
        self._flushed = False
        self._pending = np.zeros((self.channels, 0), np.float32)
        self._closed = False

    @classmethod
    def open(cls, stems: Sequence[tuple[Path, str]], rate: int) -> MixedAudioSource:
        """Open every (path, field) stem at ``rate``; a bad one raises its typed error naming its field,
        after closing those already open."""
        opened: list[AudioSource] = []
        try:
            for path, field in stems:
                try:
                    opened.append(AudioSource.open(path, rate, mono=False))
                except MediaError as exc:
                    raise exc.named(field) from None
        except BaseException:
            for source in opened:
                source.close()
            raise
        return cls(opened, rate)

    @property
    def closed(self) -> bool:
        return self._closed

    def _mix(self, n: int) -> tuple[np.ndarray, bool]:
        total = np.zeros((self.channels, n), np.float32)
        longest = 0
        for k, source in enumerate(self._sources):
            if not self._live[k]:
                continue
            block = source.read(n)
            m = block.shape[1]
            if m < n:
                self._live[k] = False
            longest = max(longest, m)
            # A mono stem in a stereo mix goes to both sides at its own level (centred).
            total[:, :m] += block if block.shape[0] == self.channels else block[:1]
        return total[:, :longest], any(self._live)

    def read(self, n: int) -> np.ndarray:
        if self._closed:
            raise ValueError("read from a closed MixedAudioSource")
        while self._pending.shape[1] < n and not self._flushed:
            block, more = self._mix(max(n, 4096))
            out = self._limiter.process(block) if block.shape[1] else block
            if not more:
                out = np.concatenate([out, self._limiter.flush()], axis=1)
                self._flushed = True
            if self._skip:
                drop = min(self._skip, out.shape[1])
                out, self._skip = out[:, drop:], self._skip - drop
            self._pending = np.concatenate([self._pending, out], axis=1)
        head, self._pending = self._pending[:, :n], self._pending[:, n:]
        return head

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for source in self._sources:
            with contextlib.suppress(Exception):
                source.close()

    def __enter__(self) -> MixedAudioSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
