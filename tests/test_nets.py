"""Network definitions: checkpoint layouts (keys, shapes, order) against the manifests of the public
weights, forward shapes/ranges, architectural facts that shapes alone do not pin down, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lipsync.nets import (
    NETWORKS,
    GFPGANv1Clean,
    StyleGAN2GeneratorSFT,
    SyncNet,
    Wav2Lip,
    gfpgan_v14,
    to_channels_last,
)
from lipsync.nets.blocks import ConvBlock
from lipsync.nets.gfpgan import ModulatedConv2d, ResBlock
from lipsync.nets.syncnet import stack_lower_halves, sync_score

MANIFESTS = Path(__file__).resolve().parent / "data" / "manifests"
NAMES = ["wav2lip_gan", "wav2lip", "lipsync_expert", "gfpgan_v1.4", "face_parsing"]


def _manifest_layout(name: str) -> dict[str, list[int]]:
    tensors = json.loads((MANIFESTS / f"{name}.json").read_text())["tensors"]
    return {key.removeprefix("module."): list(shape) for key, shape in tensors.items()}


def _tiny_gfpgan() -> GFPGANv1Clean:
    """Same architecture at 32x32 with narrow channels: fast enough to run many times."""
    return GFPGANv1Clean(out_size=32, num_style_feat=64, channel_multiplier=2, narrow=0.25).eval()


@pytest.fixture(scope="module")
def wav2lip() -> Wav2Lip:
    torch.manual_seed(0)
    return Wav2Lip().eval()


@pytest.fixture(scope="module")
def syncnet() -> SyncNet:
    torch.manual_seed(0)
    return SyncNet().eval()


def test_registry_names():
    assert list(NETWORKS) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_matches_manifest(name):
    expected = _manifest_layout(name)
    actual = {key: list(t.shape) for key, t in NETWORKS[name]().state_dict().items()}
    missing = sorted(set(expected) - set(actual))
    unexpected = sorted(set(actual) - set(expected))
    misshaped = [
        f"{k}: {actual[k]} != {expected[k]}" for k in expected if k in actual and actual[k] != expected[k]
    ]
    assert not (missing or unexpected or misshaped), (
        f"{name}: missing={missing}\nunexpected={unexpected}\nmis-shaped={misshaped}"
    )
    # The manifests record the upstream registration order too; matching it keeps printed layouts comparable.
    assert list(actual) == list(expected)


@pytest.mark.parametrize("net", [Wav2Lip, SyncNet])
def test_residual_blocks_are_exactly_the_same_shape_3x3_convs(net):
    """Upstream marks every shape-preserving 3x3 conv residual and no other: a fact shapes can't show."""
    for name, module in net().named_modules():
        if isinstance(module, ConvBlock):
            conv = module.conv_block[0]
            same_shape = (
                conv.in_channels == conv.out_channels
                and conv.kernel_size == (3, 3)
                and conv.stride == (1, 1)
                and conv.padding == (1, 1)
            )
            assert module.residual == same_shape, name


def test_wav2lip_forward_shape_range_and_batch_independence(wav2lip):
    torch.manual_seed(1)
    mel = torch.randn(3, 1, 80, 16)
    face = torch.rand(3, 6, 96, 96)
    with torch.inference_mode():
        out = wav2lip(mel, face)
        single = wav2lip(mel[1:2], face[1:2])
    assert out.shape == (3, 3, 96, 96)
    assert out.dtype == torch.float32
    assert out.min().item() >= 0.0 and out.max().item() <= 1.0
    torch.testing.assert_close(single, out[1:2], rtol=1e-4, atol=1e-5)


def test_wav2lip_output_depends_on_both_inputs(wav2lip):
    # At random init the audio path's effect is tiny (~1e-7), so check the gradient, not the values.
    mel = torch.randn(1, 1, 80, 16, requires_grad=True)
    face = torch.rand(1, 6, 96, 96, requires_grad=True)
    wav2lip(mel, face).sum().backward()
    assert mel.grad.abs().sum() > 0
    assert face.grad[:, :3].abs().sum() > 0 and face.grad[:, 3:].abs().sum() > 0


