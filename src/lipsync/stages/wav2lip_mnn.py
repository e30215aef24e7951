"""Wav2Lip under MNN (Alibaba's inference engine): the default on a CPU (``LIPSYNC_CPU_GENERATOR=mnn``).

Why: 79 % of Wav2Lip's multiply-adds are 3x3 stride-1 convolutions. onnxruntime runs them as direct
convolutions at this CPU's single-core sgemm peak already (80 ms a face, 99 GFLOP/s), so only fewer
multiplications can go faster. MNN computes those layers with Winograd transforms, in float32: 44 ms a
face on one core (benchmarks/generator_backends.py), outputs within 0.004 of a grey level of onnxruntime's
before rounding (the transforms reorder the sums; nothing runs at a lower precision).

The ONNX export of lipsync.stages.wav2lip_onnx is converted once per MNN version and export file, and
kept beside it (``<export>.mnn<version>-<stamp>.mnn``), written under a temporary name and renamed; one
that does not load is deleted and converted again.

Three facts about the MNN wheel shape this module:

* its Python converter wrapper (``MNN.tools``) imports a usage-telemetry module that pip-installs a cloud
  logging SDK and reports to a remote service. A self-hosted service must not do that: the converter's C
  entry point (the wheel's ``_tools`` extension) runs in a child process, and ``MNN.tools`` is never imported;
* setting an engine up (the Winograd weight transforms: 0.8 CPU s for one thread) holds the GIL, and so
  does a forward through its Module API. The engines therefore run in worker processes of their own
  (MnnMouthGenerator), one per side-by-side forward, each holding its own transformed weights (about 700 MB);
* it prints banners on stdout from C: the workers' stdout goes to /dev/null, and this process never
  imports MNN, so lipsync's own stdout stays clean.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import subprocess
import sys
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lipsync.errors import ModelError
from lipsync.stages.lipsync import FACE_SIZE, MEL_BINS, MEL_STEPS, build_inputs, default_batch_size
from lipsync.stages.wav2lip_onnx import _temp_beside, short_stamp

log = logging.getLogger(__name__)

CONVERT_TIMEOUT_S = 600  # the 145 MB network converts in about 2 s; a stuck converter must not hang a job
# The converter in a child process: it prints freely there, and a crash in it cannot take the job along.
_CONVERT = "import sys, _tools; _tools.mnnconvert(['mnnconvert', '-f', 'ONNX', '--modelFile', sys.argv[1], " \
           "'--MNNModel', sys.argv[2], '--bizCode', 'lipsync'])"  # fmt: skip
LOAD_TIMEOUT_S = 300.0  # a worker process that has not loaded its engine by then is given up
POLL_S = 0.5  # how often a wait on a worker looks whether it is still alive
STOP_S = 2.0


class MnnUnavailable(ModelError):
    """MNN is not installed, or the network could not be converted for it: the caller uses onnxruntime."""


def mnn_version() -> str:
    """The installed MNN's version, from its package metadata (importing MNN here would print its banner
    on this process's stdout); MnnUnavailable when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("MNN")
    except PackageNotFoundError as exc:
        raise MnnUnavailable("MNN is not installed (pip install MNN), or set "
                             "LIPSYNC_CPU_GENERATOR=onnxruntime") from exc  # fmt: skip


def converted_path(export: Path) -> Path:
    """Where the MNN model of ``export`` is kept: per MNN version and export file (its size, mtime and
    inode: an export written again is converted again)."""
    return export.with_name(f"{export.name}.mnn{mnn_version()}-{short_stamp(export)}.mnn")


