"""Wav2Lip under MNN (Alibaba's inference engine): the default on a CPU (``LIPSYNC_CPU_GENERATOR=mnn``).

Why: 79 % of Wav2Lip's multiply-adds are 3x3 stride-1 convolutions. onnxruntime runs them as direct
convolutions at this CPU's single-core sgemm peak already (80 ms a face, 99 GFLOP/s), so only fewer
multiplications can go faster. MNN computes those layers with Winograd transforms, in float32: 44 ms a
face on one core (benchmarks/generator_backends.py), outputs within 0.004 of a grey level of onnxruntime's
before rounding (the transforms reorder the sums; nothing runs at a lower precision).

The ONNX export of lipsync.stages.wav2lip_onnx is converted once per MNN version and export file, and
kept beside it (``<export>.mnn<version>-<stamp>.mnn``), written under a temporary name and renamed; one
that does not load is deleted and converted again.

The engines run in worker processes (lipsync.models.mnn_runtime says why: MNN holds the GIL while it sets
an engine up and in its Module API, prints banners on stdout, and its Python converter wrapper phones
home), one per side-by-side forward, each holding its own transformed weights (about 700 MB).
"""

from __future__ import annotations

import logging
import queue
import weakref
from pathlib import Path

import numpy as np

from lipsync.errors import ModelError
from lipsync.models.mnn_runtime import (
    LOAD_TIMEOUT_S,
    GraphEngine,
    MnnUnavailable,
    MnnWorker,
    convert,
    converted_name,
    stop_all,
)
from lipsync.stages.lipsync import FACE_SIZE, build_inputs, default_batch_size

__all__ = ["MnnMouthGenerator", "MnnUnavailable", "convert", "converted_path", "load_mnn_generator"]

log = logging.getLogger(__name__)


def converted_path(export: Path) -> Path:
    """Where the MNN model of ``export`` is kept: beside it (lipsync.models.mnn_runtime.converted_name)."""
    return export.with_name(converted_name(export))


def _engine(model: Path, threads: int) -> GraphEngine:
    engine = GraphEngine(model, threads)
    if not {"mel", "face"} <= set(engine.inputs) or "out" not in engine.outputs:
        raise ModelError(f"{model} is not a Wav2Lip model (inputs mel and face, output out)")
    return engine


def generate(engine: GraphEngine, faces: np.ndarray, mels: np.ndarray, batch_size: int) -> np.ndarray:
    """(N, 96, 96, 3) BGR faces and (N, 80, 16) mels -> (N, 96, 96, 3) BGR faces, in batches."""
    out = np.empty((len(faces), FACE_SIZE, FACE_SIZE, 3), np.uint8)
    inputs = build_inputs(faces)
    mel_in = np.ascontiguousarray(mels, dtype=np.float32)[:, None]
    for start in range(0, len(faces), batch_size):
        stop = min(len(faces), start + batch_size)
        pred = engine.run({"mel": mel_in[start:stop], "face": inputs[start:stop]})["out"]
        if pred.shape != (stop - start, 3, FACE_SIZE, FACE_SIZE):
            raise ModelError(f"the MNN model gave {pred.shape} for {stop - start} faces")
        out[start:stop] = np.rint(np.clip(pred, 0.0, 1.0) * 255.0).astype(np.uint8).transpose(0, 2, 3, 1)
    return out


def wav2lip_handler(model: Path, threads: int, batch_size: int):
    """In a worker (lipsync.models.mnn_runtime.ENGINES): one engine; a request is (faces, mels), the answer
    the mouths."""
    engine = _engine(model, threads)
    return lambda message: generate(engine, *message, batch_size)


class MnnMouthGenerator:
    """A MouthGenerator on MNN engines of the converted network: (N, 96, 96, 3) BGR faces and (N, 80, 16)
    mels -> (N, 96, 96, 3) BGR faces, rounded as the torch path rounds. ``engines`` worker processes, each
    with ``threads`` cores, so that many calls run side by side (the render's generate stage calls from
    that many threads: generation_plan).

    Why processes: MNN sets an engine up (its Winograd weight transforms, 0.8 CPU s a 1-thread engine)
    holding the GIL, which stalled the render's other stages at the start of every job; and its Module
    API holds the GIL in every forward. In their own processes the engines load in parallel with the
    job's start, and a batch crosses the pipe in about a millisecond. A worker that dies fails the call
    with a ModelError; the next call starts a new one."""

    device = "cpu"
    runtime = "mnn"

    def __init__(self, model: Path, *, batch_size: int | None = None, engines: int = 1, threads: int = 1):
        self.path = Path(model)
        self.batch_size = int(batch_size or default_batch_size("cpu"))
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.forwards = max(1, int(engines))  # engines: how many calls run side by side (generation_plan)
        self.threads = max(1, int(threads))
        self._workers: list[MnnWorker] = []
        self._idle: queue.SimpleQueue[MnnWorker] = queue.SimpleQueue()
        self._finalizer = weakref.finalize(self, stop_all, self._workers)
        try:
            workers = [self._start() for _ in range(self.forwards)]
            for worker in workers:
                worker.ready(LOAD_TIMEOUT_S)
                self._idle.put(worker)
        except BaseException:
            self.close()
            raise

    def _start(self) -> MnnWorker:
        worker = MnnWorker("wav2lip", self.path, self.threads, self.batch_size)
        self._workers.append(worker)
        return worker

    def _take(self) -> MnnWorker:
        worker = self._idle.get()
        try:
            if not worker.alive():
                self._workers.remove(worker)  # it died since its last call: a new one takes its place
                worker = self._start()
            worker.ready(LOAD_TIMEOUT_S)
        except BaseException:
            self._idle.put(worker)
            raise
        return worker

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids (their memory is not in this process's RSS)."""
        return [w.proc.pid for w in self._workers]

    def __call__(self, faces: np.ndarray, mels: np.ndarray) -> np.ndarray:
        if len(faces) != len(mels):
            raise ValueError(f"{len(faces)} faces but {len(mels)} mel windows")
        if len(faces) == 0:
            return np.empty((0, FACE_SIZE, FACE_SIZE, 3), np.uint8)
        faces = np.ascontiguousarray(faces, dtype=np.uint8)
        mels = np.ascontiguousarray(mels, dtype=np.float32)
        worker = self._take()
        try:
            return worker.ask((faces, mels))  # type: ignore[return-value]
        finally:
            self._idle.put(worker)

    def close(self) -> None:
        """Stop the worker processes (also done when the generator is collected, and at exit)."""
        self._finalizer()


def load_mnn_generator(
    export: Path, *, batch_size: int | None = None, engines: int = 1, threads: int = 1
) -> MnnMouthGenerator:
    """The generator for the ONNX ``export`` from its converted copy, converting it when there is none or
    the one there does not load. MnnUnavailable when MNN is missing or cannot convert it."""
    target = converted_path(export)
    if target.is_file():
        try:
            return MnnMouthGenerator(target, batch_size=batch_size, engines=engines, threads=threads)
        except MnnUnavailable:
            raise
        except ModelError as exc:
            log.warning("%s; converting %s again", exc, export)
            target.unlink(missing_ok=True)
    log.info("converting %s for MNN (once per export and MNN version)", export.name)
    convert(export, target)
    try:
        return MnnMouthGenerator(target, batch_size=batch_size, engines=engines, threads=threads)
    except MnnUnavailable:
        raise
    except ModelError as exc:
        target.unlink(missing_ok=True)
        raise MnnUnavailable(f"MNN cannot run its conversion of {export}: {exc}") from exc
