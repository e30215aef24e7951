"""MNN (Alibaba's inference engine) for the CPU: converting ONNX graphs for it, and running its engines in
worker processes of their own. Used for Wav2Lip (lipsync.stages.wav2lip_mnn, the CPU generator) and for
the face detector (``MnnGraphSession``, the CPU detector).

Three facts about the MNN wheel shape this module:

* its Python converter wrapper (``MNN.tools``) imports a usage-telemetry module that pip-installs a cloud
  logging SDK and reports to a remote service. A self-hosted service must not do that: the converter's C
  entry point (the wheel's ``_tools`` extension) runs in a child process, and ``MNN.tools`` is never imported;
* setting an engine up (Winograd weight transforms: 0.8 CPU s for Wav2Lip) holds the GIL, and so does a
  forward through its Module API. The engines therefore run in worker processes (``MnnWorker``): a fresh
  interpreter each (``python -m lipsync.models.mnn_runtime``), a socket to it, pickled arrays across;
* it prints banners on stdout from C: the workers' stdout goes to /dev/null, and the main process never
  imports MNN, so lipsync's own stdout stays clean.

A worker serves one engine, of a kind named in ENGINES: a factory ``(model, threads, batch) -> handler``,
the handler turning one request into one answer. Its errors go back as ModelError; a worker that dies is
_Silent (a ModelError) to the caller, who decides whether to start another or fall back.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import socket
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lipsync.errors import ModelError
from lipsync.models.stamps import short_stamp, temp_beside

log = logging.getLogger(__name__)

CONVERT_TIMEOUT_S = 600  # the 145 MB Wav2Lip converts in about 2 s; a stuck converter must not hang a job
# The converter in a child process: it prints freely there, and a crash in it cannot take the job along.
_CONVERT = "import sys, _tools; _tools.mnnconvert(['mnnconvert', '-f', 'ONNX', '--modelFile', sys.argv[1], " \
           "'--MNNModel', sys.argv[2], '--bizCode', 'lipsync'])"  # fmt: skip
LOAD_TIMEOUT_S = 300.0  # a worker process that has not loaded its engine by then is given up
# A request (a Wav2Lip batch: under a second on one core; a detection: milliseconds) not answered by then
# means a hung engine: the worker is killed and the call fails, instead of the job waiting for ever.
ASK_TIMEOUT_S = 300.0
POLL_S = 0.5  # how often a wait on a worker looks whether it is still alive
STOP_S = 2.0

#: Engine kinds a worker can serve: "module:factory", imported in the worker only.
ENGINES = {
    "wav2lip": "lipsync.stages.wav2lip_mnn:wav2lip_handler",
    "graph": "lipsync.models.mnn_runtime:graph_handler",
}


class MnnUnavailable(ModelError):
    """MNN is not installed, or a network could not be converted for it: the caller uses onnxruntime."""


def mnn_version() -> str:
    """The installed MNN's version, from its package metadata (importing MNN here would print its banner
    on this process's stdout); MnnUnavailable when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("MNN")
    except PackageNotFoundError as exc:
        raise MnnUnavailable("MNN is not installed (pip install MNN)") from exc


def converted_name(source: Path) -> str:
    """The file name of ``source``'s MNN conversion: per MNN version and source file (its size, mtime and
    inode: a file written again is converted again)."""
    return f"{source.name}.mnn{mnn_version()}-{short_stamp(source)}.mnn"


