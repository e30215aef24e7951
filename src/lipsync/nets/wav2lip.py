"""The Wav2Lip generator (Prajwal et al., ACM MM 2020), layout of the public ``wav2lip.pth`` and
``wav2lip_gan.pth``.

Inputs (all float, values in [0, 1] for the face):

* ``mel``: (B, 1, 80, 16), one 80-band log-mel window of 16 steps (0.2 s) centred on the frame.
* ``face``: (B, 6, 96, 96), two 96x96 crops stacked on channels: first the target frame with its lower
  half zeroed (the "masked" face), then an unmasked reference frame of the same person. The public
  weights were trained on OpenCV-decoded crops, so both crops are **BGR**, as everywhere in lipsync.

Output: (B, 3, 96, 96) BGR in [0, 1] (sigmoid), the whole face with the mouth redrawn.

Shape of the computation: a face encoder (96 -> 1 spatially, 7 stages), an audio encoder (80x16 -> 1x1,
512 channels) and a decoder that starts from the audio embedding, upsamples with transposed convolutions
and, after every stage, concatenates the matching face-encoder feature map (a U-Net whose bottleneck is
the audio). Every conv is conv + BatchNorm + ReLU, with an identity shortcut in the "residual" ones.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lipsync.nets.blocks import ConvBlock, ConvTransposeBlock

FACE_SIZE = 96
MEL_BANDS = 80
MEL_STEPS = 16


def _residuals(channels: int, count: int) -> list[nn.Module]:
    """``count`` 3x3 shape-preserving residual blocks."""
    return [ConvBlock(channels, channels, 3, 1, 1, residual=True) for _ in range(count)]


def _down(in_channels: int, out_channels: int, residual_blocks: int) -> nn.Sequential:
    """Stride-2 3x3 conv (halves H and W) followed by residual blocks."""
    return nn.Sequential(
        ConvBlock(in_channels, out_channels, 3, 2, 1), *_residuals(out_channels, residual_blocks)
    )


def _up(in_channels: int, out_channels: int, residual_blocks: int) -> nn.Sequential:
    """Stride-2 transposed 3x3 conv (doubles H and W exactly) followed by residual blocks."""
    return nn.Sequential(
        ConvTransposeBlock(in_channels, out_channels, 3, 2, 1, output_padding=1),
        *_residuals(out_channels, residual_blocks),
    )


class Wav2Lip(nn.Module):
    """Wav2Lip generator; takes no arguments because the public checkpoints fix every size.

    ``forward(mel, face)``: mel (B, 1, 80, 16), face (B, 6, 96, 96) -> (B, 3, 96, 96) in [0, 1].
    """

    def __init__(self) -> None:
        super().__init__()
        # Face encoder; the comment gives each stage's output size for a 96x96 input. Every stage's output
        # is kept for the decoder's skip connections.
        self.face_encoder_blocks = nn.ModuleList(
            [
                nn.Sequential(ConvBlock(6, 16, 7, 1, 3)),  # 16 x 96 x 96
                _down(16, 32, 2),  # 32 x 48 x 48
                _down(32, 64, 3),  # 64 x 24 x 24
                _down(64, 128, 2),  # 128 x 12 x 12
                _down(128, 256, 2),  # 256 x 6 x 6
                _down(256, 512, 1),  # 512 x 3 x 3
                nn.Sequential(ConvBlock(512, 512, 3, 1, 0), ConvBlock(512, 512, 1, 1, 0)),  # 512 x 1 x 1
            ]
        )
        # Audio encoder: 80 x 16 mel -> 512 x 1 x 1. The strides shrink the 80 mel bands faster than the
        # 16 time steps: (3,1) -> 27x16, 3 -> 9x6, (3,2) -> 3x3, then a 3x3 valid conv -> 1x1.
        self.audio_encoder = nn.Sequential(
            ConvBlock(1, 32, 3, 1, 1),
            *_residuals(32, 2),
            ConvBlock(32, 64, 3, (3, 1), 1),
            *_residuals(64, 2),
            ConvBlock(64, 128, 3, 3, 1),
            *_residuals(128, 2),
            ConvBlock(128, 256, 3, (3, 2), 1),
            *_residuals(256, 1),
            ConvBlock(256, 512, 3, 1, 0),
            ConvBlock(512, 512, 1, 1, 0),
        )
        # Decoder. Each stage's input is the previous stage's output concatenated with the face-encoder
        # feature of the same size, hence the in-channel counts (e.g. 1024 = 512 decoded + 512 face).
        self.face_decoder_blocks = nn.ModuleList(
            [
                nn.Sequential(ConvBlock(512, 512, 1, 1, 0)),  # 512 x 1 x 1 (+512 face -> 1024)
                nn.Sequential(  # 1x1 -> 3x3 (+512 face -> 1024)
                    ConvTransposeBlock(1024, 512, 3, 1, 0), *_residuals(512, 1)
                ),
                _up(1024, 512, 2),  # 6 x 6 (+256 face -> 768)
                _up(768, 384, 2),  # 12 x 12 (+128 face -> 512)
                _up(512, 256, 2),  # 24 x 24 (+64 face -> 320)
                _up(320, 128, 2),  # 48 x 48 (+32 face -> 160)
                _up(160, 64, 2),  # 96 x 96 (+16 face -> 80)
            ]
        )
        self.output_block = nn.Sequential(
            ConvBlock(80, 32, 3, 1, 1),
            nn.Conv2d(32, 3, 1, 1, 0),
            nn.Sigmoid(),
        )

    def forward(self, mel: Tensor, face: Tensor) -> Tensor:
        x = self.audio_encoder(mel)  # B x 512 x 1 x 1

        skips: list[Tensor] = []
        feat = face
        for block in self.face_encoder_blocks:
            feat = block(feat)
            skips.append(feat)

        # The deepest face feature joins the first decoder stage, the 96x96 one joins the last.
        for block, skip in zip(self.face_decoder_blocks, reversed(skips), strict=True):
            x = torch.cat((block(x), skip), dim=1)

        return self.output_block(x)
