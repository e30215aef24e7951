"""The models a lip-sync pipeline holds: loaded lazily on first use, then kept, each behind a lock of its
own so concurrent requests load a model once, and a model loading on one thread (the generator, loaded
beside the job's first steps) never holds up another's (the VAD those steps need). Injected doubles
(tests, benchmarks) take the place of any of them."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from lipsync.audio.vad import VoiceDetector, load_detector
from lipsync.config import Settings
from lipsync.faces import FaceBackend, create_face_backend
from lipsync.models import ModelStore, device_kind
from lipsync.options import EnhanceChoice, LipSyncOptions, resolve_enhance, resolve_occlusion
from lipsync.stages.enhance import FaceEnhancer, FaceRestorer, GFPGANRestorer
from lipsync.stages.lipsync import MouthGenerator, Wav2LipGenerator, default_batch_size
from lipsync.stages.occlusion import FaceParsingMasker, OcclusionMasker
from lipsync.stages.track_cache import TrackCache

log = logging.getLogger("lipsync.pipeline")


_SLOTS = ("store", "generator", "enhancer", "face_backend", "vad", "occlusion")


class PipelineModels:
    """Model slots of :class:`lipsync.pipeline.LipSyncPipeline`."""

    def __init__(
        self,
        settings: Settings,
        *,
        generator: MouthGenerator | None = None,
        enhancer: FaceEnhancer | FaceRestorer | None = None,
        face_backend: FaceBackend | None = None,
        store: ModelStore | None = None,
        device: str | None = None,
        occlusion: OcclusionMasker | None = None,
    ) -> None:
        """``device`` (e.g. ``"cuda:1"``) overrides ``settings.device`` for the torch networks, so a server
        can keep one pipeline per GPU."""
        self.settings = settings
        self.device = device or settings.device
        self._store = store
        self._generator = generator
        self._enhancer = self._as_enhancer(enhancer) if enhancer is not None else None
        self._face_backend = face_backend
        self._vad: VoiceDetector | None = None
        self._occlusion = occlusion
        # One lock per slot: a single lock made the VAD (and so the job's planning) wait for the whole
        # Wav2Lip load it was meant to overlap (measured: get_vad 0.03 s alone, 2.9 s beside that load).
        self._locks = {slot: threading.RLock() for slot in _SLOTS}
        # Shared by every request of this pipeline (and, through the folder, by other processes).
        self.track_cache = TrackCache.from_settings(settings)

    # -- models ---------------------------------------------------------------------------------------

    @staticmethod
    def _as_enhancer(enhancer: FaceEnhancer | FaceRestorer) -> FaceEnhancer:
        return enhancer if isinstance(enhancer, FaceEnhancer) else FaceEnhancer(enhancer)

    @property
    def store(self) -> ModelStore:
        with self._locks["store"]:
            if self._store is None:
                self._store = ModelStore(self.settings)
            return self._store

    @property
    def generator_loaded(self) -> bool:
        return self._generator is not None

    @property
    def enhancer_loaded(self) -> bool:
        return self._enhancer is not None

    @property
    def face_backend_loaded(self) -> bool:
        return self._face_backend is not None

    def share_face_backend(self, backend: FaceBackend) -> None:
        """Use another pipeline's face backend instead of loading a second copy."""
        with self._locks["face_backend"]:
            if self._face_backend is None:
                self._face_backend = backend

    def load_models(self, enhance: bool = True) -> None:
        self.get_face_backend()
        self.get_generator()
        if enhance:
            self.get_enhancer()

    def get_generator(self) -> MouthGenerator:
        with self._locks["generator"]:
            if self._generator is None:
                name = self.settings.wav2lip_model
                path = self.store.ensure(name)
                if device_kind(self.device) == "cpu" and self.settings.cpu_generator != "torch":
                    from lipsync.stages.wav2lip_onnx import OnnxExportFailed

                    try:
                        self._generator = self._exported_generator(name, path)
                        return self._generator
                    except OnnxExportFailed as exc:
                        log.warning("%s; running Wav2Lip on torch instead", exc)
                from lipsync.models import load_network, resolve_device  # torch: imported here, on use

                device = resolve_device(self.device)
                log.info("loading %s from %s on %s", name, path, device)
                net = load_network(name, path, device=device)
                self._generator = Wav2LipGenerator(net, device, batch_size=self.settings.batch_size,
                                                   fp16=self.settings.fp16)  # fmt: skip
            return self._generator

    def _exported_generator(self, name: str, path: Path) -> MouthGenerator:
        """Wav2Lip on MNN or onnxruntime (``cpu_generator``), from the network's cached ONNX export; MNN
        missing or unable to convert it falls back to onnxruntime, with a warning."""
        from lipsync.stages.lipsync import cpu_forwards, cpu_threads_per_forward
        from lipsync.stages.wav2lip_onnx import ensure_export, load_onnx_generator

        def folded():
            from lipsync.models import load_network
            from lipsync.nets import fold_batchnorm

            return fold_batchnorm(load_network(name, path, device="cpu").float())

        cache = Path(self.settings.models_dir) / "onnx"
        batch, threads = self.settings.batch_size, cpu_threads_per_forward()
        if self.settings.cpu_generator == "mnn":
            from lipsync.stages.wav2lip_mnn import MnnUnavailable, load_mnn_generator

            log.info("loading %s from %s on cpu (MNN)", name, path)
            try:
                export = ensure_export(name, path, cache, folded)
                # One engine (a worker process) per side-by-side forward, as onnxruntime's sessions run.
                return load_mnn_generator(export, batch_size=batch, engines=cpu_forwards(), threads=threads)
            except MnnUnavailable as exc:
                log.warning("%s; running Wav2Lip on onnxruntime instead", exc)
        log.info("loading %s from %s on cpu (onnxruntime)", name, path)
        return load_onnx_generator(name, path, cache, folded, batch_size=batch, threads=threads)

    def generator_batch_size(self) -> int:
        """The generator's batch size, known before it is loaded: the settings', else its device's default
        (what get_generator's generator takes); a loaded generator's own (it may have halved it)."""
        generator = self._generator
        if generator is not None:
            return int(generator.batch_size)
        return int(self.settings.batch_size or default_batch_size(device_kind(self.device)))

    def load_generator_beside(self) -> Future[MouthGenerator]:
        """``get_generator`` on a worker thread (its result, or its error, comes from the future). Its file
        is checked first, so a missing one still fails before any work."""
        if self._generator is not None:
            done: Future[MouthGenerator] = Future()
            done.set_result(self._generator)
            return done
        self.store.ensure(self.settings.wav2lip_model)
        pool = ThreadPoolExecutor(1, thread_name_prefix="lipsync-load")
        try:
            return pool.submit(self.get_generator)
        finally:
            pool.shutdown(wait=False)

    def get_enhancer(self) -> FaceEnhancer:
        with self._locks["enhancer"]:
            if self._enhancer is None:
                from lipsync.models import load_network, resolve_device

                device = resolve_device(self.device)
                path = self.store.ensure("gfpgan_v1.4")
                log.info("loading gfpgan_v1.4 from %s on %s", path, device)
                if device.type == "cpu":
                    log.warning("GFPGAN enhancement on a CPU takes seconds per face; turn it off for speed")
                net = load_network("gfpgan_v1.4", path, device=device)
                self._enhancer = FaceEnhancer(GFPGANRestorer(net, device, fp16=self.settings.fp16))
            return self._enhancer

    def get_vad(self) -> VoiceDetector:
        """silero-vad through onnxruntime (its file ships in the silero-vad package), else the energy VAD."""
        with self._locks["vad"]:
            if self._vad is None:
                self._vad = load_detector()
            return self._vad

    def get_occlusion(self, choice: EnhanceChoice) -> OcclusionMasker | None:
        """The occlusion masker for a request's ``occlusion_mask`` setting (see ``resolve_occlusion``); a
        masker given to the constructor counts as present."""
        with self._locks["occlusion"]:
            present = self._occlusion is not None or self.store.path_for("face_parsing").is_file()
            if not resolve_occlusion(choice, present, device_kind(self.device)):
                return None  # decided without torch: a run that needs no torch never imports it
            if self._occlusion is None:
                from lipsync.models import load_network, resolve_device

                device = resolve_device(self.device)
                path = self.store.ensure("face_parsing")
                log.info("loading face_parsing from %s on %s", path, device)
                self._occlusion = FaceParsingMasker(load_network("face_parsing", path, device=device), device)
            return self._occlusion

    def get_face_backend(self) -> FaceBackend:
        with self._locks["face_backend"]:
            if self._face_backend is None:
                store = None if self.settings.face_backend == "dlib" else self.store
                self._face_backend = create_face_backend(self.settings, store)
            return self._face_backend

    def enhance_enabled(self, options: LipSyncOptions) -> bool:
        """The request's ``enhance`` setting on this pipeline's device (``auto``: on under CUDA only)."""
        device = device_kind(self.device)
        on = resolve_enhance(options.enhance, device)
        if options.enhance == "auto":
            log.info(
                "enhance=auto: GFPGAN enhancement %s on %s%s", "on" if on else "off", device,
                "" if on else " (it costs seconds a face on a CPU; enhance=on forces it)",
            )  # fmt: skip
        return on
