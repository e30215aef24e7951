"""Checkpoint loading: every real file format, strictness, refusal of unsafe pickles, layout errors,
and device helpers. Real architectures get seeded random weights saved the way the public files are."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from lipsync.errors import (
    CheckpointError,
    CheckpointLayoutError,
    DeviceUnavailable,
    InputError,
    UnsafeCheckpoint,
)
from lipsync.models import (
    check_layout,
    load_into,
    load_network,
    load_state_dict_file,
    prepare_module,
    resolve_device,
    use_fp16,
)
from lipsync.models.loading import MAX_LISTED_KEYS

# --- helpers --------------------------------------------------------------------------------------


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)  # brings an int64 num_batches_tracked buffer, like the real files
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(self.conv(x)).mean((2, 3)))


def _seeded(factory, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    module = factory()
    # Make BatchNorm statistics non-trivial so a load that skipped buffers would show.
    for buf_name, buf in module.named_buffers():
        if buf.is_floating_point():
            buf.uniform_(0.5, 1.5) if buf_name.endswith("running_var") else buf.normal_()
    return module.eval()


def _save(state: dict, path: Path, *, fmt: str, prefix: bool, container: str) -> Path:
    if prefix:
        state = OrderedDict((f"module.{k}", v) for k, v in state.items())
    if container == "state_dict":  # Wav2Lip / SyncNet training checkpoints
        obj = {"state_dict": state, "optimizer": {"state": {}, "param_groups": []}, "global_step": 7}
    elif container == "params_ema":  # GFPGAN release files
        obj = {"params_ema": state}
    else:  # a bare state dict
        obj = state
    torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"))
    return path


FORMATS = [
    pytest.param(fmt, prefix, container, id=f"{fmt}-{'module' if prefix else 'plain'}-{container}")
    for fmt in ("legacy", "zip")
    for prefix in (False, True)
    for container in ("state_dict", "params_ema", "bare")
]


# --- formats on a small module --------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "prefix", "container"), FORMATS)
def test_every_format_loads_strictly(tmp_path, fmt, prefix, container):
    original = _seeded(Tiny)
    path = _save(original.state_dict(), tmp_path / "tiny.pth", fmt=fmt, prefix=prefix, container=container)
    with open(path, "rb") as handle:
        is_zip = handle.read(4) == b"PK\x03\x04"
    assert is_zip == (fmt == "zip")

    state = load_state_dict_file(path)
    assert list(state) == list(original.state_dict())
    loaded = load_into(_seeded(Tiny, seed=1), path).eval()
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(loaded(x), original(x))


def test_params_ema_is_preferred_over_params(tmp_path):
    original = _seeded(Tiny)
    path = tmp_path / "g.pth"
    torch.save({"params": {"not": torch.zeros(1)}, "params_ema": original.state_dict()}, path)
    assert list(load_state_dict_file(path)) == list(original.state_dict())
    torch.save({"params": original.state_dict()}, path)
    assert list(load_state_dict_file(path)) == list(original.state_dict())


class Smuggled:
    """A class a malicious checkpoint could ask the unpickler to import and instantiate."""

    def __init__(self) -> None:
        self.payload = "anything"


def _record_call(marker: str) -> None:
    Path(marker).write_text("executed")


class CallsOnLoad:
    """Unpickling this would call _record_call (a stand-in for os.system) if the loader allowed it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (_record_call, (self.marker,))


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
def test_checkpoint_that_needs_code_is_refused(tmp_path, fmt):
    marker = tmp_path / "executed.txt"
    zipfile_format = fmt == "zip"
    path = tmp_path / "evil.pth"
    torch.save(
        {"state_dict": _seeded(Tiny).state_dict(), "hook": CallsOnLoad(str(marker))},
        path,
        _use_new_zipfile_serialization=zipfile_format,
    )
    with pytest.raises(UnsafeCheckpoint) as info:
        load_state_dict_file(path)
    assert not marker.exists()
    assert "_record_call" in info.value.message and "weights_only" in info.value.message

    torch.save({"state_dict": {}, "obj": Smuggled()}, path, _use_new_zipfile_serialization=zipfile_format)
    with pytest.raises(UnsafeCheckpoint, match="Smuggled"):
        load_state_dict_file(path)


