"""Wav2Lip under onnxruntime on a CPU: the alternative to the folded torch network, chosen with
``LIPSYNC_CPU_GENERATOR=onnxruntime`` (the default stays torch: the two measured a tie in CPU time on the
project's machine, benchmarks/generator_backends.py, and torch needs no export).

The folded network is exported once per set of weights with ``torch.onnx`` (dynamic batch) and cached under
``<MODELS_DIR>/onnx/wav2lip-<digest>.onnx``, the digest taken over the weights themselves, so a new
checkpoint never meets a stale export. The file is written under a temporary name and renamed; one that
onnxruntime cannot load is deleted and exported again.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

INPUTS = ("mel", "face")


def weights_digest(net) -> str:
    """sha256 (first 16 hex digits) over every tensor of ``net``'s state dict, names included."""
    h = hashlib.sha256()
    for name, tensor in net.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def export_onnx(net, path: Path) -> Path:
    """Export the (folded, float32, CPU) Wav2Lip ``net`` to ``path`` with a dynamic batch axis."""
    import torch

    mel, face = torch.zeros(1, 1, 80, 16), torch.zeros(1, 6, 96, 96)
    buf = io.BytesIO()
    with torch.inference_mode():
        torch.onnx.export(net, (mel, face), buf, input_names=list(INPUTS), output_names=["out"],
                          dynamic_axes={"mel": {0: "b"}, "face": {0: "b"}, "out": {0: "b"}}, dynamo=False)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
    return path


class OnnxWav2Lip:
    """``(mels (N, 1, 80, 16), faces (N, 6, 96, 96)) float32 -> (N, 3, 96, 96)`` by onnxruntime."""

    def __init__(self, net, cache_dir: Path, *, threads: int = 0) -> None:
        import onnxruntime as ort

        self.path = Path(cache_dir) / f"wav2lip-{weights_digest(net)}.onnx"
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: one per core
        options.log_severity_level = 3
        if not self.path.is_file():
            log.info("exporting Wav2Lip to %s (once per set of weights)", self.path)
            export_onnx(net, self.path)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # a truncated or foreign file: never trusted, rebuilt
            log.warning("cached ONNX export %s is unusable (%s); exporting again", self.path, exc)
            export_onnx(net, self.path)
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def __call__(self, mels: np.ndarray, faces: np.ndarray) -> np.ndarray:
        feeds = {
            "mel": np.ascontiguousarray(mels, np.float32),
            "face": np.ascontiguousarray(faces, np.float32),
        }
        return self.session.run(None, feeds)[0]
