"""The Wav2Lip lip-sync expert (the colour SyncNet), layout of the public ``lipsync_expert.pth``.

It embeds a 0.2 s mel window and the lower halves of the 5 video frames that span the same 0.2 s into
512-d vectors, L2-normalised. The last layer of both encoders is a ReLU, so every component is >= 0 and
the cosine similarity of the two embeddings lies in [0, 1]: Wav2Lip trains the expert with a binary
cross-entropy on exactly that cosine, so it reads as P(in sync).

Inputs:

* ``mel``: (B, 1, 80, 16), as for the generator.
* ``faces``: (B, 15, 48, 96): 5 consecutive 96x96 face crops (BGR, values in [0, 1]), each cut to its
  lower half (rows 48..95), concatenated on channels in time order (frame 0's B, G, R, frame 1's ...).
  :func:`stack_lower_halves` builds it from (B, 5, 3, 96, 96).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from lipsync.nets.blocks import ConvBlock

SYNC_FRAMES = 5
EMBEDDING_DIM = 512


def _residuals(channels: int, count: int) -> list[nn.Module]:
    return [ConvBlock(channels, channels, 3, 1, 1, residual=True) for _ in range(count)]


def stack_lower_halves(frames: Tensor) -> Tensor:
    """(B, T, C, H, W) face crops -> (B, T*C, H - H//2, W): lower halves stacked on channels in time order."""
    if frames.dim() != 5:
        raise ValueError(f"expected (B, T, C, H, W) frames, got shape {tuple(frames.shape)}")
    b, t, c, h, w = frames.shape
    return frames[:, :, :, h // 2 :].reshape(b, t * c, h - h // 2, w)


def sync_score(audio_embedding: Tensor, face_embedding: Tensor) -> Tensor:
    """Cosine similarity per item, (B, D) x (B, D) -> (B,); in [0, 1] for SyncNet embeddings."""
    return F.cosine_similarity(audio_embedding, face_embedding, dim=1)


class SyncNet(nn.Module):
    """Lip-sync expert; no arguments because the public checkpoint fixes every size.

    ``forward(mel, faces)`` -> ``(audio_embedding, face_embedding)``, each (B, 512) with unit L2 norm
    (the same order as the reference implementation).
    """

    def __init__(self) -> None:
        super().__init__()
        # Face encoder on the 48 x 96 lower-half stack; comments give the output size.
        self.face_encoder = nn.Sequential(
            ConvBlock(15, 32, 7, 1, 3),  # 32 x 48 x 96
            ConvBlock(32, 64, 5, (1, 2), 1),  # 64 x 46 x 47 (halves only the width)
            *_residuals(64, 2),
            ConvBlock(64, 128, 3, 2, 1),  # 128 x 23 x 24
            *_residuals(128, 3),
            ConvBlock(128, 256, 3, 2, 1),  # 256 x 12 x 12
            *_residuals(256, 2),
            ConvBlock(256, 512, 3, 2, 1),  # 512 x 6 x 6
            *_residuals(512, 2),
            ConvBlock(512, 512, 3, 2, 1),  # 512 x 3 x 3
            ConvBlock(512, 512, 3, 1, 0),  # 512 x 1 x 1
            ConvBlock(512, 512, 1, 1, 0),
        )
        # Audio encoder on the 80 x 16 mel window (the generator's, with one more 256-channel block).
        self.audio_encoder = nn.Sequential(
            ConvBlock(1, 32, 3, 1, 1),  # 32 x 80 x 16
            *_residuals(32, 2),
            ConvBlock(32, 64, 3, (3, 1), 1),  # 64 x 27 x 16
            *_residuals(64, 2),
            ConvBlock(64, 128, 3, 3, 1),  # 128 x 9 x 6
            *_residuals(128, 2),
            ConvBlock(128, 256, 3, (3, 2), 1),  # 256 x 3 x 3
            *_residuals(256, 2),
            ConvBlock(256, 512, 3, 1, 0),  # 512 x 1 x 1
            ConvBlock(512, 512, 1, 1, 0),
        )

    def embed_audio(self, mel: Tensor) -> Tensor:
        """(B, 1, 80, 16) -> (B, 512), unit norm."""
        return F.normalize(self.audio_encoder(mel).flatten(1), p=2, dim=1)

    def embed_faces(self, faces: Tensor) -> Tensor:
        """(B, 15, 48, 96) -> (B, 512), unit norm."""
        return F.normalize(self.face_encoder(faces).flatten(1), p=2, dim=1)

    def forward(self, mel: Tensor, faces: Tensor) -> tuple[Tensor, Tensor]:
        return self.embed_audio(mel), self.embed_faces(faces)

    def sync_score(self, mel: Tensor, faces: Tensor) -> Tensor:
        """Per-item cosine of the two embeddings, (B,) in [0, 1]; higher means better in sync."""
        return sync_score(*self(mel, faces))