def convert(export: Path, target: Path, timeout: float = CONVERT_TIMEOUT_S) -> Path:
    """Convert the ONNX ``export`` to an MNN model at ``target`` (whole, or not at all)."""
    tmp = _temp_beside(target)
    try:
        done = subprocess.run([sys.executable, "-c", _CONVERT, str(export), str(tmp)], capture_output=True,
                              timeout=timeout, check=False, stdin=subprocess.DEVNULL)  # fmt: skip
        said = (done.stdout + done.stderr).decode(errors="replace").strip()
        if done.returncode != 0 or not tmp.is_file() or tmp.stat().st_size == 0:
            tail = " | ".join(said.splitlines()[-3:]) or f"exit status {done.returncode}"
            raise MnnUnavailable(f"MNN could not convert {export}: {tail}")
        log.debug("MNN converter: %s", said)
        os.replace(tmp, target)
    except subprocess.TimeoutExpired as exc:
        raise MnnUnavailable(f"MNN's converter took over {timeout:.0f} s on {export}; gave up") from exc
    except OSError as exc:
        raise MnnUnavailable(f"cannot convert {export} for MNN: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return target


@dataclass
class _Engine:
    """One MNN Interpreter with its session, in a worker process: runs one forward at a time."""

    interpreter: object
    session: object
    mel: object
    face: object
    batch: int = 0

    def run(self, mel: np.ndarray, face: np.ndarray) -> np.ndarray:
        import MNN

        n = len(face)
        if n != self.batch:  # the last batch of a job is shorter; resizing only re-plans the buffers
            self.interpreter.resizeTensor(self.mel, (n, 1, MEL_BINS, MEL_STEPS))
            self.interpreter.resizeTensor(self.face, (n, 6, FACE_SIZE, FACE_SIZE))
            self.interpreter.resizeSession(self.session)
            self.batch = n
        caffe, f32 = MNN.Tensor_DimensionType_Caffe, MNN.Halide_Type_Float
        self.mel.copyFrom(MNN.Tensor(mel.shape, f32, mel, caffe))
        self.face.copyFrom(MNN.Tensor(face.shape, f32, face, caffe))
        self.interpreter.runSession(self.session)
        return np.asarray(self.interpreter.getSessionOutput(self.session, "out").getNumpyData())


def _engine(model: Path, threads: int) -> _Engine:
    import MNN

    interpreter = MNN.Interpreter(str(model))
    session = interpreter.createSession({"numThread": max(1, int(threads)), "precision": "high"})
    face = interpreter.getSessionInput(session, "face")
    mel = interpreter.getSessionInput(session, "mel")
    if face is None or mel is None or interpreter.getSessionOutput(session, "out") is None:
        raise ModelError(f"{model} is not a Wav2Lip model (inputs mel and face, output out)")
    return _Engine(interpreter, session, mel, face)


def generate(engine: _Engine, faces: np.ndarray, mels: np.ndarray, batch_size: int) -> np.ndarray:
    """(N, 96, 96, 3) BGR faces and (N, 80, 16) mels -> (N, 96, 96, 3) BGR faces, in batches."""
    out = np.empty((len(faces), FACE_SIZE, FACE_SIZE, 3), np.uint8)
    inputs = build_inputs(faces)
    mel_in = np.ascontiguousarray(mels, dtype=np.float32)[:, None]
    for start in range(0, len(faces), batch_size):
        stop = min(len(faces), start + batch_size)
        pred = engine.run(mel_in[start:stop], inputs[start:stop])
        if pred.shape != (stop - start, 3, FACE_SIZE, FACE_SIZE):
            raise ModelError(f"the MNN model gave {pred.shape} for {stop - start} faces")
        out[start:stop] = np.rint(np.clip(pred, 0.0, 1.0) * 255.0).astype(np.uint8).transpose(0, 2, 3, 1)
    return out


def _serve(model: str, threads: int, batch_size: int, conn) -> None:
    """A worker process: load one engine, then answer (faces, mels) with mouths until told to stop (None)
    or its parent goes away."""
    try:
        engine = _engine(Path(model), threads)
    except Exception as exc:  # MNN's untyped errors for a truncated or foreign file
        conn.send(("error", f"cannot load the MNN model {model}: {exc}"))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        try:
            conn.send(("ok", generate(engine, *message, batch_size)))
        except Exception as exc:  # reported to the caller, typed there; the worker serves on
            conn.send(("error", f"MNN failed on a batch of {len(message[0])} faces: {exc}"))


def _worker_env() -> dict[str, str]:
    """The worker's environment: ours, with the folder this lipsync was imported from on PYTHONPATH when
    it is not a site-packages folder (a source tree put on sys.path by hand)."""
    import site

    here = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    if here not in [*site.getsitepackages(), site.getusersitepackages()]:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (here, env.get("PYTHONPATH"))))
    return env