def test_not_a_checkpoint_is_a_clear_error_not_unsafe(tmp_path):
    html = tmp_path / "page.pth"
    html.write_bytes(b"<html><body>404 not found</body></html>")
    with pytest.raises(CheckpointError) as info:
        load_state_dict_file(html)
    assert not isinstance(info.value, UnsafeCheckpoint)
    truncated = tmp_path / "cut.pth"
    _save(_seeded(Tiny).state_dict(), tmp_path / "full.pth", fmt="legacy", prefix=False, container="bare")
    truncated.write_bytes((tmp_path / "full.pth").read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_state_dict_file(truncated)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state_dict_file(tmp_path / "nope.pth")


def test_wrong_layout_names_missing_unexpected_and_misshaped_keys(tmp_path):
    state = _seeded(Tiny).state_dict()
    del state["head.bias"]
    state["extra.weight"] = torch.zeros(3)
    state["conv.weight"] = torch.zeros(4, 3, 5, 5)
    path = _save(state, tmp_path / "bad.pth", fmt="zip", prefix=False, container="state_dict")
    with pytest.raises(CheckpointLayoutError) as info:
        load_into(Tiny(), path)
    message = info.value.message
    assert "missing 1: head.bias" in message
    assert "unexpected 1: extra.weight" in message
    assert "mis-shaped 1: conv.weight (file (4, 3, 5, 5), network (4, 3, 3, 3))" in message


def test_long_key_lists_are_truncated():
    module = nn.Sequential(*[nn.Linear(2, 2) for _ in range(30)])
    with pytest.raises(CheckpointLayoutError) as info:
        check_layout(module, {})
    message = info.value.message
    assert "missing 60:" in message and f"(+{60 - MAX_LISTED_KEYS} more)" in message
    assert len(message) < 1000


def test_no_state_dict_inside(tmp_path):
    path = tmp_path / "x.pth"
    torch.save({"global_step": 3, "epoch": 1}, path)
    with pytest.raises(CheckpointLayoutError, match="holds no state dict"):
        load_state_dict_file(path)


# --- the real architectures -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def real_files(tmp_path_factory):
    """Seeded random-weight checkpoints of the real networks, saved once per session as the public
    files are (plus the other variants). Returns name -> (original module, {variant: path})."""
    from lipsync.nets import NETWORKS

    root = tmp_path_factory.mktemp("real_ckpts")
    cache: dict[str, tuple[nn.Module, dict[str, Path]]] = {}

    def build(name: str) -> tuple[nn.Module, dict[str, Path]]:
        if name in cache:
            return cache[name]
        original = _seeded(NETWORKS[name], seed=len(name))
        state = original.state_dict()
        variants = {
            "wav2lip": [("legacy", True, "state_dict"), ("zip", False, "state_dict")],
            "lipsync_expert": [("legacy", False, "state_dict"), ("zip", True, "state_dict")],
            "gfpgan_v1.4": [("zip", False, "params_ema")],
        }[name]
        paths = {
            f"{fmt}-{int(prefix)}-{container}": _save(
                state, root / f"{name}-{fmt}-{int(prefix)}.pth", fmt=fmt, prefix=prefix, container=container
            )
            for fmt, prefix, container in variants
        }
        cache[name] = (original, paths)
        return cache[name]

    return build


def _frozen_eval(module: nn.Module) -> None:
    assert not module.training
    assert all(not p.requires_grad for p in module.parameters())


@pytest.mark.parametrize(
    ("name", "variant"),
    [("wav2lip", "legacy-1-state_dict"), ("wav2lip_gan", "zip-0-state_dict")],  # as published, and resaved
)
def test_wav2lip_round_trip(real_files, name, variant):
    original, paths = real_files("wav2lip")
    loaded = load_network(name, paths[variant], device="cpu")
    _frozen_eval(loaded)
    torch.manual_seed(1)
    mel, face = torch.randn(2, 1, 80, 16), torch.rand(2, 6, 96, 96)
    with torch.inference_mode():
        assert torch.equal(loaded(mel, face), original(mel, face))


@pytest.mark.parametrize("variant", ["legacy-0-state_dict", "zip-1-state_dict"])
def test_syncnet_round_trip(real_files, variant):
    original, paths = real_files("lipsync_expert")
    loaded = load_network("lipsync_expert", paths[variant])
    _frozen_eval(loaded)
    torch.manual_seed(2)
    mel, faces = torch.randn(2, 1, 80, 16), torch.rand(2, 15, 48, 96)
    with torch.inference_mode():
        for got, want in zip(loaded(mel, faces), original(mel, faces), strict=True):
            assert torch.equal(got, want)


@pytest.mark.slow
def test_gfpgan_round_trip(real_files):
    original, paths = real_files("gfpgan_v1.4")
    loaded = load_network("gfpgan_v1.4", paths["zip-0-params_ema"])
    _frozen_eval(loaded)
    torch.manual_seed(3)
    x = torch.rand(1, 3, 512, 512) * 2 - 1
    with torch.inference_mode():
        assert torch.equal(loaded(x, randomize_noise=False), original(x, randomize_noise=False))


def test_real_wrong_network_names_keys(real_files):
    _, paths = real_files("lipsync_expert")
    with pytest.raises(CheckpointLayoutError) as info:
        load_network("wav2lip_gan", paths["legacy-0-state_dict"])
    message = info.value.message
    assert "missing" in message and "unexpected" in message and "Wav2Lip" in message


# --- devices --------------------------------------------------------------------------------------


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceUnavailable, match="CUDA is not available"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(DeviceUnavailable, match="only 1 CUDA"):
        resolve_device("cuda:3")


def test_prepare_module_fp16_only_on_cuda_and_channels_last():
    assert use_fp16(torch.device("cuda"), True) and not use_fp16(torch.device("cpu"), True)
    assert not use_fp16(torch.device("cuda"), False)
    module = prepare_module(Tiny().train(), "cpu", fp16=True, channels_last=True)
    _frozen_eval(module)
    assert module.conv.weight.dtype == torch.float32  # fp16 is never applied on CPU
    assert module.conv.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp16_on_cuda(tmp_path):
    original = _seeded(Tiny)
    path = _save(original.state_dict(), tmp_path / "t.pth", fmt="zip", prefix=False, container="bare")
    module = prepare_module(load_into(Tiny(), path), "cuda", fp16=True)
    assert module.conv.weight.dtype == torch.float16 and module.conv.weight.is_cuda


def test_channels_last_on_gfpgan_keeps_5d_weights_and_converts_4d():
    """GFPGAN holds 5-D modulated-conv weights, which module.to(memory_format=channels_last) refuses."""
    from lipsync.models.device import prepare_module
    from lipsync.nets import NETWORKS

    torch.manual_seed(0)
    net = prepare_module(NETWORKS["gfpgan_v1.4"](), "cpu", channels_last=True)
    four_d = [p for p in net.parameters() if p.dim() == 4]
    assert four_d and all(p.is_contiguous(memory_format=torch.channels_last) for p in four_d)
    assert any(p.dim() == 5 for p in net.parameters())


def test_build_and_load_on_meta_gives_the_file_weights_and_still_checks_the_layout(tmp_path: Path):
    from lipsync.models.loading import build_and_load

    path = tmp_path / "tiny.pth"
    source = _seeded(Tiny, seed=3)
    torch.save({"state_dict": source.state_dict()}, path)
    module = build_and_load(Tiny, path).eval()
    assert not any(t.is_meta for t in [*module.parameters(), *module.buffers()])
    for (name, a), (_, b) in zip(source.state_dict().items(), module.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(module(x), source(x))
    torch.save({"state_dict": {k: v for k, v in source.state_dict().items() if "bias" not in k}}, path)
    with pytest.raises(CheckpointLayoutError, match="missing"):
        build_and_load(Tiny, path)


def test_build_and_load_builds_normally_when_the_file_leaves_a_tensor_unfilled(tmp_path: Path):
    from lipsync.models.loading import build_and_load

    class WithTable(Tiny):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("table", torch.arange(4.0), persistent=False)  # not in any file

    path = tmp_path / "t.pth"
    torch.save({"state_dict": _seeded(Tiny).state_dict()}, path)
    module = build_and_load(WithTable, path)
    assert not module.table.is_meta and torch.equal(module.table, torch.arange(4.0))