def convert(source: Path, target: Path, timeout: float = CONVERT_TIMEOUT_S) -> Path:
    """Convert the ONNX ``source`` to an MNN model at ``target`` (whole, or not at all)."""
    tmp = temp_beside(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, "-c", _CONVERT, str(source), str(tmp)], capture_output=True,
                              timeout=timeout, check=False, stdin=subprocess.DEVNULL)  # fmt: skip
        said = (done.stdout + done.stderr).decode(errors="replace").strip()
        if done.returncode != 0 or not tmp.is_file() or tmp.stat().st_size == 0:
            tail = " | ".join(said.splitlines()[-3:]) or f"exit status {done.returncode}"
            raise MnnUnavailable(f"MNN could not convert {source}: {tail}")
        log.debug("MNN converter: %s", said)
        os.replace(tmp, target)
    except subprocess.TimeoutExpired as exc:
        raise MnnUnavailable(f"MNN's converter took over {timeout:.0f} s on {source}; gave up") from exc
    except OSError as exc:
        raise MnnUnavailable(f"cannot convert {source} for MNN: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return target


# --- the worker process ---------------------------------------------------------------------------------


def _serve(kind: str, model: str, threads: int, batch: int, conn) -> None:
    """A worker process: load one engine, then answer requests until told to stop (None) or its parent
    goes away."""
    try:
        module, name = ENGINES[kind].split(":")
        handler = getattr(importlib.import_module(module), name)(Path(model), threads, batch)
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
            conn.send(("ok", handler(message)))
        except Exception as exc:  # reported to the caller, typed there; the worker serves on
            conn.send(("error", f"MNN failed on {Path(model).name}: {exc}"))


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


class MnnWorker:
    """One engine in its own process (``python -m lipsync.models.mnn_runtime``: a fresh interpreter that
    never re-imports the caller's main module, as multiprocessing's spawn would), and a socket to it.
    Its stdout, where MNN prints its banners, goes to /dev/null; its stderr is ours, for a crash's last
    words. Not thread-safe: one request at a time (callers keep workers in a pool or behind a lock)."""

    def __init__(self, kind: str, model: Path, threads: int = 1, batch: int = 1) -> None:
        from multiprocessing.connection import Connection

        self.model = Path(model)
        ours, theirs = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", __name__, kind, str(model), str(threads), str(batch), str(theirs.fileno())],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, pass_fds=(theirs.fileno(),),
                env=_worker_env(),
            )  # fmt: skip
        except (OSError, ValueError) as exc:  # ValueError: no pass_fds on this platform
            ours.close()
            raise MnnUnavailable(f"cannot start an MNN worker process: {exc}") from exc
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())
        self.loaded = False

    def ready(self, timeout: float = LOAD_TIMEOUT_S) -> None:
        """Wait for the worker's engine (once). A worker that ends without a word (it could not start
        Python or import MNN) is MnnUnavailable; one that says its model did not load, a ModelError."""
        if self.loaded:
            return
        try:
            self.answer(timeout)
        except _Silent as exc:
            raise MnnUnavailable(f"the MNN worker could not start: {exc}") from exc
        self.loaded = True

    def ask(self, message: object) -> object:
        """Send one request and wait for its answer (at most ASK_TIMEOUT_S)."""
        try:
            self.conn.send(message)
        except (OSError, ValueError) as exc:
            self.stop()
            raise _Silent(f"the MNN worker for {self.model.name} went away ({exc})") from exc
        return self.answer(ASK_TIMEOUT_S)

    def answer(self, timeout: float | None = None) -> object:
        """The worker's next answer; ModelError for its error, when it has gone, or when it gave none
        within ``timeout`` seconds (it is then killed)."""
        waited = 0.0
        while not self.conn.poll(POLL_S):
            waited += POLL_S
            if self.proc.poll() is not None:
                self.stop()
                raise _Silent(f"the MNN worker for {self.model.name} stopped without an answer "
                              f"(exit status {self.proc.returncode}); the next job starts a new one")  # fmt: skip
            if timeout is not None and waited >= timeout:
                self.stop()
                raise _Silent(f"the MNN worker for {self.model.name} gave no answer within {timeout:g} s "
                              "and was stopped; the next job starts a new one")  # fmt: skip
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


def stop_all(workers: list[MnnWorker]) -> None:
    for worker in workers:  # all asked first: they wind down side by side
        worker.ask_to_stop()
    for worker in workers:
        worker.stop()


# --- any ONNX graph, as an onnxruntime-like session ------------------------------------------------------


