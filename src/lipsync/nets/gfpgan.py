"""GFPGAN v1 "clean" (Wang et al., CVPR 2021), layout of the public ``GFPGANv1.4.pth`` (``params_ema``).

A U-Net runs over the degraded 512x512 face. Its bottleneck becomes one StyleGAN2 latent per generator
layer (``final_linear``), and each decoder level of the U-Net yields a per-pixel scale and shift
(``condition_scale`` / ``condition_shift``). A StyleGAN2 generator, driven by those latents, draws the
restored face; after the first (upsampling) conv of every resolution, the scale and shift modulate half
of its channels (spatial feature transform, "SFT"). The other half is left to the generative prior.

Everything is plain torch ("clean": no compiled ops). Up/down-sampling is bilinear interpolation; the
StyleGAN2 modulated convolution is an ordinary ``conv2d`` (see :class:`ModulatedConv2d`).

Input: (B, 3, 512, 512) **RGB** in [-1, 1]. Output: (B, 3, 512, 512) RGB, nominally in [-1, 1] but, as
upstream, not clamped: clamp when converting to pixels.

Noise: every StyleGAN2 conv adds per-pixel Gaussian noise times a learnt scalar. With
``randomize_noise=True`` (the upstream inference default) fresh noise is drawn from torch's global RNG on
every call, so seed it for repeatable output; ``randomize_noise=False`` uses the fixed noise maps stored in
the checkpoint (``stylegan_decoder.noises.*``), which is deterministic and steadier across video frames.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_SQRT2 = math.sqrt(2.0)


def _stylegan_channels(channel_multiplier: int, narrow: float) -> dict[int, int]:
    """Channels of the StyleGAN2 generator at each resolution."""
    return {
        4: int(512 * narrow),
        8: int(512 * narrow),
        16: int(512 * narrow),
        32: int(512 * narrow),
        64: int(256 * channel_multiplier * narrow),
        128: int(128 * channel_multiplier * narrow),
        256: int(64 * channel_multiplier * narrow),
        512: int(32 * channel_multiplier * narrow),
        1024: int(16 * channel_multiplier * narrow),
    }


def _resize(x: Tensor, scale: float) -> Tensor:
    return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)


# --- StyleGAN2 generator ("clean" variant) ---------------------------------------------------------


class NormStyleCode(nn.Module):
    """Scales each style code to unit RMS over dim 1 (the first layer of the mapping MLP)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)


class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated convolution (no bias).

    The reference formulation scales the weight per sample, ``w'[b,o,i] = w[o,i] * s[b,i]``, optionally
    demodulates it, ``w''[b,o,i] = w'[b,o,i] / sqrt(sum_{i,k} w'[b,o,i,k]^2 + eps)``, and runs one grouped
    conv with a different kernel per sample. Because the conv is linear, the same result comes from
    scaling the *input* channels by ``s`` and the *output* channels by the demodulation factor around a
    single shared-weight ``conv2d``; that is what this does. It avoids materialising a (B, O, I, k, k)
    kernel, batches like any conv, and keeps channels_last inputs channels_last.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        kernel_size: square kernel size; padding keeps H and W ("same").
        num_style_feat: length of the style (latent) vector that the ``modulation`` layer maps to one
            scale per input channel.
        demodulate: normalise each output channel to unit expected variance (False only for ToRGB).
        upsample: double H and W (bilinear, align_corners=False) before the conv.
        eps: added under the square root of the demodulation.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        num_style_feat: int,
        *,
        demodulate: bool = True,
        upsample: bool = False,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.demodulate = demodulate
        self.upsample = upsample
        self.eps = eps
        self.padding = kernel_size // 2
        # Stored as (1, out, in, k, k), the checkpoint's layout.
        self.weight = nn.Parameter(
            torch.randn(1, out_channels, in_channels, kernel_size, kernel_size)
            / math.sqrt(in_channels * kernel_size**2)
        )
        self.modulation = nn.Linear(num_style_feat, in_channels, bias=True)
        # Upstream init: unit-gain fan-in weights and bias 1, so a fresh network starts near identity styles.
        nn.init.kaiming_normal_(self.modulation.weight, a=0, mode="fan_in", nonlinearity="linear")
        nn.init.constant_(self.modulation.bias, 1.0)

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        """x (B, in, H, W), style (B, num_style_feat) -> (B, out, H', W'), H' = 2H when upsampling."""
        scale = self.modulation(style)  # (B, in)
        weight = self.weight[0]  # (out, in, k, k)
        # Scaling channels commutes with the per-channel bilinear resize, so scale at the lower resolution.
        x = x * scale[:, :, None, None]
        if self.upsample:
            x = _resize(x, 2.0)
        out = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            # sum_{i,k} (w[o,i,k] s[b,i])^2 = sum_i s[b,i]^2 * sum_k w[o,i,k]^2, a (B, in) x (in, out) matmul.
            # Done in float32 so that eps and the sum of squares survive under fp16.
            energy = scale.float().square() @ weight.float().square().sum(dim=(2, 3)).t()
            demod = torch.rsqrt(energy + self.eps).to(out.dtype)
            out = out * demod[:, :, None, None]
        return out

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"kernel_size={self.kernel_size}, demodulate={self.demodulate}, upsample={self.upsample}"
        )