def test_wav2lip_skip_connections_pair_matching_sizes(wav2lip):
    sizes: list[tuple[int, ...]] = []
    hooks = [
        b.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[1:])))
        for b in wav2lip.face_encoder_blocks
    ]
    hooks.append(
        wav2lip.audio_encoder.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[1:])))
    )
    with torch.inference_mode():
        wav2lip(torch.randn(1, 1, 80, 16), torch.rand(1, 6, 96, 96))
    for h in hooks:
        h.remove()
    assert sizes == [
        (512, 1, 1),
        (16, 96, 96),
        (32, 48, 48),
        (64, 24, 24),
        (128, 12, 12),
        (256, 6, 6),
        (512, 3, 3),
        (512, 1, 1),
    ]


def test_wav2lip_channels_last_matches(wav2lip):
    mel, face = torch.randn(2, 1, 80, 16), torch.rand(2, 6, 96, 96)
    with torch.inference_mode():
        ref = wav2lip(mel, face)
        cl = Wav2Lip().eval()
        cl.load_state_dict(wav2lip.state_dict())
        cl = cl.to(memory_format=torch.channels_last)
        out = cl(
            mel.contiguous(memory_format=torch.channels_last),
            face.contiguous(memory_format=torch.channels_last),
        )
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_syncnet_embeddings_and_score(syncnet):
    torch.manual_seed(2)
    mel = torch.randn(4, 1, 80, 16)
    faces = stack_lower_halves(torch.rand(4, 5, 3, 96, 96))
    assert faces.shape == (4, 15, 48, 96)
    with torch.inference_mode():
        audio, face = syncnet(mel, faces)
        score = syncnet.sync_score(mel, faces)
    for emb in (audio, face):
        assert emb.shape == (4, 512)
        assert (emb >= 0).all()  # both encoders end in a ReLU
        torch.testing.assert_close(emb.norm(dim=1), torch.ones(4))
    assert score.shape == (4,)
    assert ((score >= 0) & (score <= 1 + 1e-6)).all()
    torch.testing.assert_close(score, sync_score(audio, face))
    torch.testing.assert_close(sync_score(audio, audio), torch.ones(4))


def test_stack_lower_halves_keeps_time_then_channel_order():
    frames = torch.arange(5 * 3, dtype=torch.float32).view(1, 5, 3, 1, 1).expand(1, 5, 3, 4, 2).clone()
    frames[:, :, :, :2] = -1  # upper half must be dropped
    stacked = stack_lower_halves(frames)
    assert stacked.shape == (1, 15, 2, 2)
    assert stacked[0, :, 0, 0].tolist() == list(range(15))
    with pytest.raises(ValueError):
        stack_lower_halves(torch.zeros(1, 15, 96, 96))


def _grouped_modulated_conv(mod: ModulatedConv2d, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """The reference formulation: a per-sample modulated kernel run as one grouped conv."""
    b, c, _, _ = x.shape
    weight = mod.weight * mod.modulation(style).view(b, 1, c, 1, 1)
    if mod.demodulate:
        weight = weight * torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + mod.eps).view(b, -1, 1, 1, 1)
    weight = weight.view(b * mod.out_channels, c, mod.kernel_size, mod.kernel_size)
    if mod.upsample:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    out = F.conv2d(x.reshape(1, b * c, *x.shape[2:]), weight, padding=mod.padding, groups=b)
    return out.view(b, mod.out_channels, *out.shape[2:])


@pytest.mark.parametrize(
    ("kernel", "demodulate", "upsample"), [(3, True, False), (3, True, True), (1, False, False)]
)
def test_modulated_conv_equals_grouped_reference(kernel, demodulate, upsample):
    torch.manual_seed(3)
    mod = ModulatedConv2d(16, 8, kernel, 32, demodulate=demodulate, upsample=upsample)
    x, style = torch.randn(3, 16, 8, 8), torch.randn(3, 32)
    with torch.inference_mode():
        torch.testing.assert_close(
            mod(x, style), _grouped_modulated_conv(mod, x, style), rtol=1e-4, atol=1e-5
        )


def test_resblock_resizes():
    x = torch.randn(1, 4, 8, 8)
    assert ResBlock(4, 6, "down")(x).shape == (1, 6, 4, 4)
    assert ResBlock(4, 2, "up")(x).shape == (1, 2, 16, 16)


