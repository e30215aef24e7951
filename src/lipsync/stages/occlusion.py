"""The occlusion-aware mask: keep the generated mouth off whatever covers the face (a hand, a microphone).

An ``OcclusionMasker`` takes the batch of 96x96 BGR face crops Wav2Lip sees and returns, per crop, a float
(96, 96) map in [0, 1]: 1 where the face itself is visible (the mouth may be painted), 0 where something
else is. The composite multiplies its lower-face mask by it (in the aligned crop, before the warp back),
so covered pixels keep the frame's own values exactly.

``FaceParsingMasker`` is the real one: BiSeNet face parsing (CelebAMask-HQ's 19 classes,
:mod:`lipsync.nets.bisenet`) at 512x512, visible = the face's own classes (skin, brows, eyes, nose,
mouth, lips). Only its ``__call__`` touches torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # torch loads with the model, not with this module (start-up stays fast)
    import torch
    from torch import nn

#: CelebAMask-HQ classes that belong to the face (0 background, 6 glasses, 7-9 ears, 14-15 neck,
#: 16 cloth, 17 hair and 18 hat are not where a mouth may be drawn).
FACE_CLASSES: tuple[int, ...] = (1, 2, 3, 4, 5, 10, 11, 12, 13)
PARSING_SIZE = 512
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@runtime_checkable
class OcclusionMasker(Protocol):
    def __call__(self, faces: np.ndarray) -> list[np.ndarray]: ...


class FaceParsingMasker:
    """Visible-face masks from a face-parsing network (``net(x)`` returns logits first, (N, 19, H, W))."""

    def __init__(self, net: nn.Module, device: torch.device | str = "cpu", *, batch_size: int = 16) -> None:
        import torch

        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.batch_size = max(1, int(batch_size))
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        self._classes = torch.tensor(FACE_CLASSES, device=self.device)

    def __call__(self, faces: np.ndarray) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for start in range(0, len(faces), self.batch_size):
            out.extend(self._forward(faces[start : start + self.batch_size]))
        return out

    def _forward(self, faces: np.ndarray) -> list[np.ndarray]:
        import torch
        from torch import nn

        h, w = faces.shape[1:3]
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(faces[..., ::-1])).to(self.device)  # BGR -> RGB
            x = x.permute(0, 3, 1, 2).float().div_(255.0)
            x = nn.functional.interpolate(x, (PARSING_SIZE, PARSING_SIZE), mode="bilinear", align_corners=False)
            logits = self.net((x - self._mean) / self._std)
            logits = logits[0] if isinstance(logits, tuple | list) else logits
            labels = logits.argmax(1)
            visible = torch.isin(labels, self._classes).float()[:, None]
            # Back to the crop's size with area averaging: soft edges, no staircase along the occluder.
            visible = nn.functional.interpolate(visible, (h, w), mode="area")[:, 0].cpu().numpy()
        return list(visible.astype(np.float32))