class StyleConv(nn.Module):
    """Modulated 3x3 conv, then noise injection, bias and LeakyReLU(0.2).

    Args:
        in_channels, out_channels, num_style_feat, upsample: as for :class:`ModulatedConv2d`.
    """

    def __init__(self, in_channels: int, out_channels: int, num_style_feat: int, *, upsample: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))  # learnt strength of the injected noise
        self.bias = nn.Parameter(torch.zeros(1, out_channels, 1, 1))
        self.modulated_conv = ModulatedConv2d(
            in_channels, out_channels, 3, num_style_feat, demodulate=True, upsample=upsample
        )

    def forward(self, x: Tensor, style: Tensor, noise: Tensor | None = None) -> Tensor:
        # sqrt(2) is the gain of the original's fused LeakyReLU, kept so the weights mean the same thing.
        out = self.modulated_conv(x, style) * _SQRT2
        if noise is None:
            b, _, h, w = out.shape
            noise = out.new_empty(b, 1, h, w).normal_()
        out = out + self.weight * noise
        out = out + self.bias
        return F.leaky_relu_(out, negative_slope=0.2)


class ToRGB(nn.Module):
    """1x1 modulated conv (no demodulation) to RGB, plus bias, plus the previous RGB image upsampled.

    Args:
        in_channels: feature channels.
        num_style_feat: style vector length.
        upsample: the previous RGB image (``skip``) has half this resolution and is bilinearly doubled.
    """

    def __init__(self, in_channels: int, num_style_feat: int, *, upsample: bool = True) -> None:
        super().__init__()
        self.upsample = upsample
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))
        self.modulated_conv = ModulatedConv2d(in_channels, 3, 1, num_style_feat, demodulate=False)

    def forward(self, x: Tensor, style: Tensor, skip: Tensor | None = None) -> Tensor:
        out = self.modulated_conv(x, style) + self.bias
        if skip is not None:
            out = out + (_resize(skip, 2.0) if self.upsample else skip)
        return out


class ConstantInput(nn.Module):
    """The learnt (1, C, size, size) tensor the generator starts from, repeated over the batch."""

    def __init__(self, num_channel: int, size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, num_channel, size, size))

    def forward(self, batch: int) -> Tensor:
        # A copy, not an expand() view: views of parameters trip module hooks under inference_mode.
        return self.weight.repeat(batch, 1, 1, 1)