def test_sft_half_modulates_only_the_second_half():
    torch.manual_seed(4)
    gen = StyleGAN2GeneratorSFT(out_size=16, num_style_feat=32, narrow=1 / 32).eval()  # 16 channels
    latents = torch.randn(2, gen.num_latent, 32)
    captured: list[torch.Tensor] = []
    hook = gen.style_convs[1].register_forward_hook(lambda m, i, o: captured.append(i[0]))
    # Identity conditions (scale 1, shift 0) on the first level equal no conditions at all.
    identity = [torch.ones(2, 8, 8, 8), torch.zeros(2, 8, 8, 8)]
    shifted = [torch.ones(2, 8, 8, 8), torch.full((2, 8, 8, 8), 0.5)]
    with torch.inference_mode():
        plain = gen(latents, [], randomize_noise=False)
        same = gen(latents, identity, randomize_noise=False)
        moved = gen(latents, shifted, randomize_noise=False)
    hook.remove()
    torch.testing.assert_close(same, plain)
    assert not torch.allclose(moved, plain)
    before, _, after = captured
    torch.testing.assert_close(after[:, :8], before[:, :8])
    torch.testing.assert_close(after[:, 8:], before[:, 8:] + 0.5)


def test_gfpgan_v14_forward_at_512():
    torch.manual_seed(5)
    net = gfpgan_v14().eval()
    x = torch.rand(1, 3, 512, 512) * 2 - 1
    with torch.inference_mode():
        out = net(x)
    assert out.shape == (1, 3, 512, 512)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # The random-weight output is not a face, but it must be image-scaled, not exploded or collapsed.
    assert 0.01 < out.std().item() < 10


def test_gfpgan_noise_and_intermediates():
    torch.manual_seed(6)
    net = _tiny_gfpgan()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.inference_mode():
        fixed_a = net(x, randomize_noise=False)
        fixed_b = net(x, randomize_noise=False)
        torch.manual_seed(7)
        rand_a = net(x)
        torch.manual_seed(7)
        rand_b = net(x)
        image, rgbs = net.forward_with_intermediates(x, randomize_noise=False)
    torch.testing.assert_close(fixed_a, fixed_b, rtol=0, atol=0)
    torch.testing.assert_close(rand_a, rand_b, rtol=0, atol=0)
    assert fixed_a.shape == (2, 3, 32, 32)
    torch.testing.assert_close(image, fixed_a)
    assert [tuple(r.shape) for r in rgbs] == [(2, 3, 8, 8), (2, 3, 16, 16), (2, 3, 32, 32)]
    # Noise injection is live: its learnt strength starts at 0 (upstream init), so give it a value.
    with torch.no_grad():
        for conv in net.stylegan_decoder.style_convs:
            conv.weight.fill_(0.5)
    with torch.inference_mode():
        first, second = net(x), net(x)
        fixed = net(x, randomize_noise=False)
    assert not torch.allclose(first, second)
    assert not torch.allclose(first, fixed)
    torch.testing.assert_close(fixed, net(x, randomize_noise=False), rtol=0, atol=0)


@pytest.mark.parametrize("factory", [Wav2Lip, SyncNet, _tiny_gfpgan])
def test_seeded_construction_is_deterministic(factory):
    torch.manual_seed(8)
    a = factory().state_dict()
    torch.manual_seed(8)
    b = factory().state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gfpgan_settings_are_validated():
    with pytest.raises(ValueError):
        GFPGANv1Clean(out_size=500)
    decoder = _tiny_gfpgan().stylegan_decoder
    assert isinstance(decoder.style_mlp[1], nn.Linear)
    frozen = GFPGANv1Clean(out_size=32, num_style_feat=64, narrow=0.25, fix_decoder=True)
    assert not any(p.requires_grad for p in frozen.stylegan_decoder.parameters())
    assert all(p.requires_grad for p in frozen.conv_body_up.parameters())


def test_to_channels_last_handles_gfpgan_rank5_weights():
    torch.manual_seed(9)
    net = _tiny_gfpgan()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.inference_mode():
        ref = net(x, randomize_noise=False)
        to_channels_last(net)
        assert net.conv_body_first.weight.is_contiguous(memory_format=torch.channels_last)
        out = net(x.contiguous(memory_format=torch.channels_last), randomize_noise=False)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
