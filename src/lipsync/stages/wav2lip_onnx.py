"""Wav2Lip under onnxruntime (``LIPSYNC_CPU_GENERATOR=onnxruntime``), and the ONNX export that MNN, the CPU
default, is converted from (lipsync.stages.wav2lip_mnn; onnxruntime is its fall-back).

Why before torch: it costs the same CPU time per frame as the folded torch network
(benchmarks/generator_backends.py), but once its export is cached a run needs no torch at all, and
importing torch and building the network cost about 2 CPU seconds at every start, most of them holding the
GIL while the rest of the job starts up beside it.

The folded network is exported once per checkpoint file with ``torch.onnx`` (dynamic batch) and cached as
``<MODELS_DIR>/onnx/<model>-<digest>.onnx``, the digest taken over the file's bytes: a changed checkpoint
never meets a stale export (and is loaded, its layout checked, to export it). The digest is remembered
(``onnx/digests.json``) against the file's size, mtime and inode, so a start does not hash it again. The
file is written under a temporary name and renamed; one that onnxruntime cannot load is deleted and
exported again.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import platform
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lipsync.errors import ModelError
from lipsync.models.device import cpu_session_options
from lipsync.models.stamps import file_stamp, short_stamp, temp_beside
from lipsync.stages.lipsync import FACE_SIZE, build_inputs, default_batch_size

log = logging.getLogger(__name__)

INPUTS = ("mel", "face")
_CHUNK = 1 << 20


def file_digest(path: Path) -> str:
    """sha256 (first 16 hex digits) of the file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()[:16]


def known_digest(cache_dir: Path, checkpoint: Path) -> str:
    """``file_digest(checkpoint)``, remembered in ``cache_dir`` against the file's size, mtime and inode:
    hashing the 145 MB checkpoint took 0.1-0.3 s of every start, on the way to the first forward. A file
    rewritten in place changes its mtime (and mostly its size), so its digest is taken again."""
    stamp = file_stamp(checkpoint)
    memo = Path(cache_dir) / "digests.json"
    key = str(Path(checkpoint).resolve())
    try:
        known = json.loads(memo.read_text())
        if not isinstance(known, dict):
            known = {}
    except (OSError, ValueError):
        known = {}
    entry = known.get(key)
    if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = file_digest(checkpoint)
    known[key] = {"stamp": stamp, "sha256": digest}
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_beside(memo)
        tmp.write_text(json.dumps(known, indent=1))
        os.replace(tmp, memo)
    except OSError as exc:  # a read-only models folder: the digest is simply taken again next time
        log.debug("cannot remember the digest of %s in %s: %s", checkpoint, memo, exc)
    return digest


def export_path(cache_dir: Path, name: str, checkpoint: Path) -> Path:
    return Path(cache_dir) / f"{name}-{known_digest(cache_dir, checkpoint)}.onnx"


def export_onnx(net, path: Path) -> Path:
    """Export the (folded, float32, CPU) Wav2Lip ``net`` to ``path`` with a dynamic batch axis."""
    import torch

    mel, face = torch.zeros(1, 1, 80, 16), torch.zeros(1, 6, 96, 96)
    buf = io.BytesIO()
    with torch.inference_mode():
        torch.onnx.export(net, (mel, face), buf, input_names=list(INPUTS), output_names=["out"],
                          dynamic_axes={"mel": {0: "b"}, "face": {0: "b"}, "out": {0: "b"}}, dynamo=False)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(path)
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
    return path


def cpu_signature() -> str:
    """A short digest of this CPU's model and instruction-set flags (/proc/cpuinfo; elsewhere what the
    platform module says): an optimized graph is only reused on the CPU it was made for."""
    facts = [platform.machine(), platform.processor()]
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            key = line.split(":", 1)[0].strip()
            if key in ("vendor_id", "model name", "flags", "Features", "CPU part"):
                facts.append(line.strip())
            elif not line.strip() and len(facts) > 2:
                break  # the first processor says it for all
    return hashlib.sha256("\n".join(facts).encode()).hexdigest()[:12]


def optimized_path(export: Path) -> Path:
    """Where onnxruntime's optimized graph of ``export`` is kept: per onnxruntime version, CPU and the
    export file itself (its size, mtime and inode: an export written again is optimized again)."""
    import onnxruntime as ort

    return export.with_name(
        f"{export.name}.ort{ort.__version__}-{cpu_signature()}-{short_stamp(export)}.optimized"
    )