class StyleGAN2GeneratorSFT(nn.Module):
    """StyleGAN2 generator whose features are modulated by spatial scale/shift maps (GFPGAN's decoder).

    Args:
        out_size: output resolution, a power of two (512 for v1.4).
        num_style_feat: latent length (512).
        num_mlp: layers of the mapping MLP (8). The MLP is part of the checkpoint but GFPGAN v1.4 feeds
            latents directly (``input_is_latent``) and never runs it.
        channel_multiplier: widens resolutions >= 64 (2 for v1.4).
        narrow: scales every channel count (1.0).
        sft_half: apply the scale/shift to the second half of the channels only (True for v1.4).
    """

    def __init__(
        self,
        out_size: int = 512,
        num_style_feat: int = 512,
        num_mlp: int = 8,
        channel_multiplier: int = 2,
        narrow: float = 1.0,
        sft_half: bool = True,
    ) -> None:
        super().__init__()
        self.num_style_feat = num_style_feat
        self.sft_half = sft_half
        self.log_size = int(math.log2(out_size))
        if 2**self.log_size != out_size or out_size < 8:
            raise ValueError(f"out_size must be a power of two >= 8, got {out_size}")
        # One noise map per StyleConv; one latent per StyleConv and ToRGB (they interleave, sharing some).
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.num_latent = self.log_size * 2 - 2
        channels = _stylegan_channels(channel_multiplier, narrow)

        mlp: list[nn.Module] = [NormStyleCode()]
        for _ in range(num_mlp):
            linear = nn.Linear(num_style_feat, num_style_feat, bias=True)
            nn.init.kaiming_normal_(linear.weight, a=0.2, mode="fan_in", nonlinearity="leaky_relu")
            nn.init.zeros_(linear.bias)
            mlp += [linear, nn.LeakyReLU(negative_slope=0.2, inplace=True)]
        self.style_mlp = nn.Sequential(*mlp)

        self.constant_input = ConstantInput(channels[4], size=4)
        self.style_conv1 = StyleConv(channels[4], channels[4], num_style_feat)
        self.to_rgb1 = ToRGB(channels[4], num_style_feat, upsample=False)

        # Per resolution 8..out_size: an upsampling StyleConv, a plain StyleConv and a ToRGB.
        self.style_convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        in_channels = channels[4]
        for level in range(3, self.log_size + 1):
            out_channels = channels[2**level]
            self.style_convs.append(StyleConv(in_channels, out_channels, num_style_feat, upsample=True))
            self.style_convs.append(StyleConv(out_channels, out_channels, num_style_feat))
            self.to_rgbs.append(ToRGB(out_channels, num_style_feat, upsample=True))
            in_channels = out_channels

        # Fixed noise maps (saved in the checkpoint): 4x4 for style_conv1, then two per resolution.
        self.noises = nn.Module()
        for i in range(self.num_layers):
            size = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise{i}", torch.randn(1, 1, size, size))

    def forward(
        self,
        styles: Tensor,
        conditions: list[Tensor],
        *,
        input_is_latent: bool = True,
        randomize_noise: bool = True,
    ) -> Tensor:
        """Draw images.

        Args:
            styles: (B, num_latent, F) one latent per layer, or (B, F) shared by every layer.
            conditions: [scale_0, shift_0, scale_1, shift_1, ...] for resolutions 8, 16, ...; each map has
                the channels it modulates (half the features when ``sft_half``). Fewer levels than the
                generator has are allowed; the rest run unmodulated.
            input_is_latent: the styles are W latents already; otherwise the mapping MLP runs first.
            randomize_noise: fresh Gaussian noise per call (True) or the stored noise maps (False).
        """
        if not input_is_latent:
            styles = self.style_mlp(styles)
        latent = styles if styles.dim() == 3 else styles.unsqueeze(1).expand(-1, self.num_latent, -1)
        if randomize_noise:
            noises: list[Tensor | None] = [None] * self.num_layers
        else:
            noises = [getattr(self.noises, f"noise{i}") for i in range(self.num_layers)]

        out = self.style_conv1(self.constant_input(latent.shape[0]), latent[:, 0], noises[0])
        rgb = self.to_rgb1(out, latent[:, 1])

        # Resolution k (k = 0, 1, ...) uses latents 2k+1 .. 2k+3 and noises 2k+1, 2k+2; latents are shared
        # between a ToRGB and the next level's first conv, as in StyleGAN2.
        for k, to_rgb in enumerate(self.to_rgbs):
            i = 2 * k + 1
            out = self.style_convs[2 * k](out, latent[:, i], noises[i])
            if i < len(conditions):
                scale, shift = conditions[i - 1], conditions[i]
                if self.sft_half:
                    kept, modulated = torch.split(out, out.size(1) // 2, dim=1)
                    out = torch.cat([kept, modulated * scale + shift], dim=1)
                else:
                    out = out * scale + shift
            out = self.style_convs[2 * k + 1](out, latent[:, i + 1], noises[i + 1])
            rgb = to_rgb(out, latent[:, i + 2], rgb)
        return rgb


# --- GFPGAN -----------------------------------------------------------------------------------------


class ResBlock(nn.Module):
    """U-Net residual block that halves (``mode="down"``) or doubles (``"up"``) H and W.

    conv3x3 -> LeakyReLU -> resize -> conv3x3 -> LeakyReLU, plus resize -> 1x1 conv (no bias) on the skip.

    Args:
        in_channels: channels of the input (and of the first conv's output).
        out_channels: channels of the output.
        mode: "down" or "up"; resizing is bilinear with align_corners=False.
    """

    def __init__(self, in_channels: int, out_channels: int, mode: str = "down") -> None:
        super().__init__()
        if mode not in ("down", "up"):
            raise ValueError(f"mode must be 'down' or 'up', got {mode!r}")
        self.scale_factor = 0.5 if mode == "down" else 2.0
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = F.leaky_relu_(self.conv1(x), negative_slope=0.2)
        out = _resize(out, self.scale_factor)
        out = F.leaky_relu_(self.conv2(out), negative_slope=0.2)
        return out + self.skip(_resize(x, self.scale_factor))


class GFPGANv1Clean(nn.Module):
    """GFPGAN v1 (clean): U-Net encoder + StyleGAN2 decoder with SFT conditions.

    The defaults are the v1.4 settings (:func:`gfpgan_v14`). Loading a pre-trained decoder from a file
    (upstream's ``decoder_load_path``) is left to :mod:`lipsync.models`, as nets do no I/O.

    Args:
        out_size: input and output resolution, a power of two (512).
        num_style_feat: StyleGAN2 latent length (512).
        channel_multiplier: StyleGAN2 width multiplier for resolutions >= 64 (2).
        fix_decoder: freeze the StyleGAN2 decoder's parameters (``requires_grad=False``); training only.
        num_mlp: layers of the StyleGAN2 mapping MLP (8).
        input_is_latent: the U-Net's code is used as W latents directly, skipping the mapping MLP (True).
        different_w: the U-Net predicts one latent per generator layer instead of one shared (True).
        narrow: scales all channel counts; the U-Net uses half the generator's channels (1.0).
        sft_half: the SFT conditions modulate half of the generator's channels (True).

    ``forward(x)`` returns the restored image only; :meth:`forward_with_intermediates` also returns the
    U-Net's auxiliary RGB predictions at 8, 16, ..., out_size (used by upstream training losses).
    """

    def __init__(
        self,
        out_size: int = 512,
        num_style_feat: int = 512,
        channel_multiplier: int = 2,
        *,
        fix_decoder: bool = False,
        num_mlp: int = 8,
        input_is_latent: bool = True,
        different_w: bool = True,
        narrow: float = 1.0,
        sft_half: bool = True,
    ) -> None:
        super().__init__()
        self.out_size = out_size
        self.num_style_feat = num_style_feat
        self.input_is_latent = input_is_latent
        self.different_w = different_w
        self.log_size = int(math.log2(out_size))
        if 2**self.log_size != out_size or out_size < 8:
            raise ValueError(f"out_size must be a power of two >= 8, got {out_size}")
        # The U-Net is half as wide as the generator.
        channels = _stylegan_channels(channel_multiplier, narrow * 0.5)
        levels = range(3, self.log_size + 1)  # resolutions 8 .. out_size as powers of two

        self.conv_body_first = nn.Conv2d(3, channels[out_size], 1)
        # Encoder: out_size -> 4, one ResBlock per halving.
        self.conv_body_down = nn.ModuleList()
        in_channels = channels[out_size]
        for level in range(self.log_size, 2, -1):
            out_channels = channels[2 ** (level - 1)]
            self.conv_body_down.append(ResBlock(in_channels, out_channels, mode="down"))
            in_channels = out_channels
        self.final_conv = nn.Conv2d(in_channels, channels[4], 3, 1, 1)
        # Decoder: 4 -> out_size, one ResBlock per doubling.
        self.conv_body_up = nn.ModuleList()
        in_channels = channels[4]
        for level in levels:
            out_channels = channels[2**level]
            self.conv_body_up.append(ResBlock(in_channels, out_channels, mode="up"))
            in_channels = out_channels
        self.toRGB = nn.ModuleList([nn.Conv2d(channels[2**level], 3, 1) for level in levels])

        num_latent = self.log_size * 2 - 2
        self.final_linear = nn.Linear(
            channels[4] * 4 * 4, (num_latent if different_w else 1) * num_style_feat
        )
        self.stylegan_decoder = StyleGAN2GeneratorSFT(
            out_size=out_size,
            num_style_feat=num_style_feat,
            num_mlp=num_mlp,
            channel_multiplier=channel_multiplier,
            narrow=narrow,
            sft_half=sft_half,
        )
        if fix_decoder:
            self.stylegan_decoder.requires_grad_(False)

        # Scale and shift heads on each U-Net decoder level. With sft_half the maps cover half of the
        # generator's channels at that resolution, which equals the U-Net's channel count there.
        self.condition_scale = nn.ModuleList()
        self.condition_shift = nn.ModuleList()
        for level in levels:
            c = channels[2**level]
            sft_channels = c if sft_half else 2 * c
            for heads in (self.condition_scale, self.condition_shift):
                heads.append(
                    nn.Sequential(
                        nn.Conv2d(c, c, 3, 1, 1),
                        nn.LeakyReLU(0.2, inplace=True),
                        nn.Conv2d(c, sft_channels, 3, 1, 1),
                    )
                )

    def _unet(self, x: Tensor, return_rgb: bool) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """U-Net pass: (latents, [scale, shift per level], auxiliary RGB images if asked)."""
        feat = F.leaky_relu_(self.conv_body_first(x), negative_slope=0.2)
        skips: list[Tensor] = []
        for block in self.conv_body_down:
            feat = block(feat)
            skips.append(feat)
        feat = F.leaky_relu_(self.final_conv(feat), negative_slope=0.2)

        style = self.final_linear(feat.flatten(1))
        if self.different_w:
            style = style.view(style.size(0), -1, self.num_style_feat)

        conditions: list[Tensor] = []
        rgbs: list[Tensor] = []
        # The decoder adds the encoder feature of the same size *before* each up block: the first up
        # block gets the deepest (4x4) encoder output, the last gets the out_size/2 one.
        for i, block in enumerate(self.conv_body_up):
            feat = block(feat + skips[-1 - i])
            conditions.append(self.condition_scale[i](feat))
            conditions.append(self.condition_shift[i](feat))
            if return_rgb:
                rgbs.append(self.toRGB[i](feat))
        return style, conditions, rgbs

    def forward_with_intermediates(
        self, x: Tensor, *, randomize_noise: bool = True
    ) -> tuple[Tensor, list[Tensor]]:
        """(B, 3, S, S) RGB in [-1, 1] -> (restored image, [auxiliary RGB at 8, 16, ..., S])."""
        style, conditions, rgbs = self._unet(x, return_rgb=True)
        image = self.stylegan_decoder(
            style, conditions, input_is_latent=self.input_is_latent, randomize_noise=randomize_noise
        )
        return image, rgbs

    def forward(self, x: Tensor, *, randomize_noise: bool = True) -> Tensor:
        """(B, 3, S, S) RGB in [-1, 1] -> restored (B, 3, S, S) RGB, nominally [-1, 1], unclamped."""
        style, conditions, _ = self._unet(x, return_rgb=False)
        return self.stylegan_decoder(
            style, conditions, input_is_latent=self.input_is_latent, randomize_noise=randomize_noise
        )


def gfpgan_v14() -> GFPGANv1Clean:
    """GFPGANv1Clean with the settings of the public GFPGANv1.4.pth (also those of v1.3)."""
    return GFPGANv1Clean(
        out_size=512,
        num_style_feat=512,
        channel_multiplier=2,
        fix_decoder=False,
        num_mlp=8,
        input_is_latent=True,
        different_w=True,
        narrow=1.0,
        sft_half=True,
    )
