"""Convolution blocks shared by the Wav2Lip generator and the SyncNet expert.

Both public checkpoints store every convolution as ``<name>.conv_block.0`` (the conv) and
``<name>.conv_block.1`` (its BatchNorm), so the submodule is an ``nn.Sequential`` named
``conv_block``; the attribute names here are part of the checkpoint layout.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

IntPair = int | tuple[int, int]


class ConvBlock(nn.Module):
    """Conv2d -> BatchNorm2d -> (+ input when ``residual``) -> ReLU.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output; must equal ``in_channels`` when ``residual``.
        kernel_size, stride, padding: as for ``nn.Conv2d`` (the conv keeps its bias, as in the checkpoints).
        residual: add the block's input to the normalised conv output before the ReLU. The shapes must
            match, so residual blocks always use stride 1 and "same" padding.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair = 0,
        *,
        residual: bool = False,
    ) -> None:
        super().__init__()
        if residual and in_channels != out_channels:
            raise ValueError("a residual ConvBlock needs in_channels == out_channels")
        self.conv_block = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding),
            nn.BatchNorm2d(out_channels),
        )
        self.residual = residual
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv_block(x)
        if self.residual:
            # In place: the BatchNorm output is a fresh tensor, and this halves peak memory at batch 128.
            out += x
        return self.act(out)


class ConvTransposeBlock(nn.Module):
    """ConvTranspose2d -> BatchNorm2d -> ReLU (the Wav2Lip decoder's upsampling step).

    Args:
        in_channels, out_channels, kernel_size, stride, padding, output_padding: as for
            ``nn.ConvTranspose2d``. Note that the stored weight is (in, out, k, k).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair = 0,
        output_padding: IntPair = 0,
    ) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride, padding, output_padding),
            nn.BatchNorm2d(out_channels),
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv_block(x))


def to_channels_last(module: nn.Module) -> nn.Module:
    """Store every 4-D parameter and buffer of ``module`` channels_last, in place; returns ``module``.

    ``module.to(memory_format=torch.channels_last)`` refuses modules holding other-rank tensors of rank 5
    (GFPGAN's modulated conv weights are stored (1, out, in, k, k)), so convert the 4-D ones only.
    """
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.dim() == 4:
            tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
    return module


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every BatchNorm of the ConvBlocks and ConvTransposeBlocks in ``module`` into its convolution,
    in place; returns ``module`` in eval mode.

    In eval mode a BatchNorm is a per-channel affine map, so ``bn(conv(x))`` is one convolution with
    rescaled weights and a shifted bias: the network computes the same function (to float rounding) with
    half as many passes over its activations. Load the checkpoint first: the folded module's state dict
    no longer has the ``conv_block.1`` entries of the public layout.
    """
    module.eval()
    for block in module.modules():
        if not isinstance(block, ConvBlock | ConvTransposeBlock):
            continue
        conv, norm = block.conv_block[0], block.conv_block[-1]
        if not isinstance(norm, nn.BatchNorm2d):
            continue  # already folded
        # The convolution itself takes the folded weights (fuse_conv_bn_eval would deep-copy it first).
        with torch.no_grad():
            weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, norm.running_mean, norm.running_var,
                                                norm.eps, norm.weight, norm.bias,
                                                transpose=isinstance(conv, nn.ConvTranspose2d))  # fmt: skip
        conv.weight, conv.bias = weight, bias
        conv.requires_grad_(False)
        block.conv_block = nn.Sequential(conv)
    return module


def has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.BatchNorm2d) for m in module.modules())