def optimized_session(export: Path, threads: int = 1):
    """An onnxruntime CPU session of ``export`` and the file it was loaded from. onnxruntime's graph
    optimizations (BN/activation fusions, the NCHWc layout for this CPU's vector width) took 0.28-0.45
    CPU seconds at every start; they are saved once (``optimized_path``: the layout is specific to the
    CPU and the onnxruntime version, so both key the file) and later sessions load the result with
    optimizations off (0.07-0.13 s), computing the same numbers. A saved graph that does not load is
    deleted and made again; a folder that cannot be written to only costs the optimization each time."""
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    saved = optimized_path(export)
    if saved.is_file():
        options = cpu_session_options(threads)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            return ort.InferenceSession(str(saved), options, providers=providers), saved
        except Exception as exc:  # onnxruntime's untyped errors: a truncated or foreign file
            log.warning("the optimized graph %s does not load (%s); optimizing %s again", saved, exc, export)
            saved.unlink(missing_ok=True)
    options = cpu_session_options(threads)
    tmp = temp_beside(saved)
    options.optimized_model_filepath = str(tmp)
    try:
        session = ort.InferenceSession(str(export), options, providers=providers)
        os.replace(tmp, saved)
    except Exception as exc:  # the graph could not be written (a read-only folder): optimize in memory
        tmp.unlink(missing_ok=True)
        log.debug("cannot keep the optimized graph of %s: %s", export, exc)
        session = ort.InferenceSession(str(export), cpu_session_options(threads), providers=providers)
    return session, export


class OnnxMouthGenerator:
    """A MouthGenerator on an onnxruntime session of the exported network: (N, 96, 96, 3) BGR faces and
    (N, 80, 16) mels -> (N, 96, 96, 3) BGR faces, rounded as the torch path rounds. ``threads``: the
    session's own (the render runs several calls side by side: lipsync.stages.lipsync.generation_plan)."""

    device = "cpu"
    runtime = "onnxruntime"

    def __init__(self, path: Path, *, batch_size: int | None = None, threads: int = 1) -> None:
        self.path = Path(path)
        self.batch_size = int(batch_size or default_batch_size("cpu"))
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        try:
            self.session, self.loaded_from = optimized_session(self.path, threads)
        except Exception as exc:  # onnxruntime's own untyped errors for a truncated or foreign file
            raise ModelError(f"cannot load the Wav2Lip export {self.path}: {exc}") from exc

    def __call__(self, faces: np.ndarray, mels: np.ndarray) -> np.ndarray:
        if len(faces) != len(mels):
            raise ValueError(f"{len(faces)} faces but {len(mels)} mel windows")
        out = np.empty((len(faces), FACE_SIZE, FACE_SIZE, 3), np.uint8)
        if len(faces) == 0:
            return out
        inputs = build_inputs(faces)
        mel_in = np.ascontiguousarray(mels, dtype=np.float32)[:, None]
        for start in range(0, len(faces), self.batch_size):
            stop = min(len(faces), start + self.batch_size)
            feeds = {"mel": mel_in[start:stop], "face": inputs[start:stop]}
            pred = np.clip(self.session.run(None, feeds)[0], 0.0, 1.0) * 255.0
            out[start:stop] = np.rint(pred).astype(np.uint8).transpose(0, 2, 3, 1)
        return out


def load_onnx_generator(
    name: str, checkpoint: Path, cache_dir: Path, build_net: Callable[[], object], *,
    batch_size: int | None = None, threads: int = 1,
) -> OnnxMouthGenerator:  # fmt: skip
    """The generator for ``checkpoint`` from its cached export; ``build_net`` (the folded torch network:
    the only use of torch here) runs when there is none, or the one there is unusable."""
    target = export_path(cache_dir, name, checkpoint)
    if target.is_file():
        try:
            return OnnxMouthGenerator(target, batch_size=batch_size, threads=threads)
        except ModelError as exc:
            log.warning("%s; exporting again", exc)
            target.unlink(missing_ok=True)
    ensure_export(name, checkpoint, cache_dir, build_net)
    return OnnxMouthGenerator(target, batch_size=batch_size, threads=threads)


def ensure_export(name: str, checkpoint: Path, cache_dir: Path, build_net: Callable[[], object]) -> Path:
    """The cached export of ``checkpoint``, made first when there is none (see load_onnx_generator)."""
    target = export_path(cache_dir, name, checkpoint)
    if target.is_file():
        return target
    log.info("exporting %s to %s (once per checkpoint file)", name, target)
    net = build_net()  # its own errors (a bad checkpoint) are the job's, raised as they are
    try:
        return export_onnx(net, target)
    except Exception as exc:  # torch.onnx raises its own untyped errors (e.g. the onnx package missing)
        raise OnnxExportFailed(f"cannot export {name} to ONNX: {exc}") from exc


class OnnxExportFailed(ModelError):
    """The network could not be exported; the caller runs it on torch instead."""
