"""Encoding on a background thread: the last stage of the pipeline, overlapped with the ones before it."""

from __future__ import annotations

import queue
import threading
import time

import numpy as np

from lipsync.media import VideoWriter


class BackgroundEncoder:
    """Encodes finished batches on one worker thread, so x264 (which releases the GIL) overlaps the next
    batch's generation and compositing. At most ``depth`` batches wait, which keeps memory bounded."""

    def __init__(self, writer: VideoWriter, depth: int = 1) -> None:
        self.writer = writer
        self.busy_seconds = 0.0
        self._queue: queue.Queue[list[np.ndarray] | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="lipsync-encode", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (frames := self._queue.get()) is not None:
            if self._error is not None:
                continue  # drain after a failure; the main thread re-raises it
            start = time.perf_counter()
            try:
                for frame in frames:
                    self.writer.write(frame)
            except BaseException as exc:  # handed to the main thread, which raises it
                self._error = exc
            self.busy_seconds += time.perf_counter() - start

    def put(self, frames: list[np.ndarray]) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(frames)

    def stop(self) -> None:
        """Error path: let the worker finish what it holds and exit, raising nothing."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def join(self) -> None:
        """Wait for every queued frame to be written; raise the worker's error if it had one."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self._error is not None:
            raise self._error
