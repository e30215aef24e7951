"""Face enhancement with GFPGAN v1.4: prepare (align) -> forward (restore) -> postprocess (paste back).

* ``align_face`` maps a face's 5 landmarks onto the 512x512 FFHQ template with a similarity transform and
  warps the face there.
* A ``FaceRestorer`` restores aligned faces in batches. ``GFPGANRestorer`` wraps the torch network (RGB in
  [-1, 1]); tests may pass doubles through the same interface.
* ``paste_face`` warps the restored face back with the inverse transform and blends it in with a soft mask
  (the warped square, eroded and blurred), so only the face area changes and there is no visible seam.

The pipeline only enhances faces it has just synced; other faces and frames are left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import cv2
import numpy as np

from lipsync.faces.align import similarity_transform as least_squares_similarity
from lipsync.models.device import PinnedStaging, is_oom

if TYPE_CHECKING:  # torch is imported on use (GFPGANRestorer): align/paste need none
    import torch
    from torch import nn

log = logging.getLogger(__name__)

ALIGN_SIZE = 512

#: Where the eyes, nose tip and mouth corners sit in a 512x512 FFHQ-aligned face (x, y), in that order
#: (the image-left eye first), i.e. the standard 5-point template used by GFPGAN.
FFHQ_TEMPLATE_512 = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.19360],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ],
    dtype=np.float32,
)

# Mid-grey border so the network sees no hard black edge when a face is near the frame border.
_BORDER_BGR = (132, 133, 135)

# Faces per GFPGAN pass. On CUDA, 16 (not measured on a GPU yet: benchmarks/throughput.py's enhance row
# is where to tune it); an out-of-memory error halves it.
DEFAULT_BATCH_SIZE = {"cuda": 16, "cpu": 1}


@dataclass(frozen=True)
class AlignedFace:
    image: np.ndarray  # (512, 512, 3) uint8 BGR
    affine: np.ndarray  # (2, 3) float64: frame -> aligned


def similarity_transform(landmarks: np.ndarray, size: int = ALIGN_SIZE) -> np.ndarray:
    """The 2x3 similarity (rotation, uniform scale, translation) taking ``landmarks`` onto the template."""
    src = np.asarray(landmarks, dtype=np.float32).reshape(5, 2)
    dst = FFHQ_TEMPLATE_512 * (size / ALIGN_SIZE)
    affine, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.LMEDS)
    if affine is None:  # degenerate landmarks (all on one point): plain least squares cannot fail this way
        affine = least_squares_similarity(src, dst)
    return affine.astype(np.float64)


def align_face(frame: np.ndarray, landmarks: np.ndarray, size: int = ALIGN_SIZE) -> AlignedFace:
    affine = similarity_transform(landmarks, size)
    image = cv2.warpAffine(
        frame,
        affine,
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=_BORDER_BGR,
    )
    return AlignedFace(image, affine)


def paste_face(frame: np.ndarray, restored: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Blend ``restored`` (aligned space) back into ``frame`` in place and return it.

    Only the bounding rectangle of the warped face is touched, so the cost does not grow with frame size.
    """
    size = restored.shape[0]
    inverse = cv2.invertAffineTransform(affine)
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], dtype=np.float64)
    pts = corners @ inverse.T
    fh, fw = frame.shape[:2]
    x1, y1 = max(0, int(np.floor(pts[:, 0].min()))), max(0, int(np.floor(pts[:, 1].min())))
    x2, y2 = min(fw, int(np.ceil(pts[:, 0].max()))), min(fh, int(np.ceil(pts[:, 1].max())))
    if x2 <= x1 or y2 <= y1:
        return frame
    # Shift the inverse transform so it writes into the region of interest only.
    roi_inv = inverse.copy()
    roi_inv[:, 2] -= (x1, y1)
    rw, rh = x2 - x1, y2 - y1
    face = cv2.warpAffine(
        restored, roi_inv, (rw, rh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    square = np.ones((size, size), np.float32)
    mask = cv2.warpAffine(square, roi_inv, (rw, rh), flags=cv2.INTER_LINEAR, borderValue=0)
    # Soft edge about 1/20 of the face's size: erode first so the blur never reaches the square's border.
    face_px = max(2, int(np.sqrt(float(mask.sum()))) // 20)
    mask = cv2.erode(mask, np.ones((face_px, face_px), np.uint8))
    k = 2 * face_px + 1
    mask = cv2.GaussianBlur(mask, (k, k), 0)[..., None]
    roi = frame[y1:y2, x1:x2].astype(np.float32)
    frame[y1:y2, x1:x2] = (
        np.clip(mask * face.astype(np.float32) + (1.0 - mask) * roi, 0, 255).round().astype(np.uint8)
    )
    return frame


@runtime_checkable
class FaceRestorer(Protocol):
    """Restores aligned faces: (N, 512, 512, 3) uint8 BGR -> the same shape."""

    batch_size: int

    def __call__(self, faces: np.ndarray) -> np.ndarray: ...


class GFPGANRestorer:
    """GFPGAN v1.4 forward (RGB in [-1, 1]), batched, fp16 on CUDA when asked.

    The enhancer hands it every synced face of a render batch at once (all faces of all its frames), so
    on CUDA the network sees ``batch_size`` faces per pass; the batch halves (and stays halved) when the
    device runs out of memory. On CUDA, faces travel through pinned host buffers with non-blocking copies.
    """

    def __init__(
        self,
        net: nn.Module,
        device: torch.device | str = "cpu",
        *,
        batch_size: int | None = None,
        fp16: bool = True,
    ) -> None:
        import torch

        from lipsync.nets import to_channels_last

        self.device = torch.device(device)
        self.batch_size = int(batch_size or DEFAULT_BATCH_SIZE.get(self.device.type, 1))
        self.dtype = torch.float16 if (fp16 and self.device.type == "cuda") else torch.float32
        # channels_last measured a little faster for GFPGAN too (benchmarks/nets.py); the helper converts
        # only the 4-D tensors, since the modulated-conv weights are 5-D.
        self.net = to_channels_last(net.to(self.device, dtype=self.dtype).eval())
        self._staging = PinnedStaging() if self.device.type == "cuda" else None

    def __call__(self, faces: np.ndarray) -> np.ndarray:
        import torch

        out = np.empty_like(faces)
        start = 0
        while start < len(faces):
            stop = start + self.batch_size
            try:
                out[start:stop] = self._forward(faces[start:stop])
            except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
                if not is_oom(exc) or self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                log.warning("out of memory in GFPGAN; retrying with batch size %d", self.batch_size)
                torch.cuda.empty_cache()
                continue
            start = stop
        return out

    def _forward(self, faces: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            host = torch.from_numpy(np.ascontiguousarray(faces))
            if self._staging is not None:
                host = self._staging.upload("faces", host)
            bgr = host.to(self.device, non_blocking=True)
            # BGR -> RGB on the device (a flip of a tiny axis), not as a strided copy on the host.
            x = bgr.flip(-1).permute(0, 3, 1, 2).to(self.dtype) / 127.5 - 1.0
            # The checkpoint's fixed noise, not fresh noise per call: fresh noise makes video texture flicker.
            y = self.net(x.contiguous(memory_format=torch.channels_last), randomize_noise=False)
            if isinstance(y, (tuple, list)):  # GFPGAN returns (image, intermediate RGBs)
                y = y[0]
            y = ((y.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
            y = y.permute(0, 2, 3, 1).flip(-1)
            if self._staging is None:
                return y.numpy()
            return self._staging.download(y.contiguous())


class FaceEnhancer:
    """Enhances faces in a list of frames: align each, restore them in batches, paste each back."""

    def __init__(self, restorer: FaceRestorer) -> None:
        self.restorer = restorer

    def __call__(self, frames: Sequence[np.ndarray], faces: Sequence[tuple[int, np.ndarray]]) -> int:
        """``faces`` holds (index into frames, 5 landmarks); frames are modified in place. Returns the count."""
        if not faces:
            return 0
        aligned = [align_face(frames[i], lm) for i, lm in faces]
        restored = self.restorer(np.stack([a.image for a in aligned]))
        # Paste in the given order; overlapping faces in one frame blend one after the other.
        for (i, _), face, item in zip(faces, restored, aligned, strict=True):
            paste_face(frames[i], face, item.affine)
        return len(faces)