class GraphEngine:
    """In a worker: one MNN session of a converted graph. ``run`` takes {input name: float32 array} (NCHW)
    and gives {output name: array} for every output; inputs of a new shape re-plan the session first."""

    def __init__(self, model: Path, threads: int) -> None:
        import MNN

        self._mnn = MNN
        self.interpreter = MNN.Interpreter(str(model))
        self.session = self.interpreter.createSession({"numThread": max(1, int(threads)), "precision": "high"})
        self.inputs = self.interpreter.getSessionInputAll(self.session)
        self.outputs = set(self.interpreter.getSessionOutputAll(self.session))

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        mnn, interpreter, inputs = self._mnn, self.interpreter, self.inputs
        unknown = set(feed) - set(inputs)
        if unknown:
            raise ValueError(f"no input named {sorted(unknown)} (the model's: {sorted(inputs)})")
        if any(tuple(inputs[name].getShape()) != array.shape for name, array in feed.items()):
            for name, array in feed.items():
                interpreter.resizeTensor(inputs[name], array.shape)
            interpreter.resizeSession(self.session)
        for name, array in feed.items():
            array = np.ascontiguousarray(array, dtype=np.float32)
            inputs[name].copyFrom(mnn.Tensor(array.shape, mnn.Halide_Type_Float, array, mnn.Tensor_DimensionType_Caffe))
        interpreter.runSession(self.session)
        outputs = interpreter.getSessionOutputAll(self.session)
        return {name: np.array(tensor.getNumpyData(), copy=True) for name, tensor in outputs.items()}


def graph_handler(model: Path, threads: int, _batch: int) -> Callable[[dict[str, np.ndarray]], dict]:
    """In a worker (ENGINES["graph"]): a request is a GraphEngine's feed, the answer its outputs."""
    return GraphEngine(model, threads).run


class MnnGraphSession:
    """An onnxruntime-like session (``get_inputs``, ``get_outputs``, ``get_providers``, ``run``) whose runs
    go to an MNN worker process with its own converted copy of the graph, one at a time. ``fallback``,
    the graph's onnxruntime session, gives the names and shapes, and takes over for good, with a warning,
    if the worker cannot start or fails (a detection never fails for MNN's sake)."""

    def __init__(self, model: Path, fallback, *, threads: int = 1) -> None:
        self.model = Path(model)
        self.fallback = fallback
        self._lock = threading.Lock()
        self._worker: MnnWorker | None = MnnWorker("graph", self.model, threads)
        self._finalizer = weakref.finalize(self, stop_all, [self._worker])

    def get_inputs(self):
        return self.fallback.get_inputs()

    def get_outputs(self):
        return self.fallback.get_outputs()

    def get_providers(self) -> list[str]:
        return ["CPUExecutionProvider"]

    @property
    def runtime(self) -> str:
        return "mnn" if self._worker is not None else "onnxruntime"

    @property
    def pid(self) -> int | None:
        return self._worker.proc.pid if self._worker is not None else None

    def run(self, output_names, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            worker = self._worker
            if worker is not None:
                try:
                    worker.ready()
                    answer = worker.ask({name: np.ascontiguousarray(a) for name, a in feed.items()})
                    names = output_names or [o.name for o in self.get_outputs()]
                    return [answer[name] for name in names]  # type: ignore[index]
                except (ModelError, KeyError) as exc:
                    if not worker.loaded and not isinstance(exc, MnnUnavailable):
                        self.model.unlink(missing_ok=True)  # it does not load: the next load converts again
                    log.warning("MNN could not run %s (%s); onnxruntime runs it from now on",
                                self.model.name, exc)  # fmt: skip
                    self._worker = None
                    worker.stop()
        return self.fallback.run(output_names, feed)

    def close(self) -> None:
        self._finalizer()


def graph_session(onnx_path: Path, cache_dir: Path, fallback, *, threads: int = 1) -> MnnGraphSession:
    """An MnnGraphSession of the ONNX file ``onnx_path``, converting it first when ``cache_dir`` holds no
    conversion of this file (``converted_name``).
    MnnUnavailable when MNN is missing or cannot convert it. A converted copy that turns out not to load
    is deleted at its first run (the session then runs onnxruntime), so the next load converts again."""
    onnx_path = Path(onnx_path)
    target = Path(cache_dir) / converted_name(onnx_path)
    if not target.is_file():
        log.info("converting %s for MNN (once per file and MNN version)", onnx_path.name)
        convert(onnx_path, target)
    return MnnGraphSession(target, fallback, threads=threads)


def _main(argv: list[str]) -> None:
    import signal
    from multiprocessing.connection import Connection

    # Ctrl-C in a terminal reaches the whole process group: the parent decides, and stops its workers (or
    # they see its end of the socket close), so a worker does not die mid-request with a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    kind, model, threads, batch, fd = argv
    _serve(kind, model, int(threads), int(batch), Connection(int(fd)))


if __name__ == "__main__":
    _main(sys.argv[1:])
