"""The Wav2Lip stage: prepare -> forward -> postprocess.

* ``prepare_face`` crops one face (already padded, integer box) and resizes it to 96x96.
* A ``MouthGenerator`` turns a batch of 96x96 BGR faces plus their mel windows into 96x96 BGR faces with a new
  mouth. ``Wav2LipGenerator`` wraps the torch network; tests pass doubles through the same interface, so the
  crop/resize/composite plumbing around it is exercised exactly as in production.
* ``postprocess_face`` resizes a generated face back to the crop size.

Only ``Wav2LipGenerator.__call__`` touches torch.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import cv2
import numpy as np

from lipsync.models.device import PinnedStaging, is_oom
from lipsync.types import Box

if TYPE_CHECKING:  # torch is imported on use: the run path reaches its first frame without it
    import torch
    from torch import nn

    from lipsync.stages.align_crop import FaceCrop

log = logging.getLogger(__name__)

#: Wav2Lip works on 96x96 faces; the lower half of the first copy is hidden so the net must draw the mouth.
FACE_SIZE = 96
MEL_BINS = 80
MEL_STEPS = 16

#: Default batch sizes per device type: CUDA has memory to spare; on CPU larger batches do not run faster.
DEFAULT_BATCH_SIZE = {"cuda": 128, "cpu": 16}


def default_batch_size(device: torch.device | str) -> int:
    kind = str(device).split(":")[0]
    return DEFAULT_BATCH_SIZE.get(kind, DEFAULT_BATCH_SIZE["cpu"])


# --- prepare --------------------------------------------------------------------------------------------


def crop_box(box: Box) -> tuple[int, int, int, int]:
    """Integer (x1, y1, x2, y2) of an already padded and clipped box."""
    return int(box.x1), int(box.y1), int(box.x2), int(box.y2)


def prepare_face(frame: np.ndarray, box: Box) -> np.ndarray:
    """Crop ``box`` (padded, integer, inside the frame) from a BGR frame and resize it to 96x96 BGR uint8."""
    x1, y1, x2, y2 = crop_box(box)
    crop = frame[y1:y2, x1:x2]
    # INTER_AREA when shrinking avoids aliasing; Wav2Lip was trained on cv2.resize'd crops either way.
    interp = cv2.INTER_AREA if crop.shape[0] > FACE_SIZE else cv2.INTER_LINEAR
    return cv2.resize(crop, (FACE_SIZE, FACE_SIZE), interpolation=interp)


def build_inputs(faces: np.ndarray) -> np.ndarray:
    """(N, 96, 96, 3) uint8 BGR -> (N, 6, 96, 96) float32 in [0, 1]: [masked face, reference face].

    Wav2Lip's own inference concatenates the masked copy first and the unmasked reference second, on the
    channel axis, both BGR as read by OpenCV, divided by 255. The mask zeroes rows 48..95 (the lower half).
    """
    masked = faces.copy()
    masked[:, FACE_SIZE // 2 :] = 0
    stacked = np.concatenate([masked, faces], axis=3).astype(np.float32) / 255.0
    return np.ascontiguousarray(stacked.transpose(0, 3, 1, 2))


def build_inputs_torch(faces: torch.Tensor) -> torch.Tensor:
    """build_inputs for a uint8 (N, 96, 96, 3) tensor, on its device (the faces cut there on CUDA)."""
    import torch

    masked = faces.clone()
    masked[:, FACE_SIZE // 2 :] = 0
    stacked = torch.cat([masked, faces], dim=3).float() / 255.0
    return stacked.permute(0, 3, 1, 2)


# --- forward --------------------------------------------------------------------------------------------


@runtime_checkable
class MouthGenerator(Protocol):
    """Draws a mouth for each face: (N, 96, 96, 3) uint8 BGR faces and (N, 80, 16) mels -> (N, 96, 96, 3)."""

    batch_size: int

    def __call__(self, faces: np.ndarray, mels: np.ndarray) -> np.ndarray: ...


class Wav2LipGenerator:
    """Batched Wav2Lip forward in torch with OOM back-off (on a CPU, the default is MNN instead:
    lipsync.stages.wav2lip_mnn, else onnxruntime: lipsync.stages.wav2lip_onnx).

    ``batch_size`` is the largest batch sent to the network at once; it halves (and stays halved) when the
    device runs out of memory, down to 1. On CUDA the network runs in float16 when ``fp16`` is set, and
    batches travel through pinned host buffers with non-blocking copies.

    ``fold_bn`` folds every BatchNorm into its convolution (in place, on the ``net`` given: load the
    checkpoint first). Same function to float rounding (well under a grey level, tests/test_fast_paths.py);
    with channels_last, 1.4x the items/s of CPU time of the unfolded NCHW network and as fast as the
    folded network under onnxruntime (benchmarks/generator_backends.py).
    """

    def __init__(
        self,
        net: nn.Module,
        device: torch.device | str = "cpu",
        *,
        batch_size: int | None = None,
        fp16: bool = True,
        channels_last: bool = True,
        fold_bn: bool = True,
    ) -> None:
        import torch

        self.runtime = "torch"
        self.device = torch.device(device)
        self.batch_size = int(batch_size or default_batch_size(self.device))
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.dtype = torch.float16 if (fp16 and self.device.type == "cuda") else torch.float32
        # channels_last measured about 2x faster for Wav2Lip on CPU (benchmarks/nets.py); cuDNN prefers it too.
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if fold_bn:
            # Folded in float32, before any cast to float16, so the rescaled weights are rounded once.
            from lipsync.nets import fold_batchnorm

            net = fold_batchnorm(net.float())
        self.net = net.to(self.device, dtype=self.dtype, memory_format=self.memory_format).eval()
        self._staging = PinnedStaging() if self.device.type == "cuda" else None

    def __call__(self, faces: np.ndarray, mels: np.ndarray) -> np.ndarray:
        if len(faces) != len(mels):
            raise ValueError(f"{len(faces)} faces but {len(mels)} mel windows")
        if len(faces) == 0:
            return np.zeros((0, FACE_SIZE, FACE_SIZE, 3), np.uint8)
        return self._generate(faces, mels)

    def generate_crops(
        self, frames: Sequence[np.ndarray], slots: Sequence[int], crops: Sequence[FaceCrop], mels: np.ndarray
    ) -> np.ndarray:
        """The mouths of ``crops`` (``slots[k]``: the frame in ``frames`` that crop k is cut from), cut and
        resized to 96x96 on this generator's device (``crop_faces_torch``, area-averaged): on CUDA the
        frames a batch uses go up once, through a pinned buffer, and the crops never exist on the host."""
        import torch

        from lipsync.stages.align_crop import crop_faces_torch

        if len(slots) != len(crops) or len(crops) != len(mels):
            raise ValueError(f"{len(slots)} slots, {len(crops)} crops and {len(mels)} mel windows")
        if len(crops) == 0:
            return np.zeros((0, FACE_SIZE, FACE_SIZE, 3), np.uint8)
        used = sorted(set(slots))
        where = {slot: i for i, slot in enumerate(used)}
        host = torch.from_numpy(np.stack([frames[slot] for slot in used]))
        with torch.inference_mode():
            if self._staging is not None:
                on_device = self._staging.upload("frames", host).to(self.device, non_blocking=True)
            else:
                on_device = host.to(self.device)
            faces = crop_faces_torch(on_device, [where[slot] for slot in slots], crops, area=True)
        return self._generate(faces, mels)

    def _generate(self, faces, mels: np.ndarray) -> np.ndarray:
        """``faces``: (N, 96, 96, 3) uint8, a host array or a tensor on the device."""
        import torch

        mel_in = np.ascontiguousarray(mels, dtype=np.float32)[:, None]
        out = np.empty((len(faces), FACE_SIZE, FACE_SIZE, 3), np.uint8)
        start = 0
        while start < len(faces):
            stop = min(len(faces), start + self.batch_size)
            try:
                out[start:stop] = self._forward(faces[start:stop], mel_in[start:stop])
            except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
                if not is_oom(exc) or self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                log.warning("out of memory in Wav2Lip; retrying with batch size %d", self.batch_size)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            start = stop
        return out

    def _forward(self, faces, mels: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            if isinstance(faces, np.ndarray):
                face_t = self._to_device("face", build_inputs(faces))
            else:  # already on the device
                face_t = build_inputs_torch(faces).to(self.dtype)
            face_t = face_t.contiguous(memory_format=self.memory_format)
            mel_t = self._to_device("mel", mels)
            pred = self.net(mel_t, face_t)
            pred = (pred.float().clamp_(0, 1) * 255.0).round_().to(torch.uint8).permute(0, 2, 3, 1)
            if self._staging is None:
                return pred.numpy()
            return self._staging.download(pred)

    def _to_device(self, name: str, array: np.ndarray) -> torch.Tensor:
        import torch

        host = torch.from_numpy(array)
        if self._staging is not None:
            host = self._staging.upload(name, host)
            # Copied as float32 and cast on the device: a cast during the copy would go through a
            # pageable temporary on the host and lose the asynchronous copy.
            return host.to(self.device, non_blocking=True).to(self.dtype)
        return host.to(self.device, dtype=self.dtype)


# At most this many Wav2Lip forwards side by side on a CPU (each with cores // workers torch threads).
CPU_GENERATE_WORKERS = 2


def generation_plan(generator: MouthGenerator, cores: int | None = None) -> tuple[int, int | None]:
    """(forwards side by side, torch intra-op threads) for the pipelined render's generate stage.

    On a CPU, a forward split over all cores stalls whenever another stage takes one of them: its threads
    wait for the slowest at every layer (measured on 2 cores: the generator spent about 40 % more CPU per
    frame inside the render than alone). Two forwards of half the threads each lose only their own share
    of a stolen core. CUDA and test doubles keep one forward and torch's own setting (None); onnxruntime
    forwards run side by side with the threads their sessions were made with (None); an MNN generator says
    how many of its forwards may run side by side (``forwards``: its engines, each on its own threads).
    """
    device = getattr(generator, "device", None)
    if getattr(device, "type", device) != "cpu":
        return 1, None
    workers = cpu_forwards(cores)
    if getattr(generator, "runtime", "torch") != "torch":  # onnxruntime, MNN: they hold their own threads
        return int(getattr(generator, "forwards", workers)), None
    return workers, cpu_threads_per_forward(cores)


def cpu_forwards(cores: int | None = None) -> int:
    """How many Wav2Lip forwards run side by side on a CPU of ``cores`` (see generation_plan)."""
    return max(1, min(CPU_GENERATE_WORKERS, cores or os.cpu_count() or 1))


def cpu_threads_per_forward(cores: int | None = None) -> int:
    """The threads each side-by-side forward gets on a CPU (see generation_plan)."""
    return max(1, (cores or os.cpu_count() or 1) // cpu_forwards(cores))


def batch_parts(size: int, parts: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of ``parts`` near-equal slices of a batch of ``size`` (empty ones left out): how
    the generate stage splits a batch between side-by-side forwards."""
    edges = np.linspace(0, size, parts + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges) if b > a]


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` for the block (None: left alone)."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- postprocess ----------------------------------------------------------------------------------------


def postprocess_face(generated: np.ndarray, box: Box) -> np.ndarray:
    """Resize one generated 96x96 face back to the crop size of ``box``."""
    x1, y1, x2, y2 = crop_box(box)
    w, h = x2 - x1, y2 - y1
    interp = cv2.INTER_CUBIC if max(w, h) > FACE_SIZE else cv2.INTER_AREA
    return cv2.resize(generated, (w, h), interpolation=interp)