class _Silent(ModelError):
    """A worker process ended (or hung) without an answer."""


class _Worker:
    """One engine in its own process (``python -m lipsync.stages.wav2lip_mnn``: a fresh interpreter that
    never re-imports the caller's main module, as multiprocessing's spawn would), and a socket to it.
    Its stdout, where MNN prints its banners, goes to /dev/null; its stderr is ours, for a crash's last
    words."""

    def __init__(self, model: Path, threads: int, batch_size: int) -> None:
        from multiprocessing.connection import Connection

        self.model = model
        env = _worker_env()
        ours, theirs = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", __name__, str(model), str(threads), str(batch_size), str(theirs.fileno())],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, pass_fds=(theirs.fileno(),), env=env,
            )  # fmt: skip
        except (OSError, ValueError) as exc:  # ValueError: no pass_fds on this platform
            ours.close()
            raise MnnUnavailable(f"cannot start an MNN worker process: {exc}") from exc
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())
        self.loaded = False

    def ready(self, timeout: float) -> None:
        """Wait for the worker's engine (once). A worker that ends without a word (it could not start
        Python or import MNN) is MnnUnavailable; one that says its model did not load, a ModelError."""
        if self.loaded:
            return
        try:
            self.answer(timeout)
        except _Silent as exc:
            raise MnnUnavailable(f"the MNN worker could not start: {exc}") from exc
        self.loaded = True

    def answer(self, timeout: float | None = None) -> object:
        """The worker's next answer; ModelError for its error, or when it has gone."""
        waited = 0.0
        while not self.conn.poll(POLL_S):
            waited += POLL_S
            if self.proc.poll() is not None or (timeout is not None and waited >= timeout):
                self.stop()
                raise _Silent(f"the MNN worker for {self.model.name} stopped without an answer "
                                 f"(exit status {self.proc.returncode}); the next job starts a new one")  # fmt: skip
        try:
            kind, value = self.conn.recv()
        except (EOFError, OSError) as exc:
            self.stop()
            raise _Silent(f"the MNN worker for {self.model.name} went away (exit status "
                             f"{self.proc.poll()}); the next job starts a new one") from exc  # fmt: skip
        if kind == "error":
            raise ModelError(str(value))
        return value

    def alive(self) -> bool:
        return self.proc.poll() is None and not self.conn.closed

    def ask_to_stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(None)

    def stop(self) -> None:
        """Stop the worker: asked first, killed if it has not gone within STOP_S."""
        self.ask_to_stop()
        try:
            self.proc.wait(STOP_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_S)
        self.conn.close()


def _stop_all(workers: list[_Worker]) -> None:
    for worker in workers:  # all asked first: they wind down side by side
        worker.ask_to_stop()
    for worker in workers:
        worker.stop()


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
        self._workers: list[_Worker] = []
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._finalizer = weakref.finalize(self, _stop_all, self._workers)
        try:
            workers = [self._start() for _ in range(self.forwards)]
            for worker in workers:
                worker.ready(LOAD_TIMEOUT_S)
                self._idle.put(worker)
        except BaseException:
            self.close()
            raise

    def _start(self) -> _Worker:
        worker = _Worker(self.path, self.threads, self.batch_size)
        self._workers.append(worker)
        return worker

    def _take(self) -> _Worker:
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
            try:
                worker.conn.send((faces, mels))
            except (OSError, ValueError) as exc:
                worker.stop()
                raise ModelError(f"the MNN worker for {self.path.name} went away ({exc})") from exc
            out = worker.answer()
        finally:
            self._idle.put(worker)
        return out

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


def _main(argv: list[str]) -> None:
    import signal
    from multiprocessing.connection import Connection

    # Ctrl-C in a terminal reaches the whole process group: the parent decides, and stops its workers (or
    # they see its end of the socket close), so a worker does not die mid-batch with a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    model, threads, batch_size, fd = argv
    _serve(model, int(threads), int(batch_size), Connection(int(fd)))


if __name__ == "__main__":
    _main(sys.argv[1:])
