"""The occlusion-aware mask's model: BiSeNet face parsing on seeded random weights (architecture, real
checkpoint file format, strict loading through the catalog name), the masker's class mapping, how the
pipeline turns it on (auto / on / off), and the new job settings' validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lipsync.config import Settings
from lipsync.errors import CheckpointLayoutError, ModelNotAvailable
from lipsync.models import ModelStore, load_network
from lipsync.nets import BiSeNet
from lipsync.options import LipSyncOptions, OptionsInvalid, TrackOptions, parse_options, resolve_occlusion
from lipsync.pipeline import LipSyncPipeline
from lipsync.stages.occlusion import FACE_CLASSES, FaceParsingMasker


@pytest.fixture(scope="module")
def bisenet() -> BiSeNet:
    torch.manual_seed(0)
    net = BiSeNet().eval()
    # Non-trivial BatchNorm statistics, as a trained checkpoint has.
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net


def test_bisenet_forward_shape_and_resolution(bisenet):
    x = torch.rand(2, 3, 64, 96)
    with torch.inference_mode():
        out = bisenet(x)
    assert out.shape == (2, 19, 64, 96) and torch.isfinite(out).all()
    # The logits are not constant over the image: the network is spatial, not a classifier.
    assert out.std(dim=(2, 3)).mean() > 0


def test_bisenet_checkpoint_round_trip_through_the_catalog_name(bisenet, tmp_path):
    path = tmp_path / "face-parsing-bisenet.pth"
    state = {k: v for k, v in bisenet.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, path)  # a plain state dict, as 79999_iter.pth (without the BN counters)
    loaded = load_network("face_parsing", path)
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(loaded(x), bisenet(x))
    state.pop("conv_out.conv_out.weight")
    torch.save(state, path)
    with pytest.raises(CheckpointLayoutError, match=r"conv_out\.conv_out\.weight"):
        load_network("face_parsing", path)


class _Parser(nn.Module):
    """A parsing double: class 11 (mouth) everywhere, 0 (background) in the given rows/cols, 17 (hair) in
    the top rows: the masker must keep the face classes only."""

    def forward(self, x):
        n, _, h, w = x.shape
        logits = torch.zeros(n, 19, h, w)
        logits[:, 11] = 1.0
        logits[:, 0, h // 2 :, : w // 4] = 2.0
        logits[:, 17, : h // 8] = 2.0
        return logits, logits, logits


def test_masker_keeps_face_classes_only():
    masker = FaceParsingMasker(_Parser())
    faces = np.random.default_rng(0).integers(0, 256, (3, 96, 96, 3), dtype=np.uint8)
    masks = masker(faces)
    assert len(masks) == 3
    for m in masks:
        assert m.shape == (96, 96) and m.dtype == np.float32
        assert (m[60:, :20] == 0).all() and (m[:10] == 0).all() and (m[20:40, 40:] == 1).all()
    assert 11 in FACE_CLASSES and 0 not in FACE_CLASSES and 17 not in FACE_CLASSES


def test_masker_runs_the_real_architecture(bisenet):
    masks = FaceParsingMasker(bisenet, batch_size=1)(np.zeros((2, 96, 96, 3), np.uint8))
    assert [m.shape for m in masks] == [(96, 96)] * 2
    assert all(((m >= 0) & (m <= 1)).all() for m in masks)


def test_occlusion_is_off_until_its_weights_are_present(bisenet, tmp_path):
    settings = Settings(models_dir=tmp_path, offline=True, device="cpu")
    pipeline = LipSyncPipeline(settings)
    assert pipeline.get_occlusion("auto") is None and pipeline.get_occlusion("off") is None
    with pytest.raises(ModelNotAvailable):
        pipeline.get_occlusion("on")  # offline and absent: a clear error, not a silent plain mask
    torch.save(bisenet.state_dict(), ModelStore(settings).catalog_path("face_parsing"))
    assert pipeline.get_occlusion("auto") is None  # present, but on a CPU auto stays off
    masker = pipeline.get_occlusion("on")
    assert isinstance(masker, FaceParsingMasker)
    assert pipeline.get_occlusion("off") is None and pipeline.get_occlusion("on") is masker


@pytest.mark.parametrize(
    ("choice", "present", "device", "on"),
    [("auto", False, "cuda", False), ("auto", True, "cuda", True), ("auto", True, "cpu", False),
     ("on", False, "cpu", True), ("off", True, "cuda", False)],
)  # fmt: skip
def test_occlusion_auto_rule(choice, present, device, on):
    assert resolve_occlusion(choice, present, device) is on


@pytest.mark.parametrize(
    ("field", "value"),
    [("detect_angles", "sideways"), ("mask_shrink", 0.9), ("mask_shrink", "0.1"), ("occlusion_mask", "maybe")],
)
def test_new_settings_are_validated(field, value):
    with pytest.raises(OptionsInvalid) as info:
        parse_options(LipSyncOptions, {field: value})
    assert info.value.field == field


def test_new_settings_defaults_and_kinds():
    options = LipSyncOptions()
    assert (options.detect_angles, options.occlusion_mask, options.mask_shrink) == ("upright", "auto", 0.0)
    assert "detect_angles" in TrackOptions.model_fields and "mask_shrink" not in TrackOptions.model_fields
    assert parse_options(TrackOptions, {"detect_angles": "fallback"}).detect_angles == "fallback"


def test_cli_downloads_the_parser_before_the_run_only_when_asked(tmp_path):
    from lipsync.models.preflight import needs_for_run

    settings = Settings(models_dir=tmp_path)
    assert "face_parsing" in [n.name for n in needs_for_run(settings, enhance=False, occlusion=True)]
    assert "face_parsing" not in [n.name for n in needs_for_run(settings, enhance=False)]
