"""``ModelGate``: which of the engine's models are loaded, missing or broken, and which jobs may run.

The engine has three models (``ENGINE_MODELS``): the face backend (``insightface``, whichever backend the
settings choose), the Wav2Lip generator (``wav2lip``) and the GFPGAN enhancer (``gfpgan``). Each is loaded
and tracked on its own, so a missing enhancer only stops the jobs that ask for enhancement: lip-sync
without it and face tracking still run, and /health says ``degraded``.

With PRELOAD_MODELS every model loads in the background at startup; a job needing one that is still
loading gets 503 ``not_ready``, one needing a model that failed to load gets that model's typed error (a
restart picks up a file placed later). Without preloading a model loads when the first job needs it, and
a failure is retried by the next job that needs it (the file may have been placed in between).

Errors that reach API clients name the model, its state and what to do, never a server path (the full
message, with paths, goes to the server log and to /health callers holding the API key).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from lipsync.errors import LipSyncError, ModelDownloadError, ModelError, ModelNotAvailable, NotReady

if TYPE_CHECKING:
    from lipsync.jobs.engine import Engine

log = logging.getLogger(__name__)

EngineModel = Literal["insightface", "wav2lip", "gfpgan"]
ENGINE_MODELS: tuple[EngineModel, ...] = ("insightface", "wav2lip", "gfpgan")
# Without these no lip-sync runs at all: /health is "unhealthy" when one is unavailable, "degraded" when
# only an optional one (the enhancer) is.
CORE_MODELS: frozenset[str] = frozenset({"insightface", "wav2lip"})

ModelGateState = Literal["idle", "loading", "ready", "missing", "failed"]


@dataclass(frozen=True, slots=True)
class _About:
    what: str  # in words, for messages
    install: str  # what the operator does
    skip: str | None = None  # what the client can send to run without it


_ABOUT: dict[str, _About] = {
    "insightface": _About(
        "the face detection/recognition models",
        "`lipsync models download buffalo_l`, or LIPSYNC_DET_MODEL / LIPSYNC_REC_MODEL, or "
        "LIPSYNC_FACE_BACKEND=dlib",
    ),
    "wav2lip": _About(
        "the Wav2Lip lip-sync model",
        "`lipsync models download wav2lip_gan` (or the variant LIPSYNC_WAV2LIP_MODEL names), or "
        "LIPSYNC_WAV2LIP_CHECKPOINT",
    ),
    "gfpgan": _About(
        "the GFPGAN enhancement model (gfpgan_v1.4)",
        "`lipsync models download gfpgan_v1.4`, or LIPSYNC_GFPGAN_CHECKPOINT",
        skip='send "enhance_quality": false to run without enhancement',
    ),
}


def models_needed(kind: str, enhance: bool = True) -> tuple[EngineModel, ...]:
    """The engine models one job uses: face tracking needs only the face backend; lip-sync adds Wav2Lip,
    and GFPGAN when enhancement is asked for."""
    if kind == "face_tracking":
        return ("insightface",)
    return ("insightface", "wav2lip", "gfpgan") if enhance else ("insightface", "wav2lip")


def _state_of(exc: BaseException) -> ModelGateState:
    # Not on disk and not obtainable (offline, no network, a download that failed or did not verify):
    # the operator has to place the file. Anything else (bad layout, unsafe pickle, no CUDA) is "failed".
    return "missing" if isinstance(exc, ModelNotAvailable | ModelDownloadError) else "failed"


def public_error(name: str, state: ModelGateState, cause: LipSyncError | None) -> LipSyncError:
    """The error an API client gets for a job needing ``name``: typed like the cause, with a message that
    names the model and what to do and carries no server path."""
    about = _ABOUT[name]
    if state == "loading":
        return NotReady(f"{about.what} ({name}) is still loading; retry in a moment")
    if isinstance(cause, ModelError):
        error: LipSyncError = type(cause)("")  # the same code as the cause (checksum_mismatch, ...)
    else:
        error = ModelNotAvailable("") if state == "missing" else NotReady("")
    problem = "is missing on this server" if state == "missing" else "failed to load on this server"
    if cause is not None and cause.code != "model_not_available":
        problem += f" ({cause.code})"
    steps = [about.skip] if about.skip else []
    steps.append(f"the operator can install it ({about.install}; the server log has the details)")
    error.message = f"{about.what} ({name}) {problem}; " + ", or ".join(steps)
    error.args = (error.message,)
    if about.skip:
        error.field = "enhance_quality"
    return error


class ModelGate:
    """Per-model loading state of one engine (see the module docstring)."""

    def __init__(self, engine: Engine, *, preload: bool) -> None:
        self.engine = engine
        self.preload = preload
        self.states: dict[str, ModelGateState] = dict.fromkeys(ENGINE_MODELS, "idle")
        self.errors: dict[str, LipSyncError] = {}
        self._locks = {name: threading.Lock() for name in ENGINE_MODELS}
        self._thread: threading.Thread | None = None

    # --- loading ------------------------------------------------------------------------------------

    def start(self) -> None:
        if self.preload:
            for name in ENGINE_MODELS:
                self.states[name] = "loading"
            self._thread = threading.Thread(target=self._preload, name="model-preload", daemon=True)
            self._thread.start()

    def _preload(self) -> None:
        for name in ENGINE_MODELS:
            # A failure is recorded in the state (and logged); a background thread has nowhere to raise.
            with contextlib.suppress(Exception):
                self._load(name)
        missing = [n for n in ENGINE_MODELS if self.states[n] != "ready"]
        if missing:
            log.warning("models not available: %s; jobs that need them are refused", ", ".join(missing))

    def _load(self, name: str) -> None:
        """Load ``name`` unless it is ready (serialised per model). Raises the load error."""
        with self._locks[name]:
            if self.states[name] == "ready":
                return
            if self.preload and self.states[name] in ("missing", "failed"):
                raise self.errors[name]  # preload failures stick until a restart
            self.states[name] = "loading"
            try:
                self.engine.load_model(name)
            except LipSyncError as exc:
                self._failed(name, exc, exc)
                raise
            except Exception as exc:
                error = NotReady(f"{name} failed to load: {type(exc).__name__}: {exc}")
                self._failed(name, error, exc)
                raise error from exc
            self.states[name] = "ready"
            self.errors.pop(name, None)

    def _failed(self, name: str, error: LipSyncError, exc: BaseException) -> None:
        self.states[name] = _state_of(exc)
        self.errors[name] = error
        log.error("model %s is %s: %s", name, self.states[name], error.message)

    def require(self, names: Iterable[str]) -> None:
        """Before a job runs: make sure the models it needs are loaded (loading them now without preload,
        waiting for a preload in progress). Raises ``public_error`` for the first one unavailable."""
        for name in names:
            try:
                self._load(name)
            except LipSyncError:
                raise public_error(name, self.states[name], self.errors.get(name)) from None

    # --- admission and reporting ----------------------------------------------------------------------

    def check_accepting(self, names: Iterable[str] = ENGINE_MODELS) -> None:
        """At submission: 503 while a needed model is still preloading, its typed error when it failed to
        preload. Without preloading, jobs are always accepted (they load what they need when they run)."""
        if not self.preload:
            return
        for name in names:
            if self.states[name] != "ready" and self.states[name] != "idle":
                raise public_error(name, self.states[name], self.errors.get(name))

    @property
    def state(self) -> str:
        """Overall: idle (nothing loaded yet, lazy), loading, ready, degraded (only an optional model is
        unavailable), failed (a core model is unavailable)."""
        states = self.states
        bad = {n for n, s in states.items() if s in ("missing", "failed")}
        if bad & CORE_MODELS:
            return "failed"
        if any(s == "loading" for s in states.values()):
            return "loading"
        if bad:
            return "degraded"
        if all(s == "ready" for s in states.values()):
            return "ready"
        return "idle"

    def summary(self) -> str | None:
        """Names and states of the unavailable models, with no paths (for /health without a key)."""
        bad = [n for n in ENGINE_MODELS if self.states[n] in ("missing", "failed")]
        if not bad:
            return None
        parts = []
        for name in bad:
            error = self.errors.get(name)
            code = f", {error.code}" if error is not None else ""
            parts.append(f"{name}: {self.states[name]}{code}")
        if set(bad) == {"gfpgan"}:
            usable = "lip-sync without enhancement and face tracking still run"
        elif "insightface" not in bad:
            usable = "face tracking still runs, lip-sync does not"
        else:
            usable = "no job can run"
        return "; ".join(parts) + f" ({usable})"

    def details(self) -> dict[str, dict[str, str]]:
        """The full error per unavailable model (may hold server paths: for callers with the API key)."""
        return {name: {"code": err.code, "message": err.message} for name, err in self.errors.items()}
