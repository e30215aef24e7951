"""ModelStore: catalog paths, user overrides, offline errors, downloads and the buffalo_l zip pack
(served by a real loopback HTTP server), status and verification, and the ``lipsync models`` CLI."""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner

from http_fixture import closed_port_url, payload, serving
from lipsync.config import Settings
from lipsync.errors import ModelNotAvailable, UnknownModel
from lipsync.models import CATALOG, TORCH_MODELS, DownloadOptions, ModelStore, get_spec, load_network
from lipsync.models.catalog import ArchiveMember, ModelSpec

SHA256 = re.compile(r"[0-9a-f]{64}")
FAST = DownloadOptions(connect_timeout=1, read_timeout=2, retries=1, backoff=0.01)


@pytest.fixture
def http_server():
    with serving() as server:
        yield server


def _settings(tmp_path, **kwargs) -> Settings:
    return Settings(models_dir=tmp_path / "models", **kwargs)


def _fake_buffalo_zip() -> tuple[bytes, dict[str, bytes]]:
    members = {"det_10g.onnx": payload(3000, seed=11), "w600k_r50.onnx": payload(5000, seed=12)}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(f"buffalo_l/{name}", data)  # some releases nest the files in a folder
        zf.writestr("buffalo_l/1k3d68.onnx", b"not needed")
    return buf.getvalue(), members


def _local_catalog(server) -> dict[str, ModelSpec]:
    """The real catalog with its URLs, sizes and checksums replaced by locally served fakes."""
    weights = payload(20_000, seed=10)
    server.add("wav2lip_gan.pth", weights)
    zip_bytes, members = _fake_buffalo_zip()
    server.add("buffalo_l.zip", zip_bytes)
    catalog = dict(CATALOG)
    catalog["wav2lip_gan"] = replace(
        CATALOG["wav2lip_gan"],
        urls=(server.url("missing/wav2lip_gan.pth"), server.url("wav2lip_gan.pth")),
        sha256=hashlib.sha256(weights).hexdigest(),
        size=len(weights),
    )
    catalog["buffalo_l"] = replace(
        CATALOG["buffalo_l"],
        urls=(server.url("buffalo_l.zip"),),
        sha256=hashlib.sha256(zip_bytes).hexdigest(),
        size=len(zip_bytes),
        members=tuple(
            ArchiveMember(name, hashlib.sha256(data).hexdigest(), len(data), "test")
            for name, data in members.items()
        ),
    )
    catalog["lipsync_expert"] = replace(
        CATALOG["lipsync_expert"], urls=(closed_port_url("lipsync_expert.pth"),)
    )
    return catalog


# --- catalog ----------------------------------------------------------------------------------------


def test_catalog_is_complete_data():
    assert set(CATALOG) == {"wav2lip_gan", "wav2lip", "lipsync_expert", "gfpgan_v1.4", "buffalo_l", "face_parsing"}
    for spec in CATALOG.values():
        assert spec.urls and all(url.startswith("https://") for url in spec.urls)
        assert spec.urls[0].endswith(spec.filename)
        assert spec.sha256 is None or SHA256.fullmatch(spec.sha256)
        assert spec.size and spec.licence and spec.purpose
    for name in ("wav2lip_gan", "wav2lip", "lipsync_expert", "buffalo_l"):
        assert "non-commercial" in CATALOG[name].licence
    assert "Apache-2.0" in CATALOG["gfpgan_v1.4"].licence
    assert "non-commercial" in CATALOG["face_parsing"].licence and CATALOG["face_parsing"].sha256
    assert [m.name for m in CATALOG["buffalo_l"].members] == ["det_10g.onnx", "w600k_r50.onnx"]
    assert all(SHA256.fullmatch(m.sha256 or "") for m in CATALOG["buffalo_l"].members)
    with pytest.raises(UnknownModel, match="known models"):
        get_spec("wav3lip")


def test_catalog_torch_models_match_the_networks():
    from lipsync.nets import NETWORKS

    assert set(TORCH_MODELS) == set(NETWORKS)


# --- paths and overrides ----------------------------------------------------------------------------


def test_paths_default_under_models_dir(tmp_path):
    store = ModelStore(_settings(tmp_path))
    assert store.path_for("wav2lip_gan") == tmp_path / "models" / "wav2lip_gan.pth"
    assert store.path_for("gfpgan_v1.4") == tmp_path / "models" / "GFPGANv1.4.pth"
    assert store.path_for("buffalo_l") == tmp_path / "models" / "buffalo_l"
    assert (
        store.member_path("buffalo_l", "det_10g.onnx") == tmp_path / "models" / "buffalo_l" / "det_10g.onnx"
    )
    assert store.wav2lip_name == "wav2lip_gan"
    assert ModelStore(_settings(tmp_path, wav2lip_model="wav2lip")).wav2lip_name == "wav2lip"


def test_env_overrides_are_used_as_is(tmp_path, monkeypatch):
    own = tmp_path / "fine_tuned.pth"
    own.write_bytes(b"user weights")
    det = tmp_path / "my_det.onnx"
    det.write_bytes(b"det")
    monkeypatch.setenv("LIPSYNC_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("LIPSYNC_WAV2LIP_CHECKPOINT", str(own))
    monkeypatch.setenv("LIPSYNC_DET_MODEL", str(det))
    monkeypatch.setenv("LIPSYNC_OFFLINE", "1")
    store = ModelStore(Settings())
    assert store.path_for("wav2lip_gan") == own
    assert store.ensure("wav2lip_gan") == own  # offline, yet no error: nothing to download
    assert store.ensure_member("buffalo_l", "det_10g.onnx") == det
    row = {r.name: r for r in store.status()}["wav2lip_gan"]
    assert row.state == "present" and row.override and "LIPSYNC_WAV2LIP_CHECKPOINT" in row.detail


def test_missing_override_names_the_env_var(tmp_path):
    store = ModelStore(
        _settings(tmp_path, gfpgan_checkpoint=tmp_path / "nope.pth", rec_model=tmp_path / "x.onnx")
    )
    with pytest.raises(ModelNotAvailable, match="LIPSYNC_GFPGAN_CHECKPOINT") as info:
        store.ensure("gfpgan_v1.4")
    assert str(tmp_path / "nope.pth") in info.value.message
    with pytest.raises(ModelNotAvailable, match="LIPSYNC_REC_MODEL"):
        store.ensure_member("buffalo_l", "w600k_r50.onnx")


def test_bring_your_own_wav2lip_weights_load(tmp_path):
    from lipsync.nets import NETWORKS

    torch.manual_seed(0)
    original = NETWORKS["wav2lip"]().eval()
    own = tmp_path / "random_wav2lip.pth"
    torch.save({"state_dict": original.state_dict()}, own)
    store = ModelStore(_settings(tmp_path, wav2lip_checkpoint=own, wav2lip_model="wav2lip", offline=True))
    net = load_network(store.wav2lip_name, store.ensure(store.wav2lip_name))
    mel, face = torch.randn(1, 1, 80, 16), torch.rand(1, 6, 96, 96)
    with torch.inference_mode():
        assert torch.equal(net(mel, face), original(mel, face))


# --- offline and downloads --------------------------------------------------------------------------


def test_offline_error_says_what_where_and_how(tmp_path):
    store = ModelStore(_settings(tmp_path, offline=True))
    with pytest.raises(ModelNotAvailable) as info:
        store.ensure("wav2lip_gan")
    message = info.value.message
    assert "wav2lip_gan.pth" in message and "LIPSYNC_OFFLINE" in message
    assert CATALOG["wav2lip_gan"].url in message and str(tmp_path / "models" / "wav2lip_gan.pth") in message
    with pytest.raises(ModelNotAvailable) as info:
        store.ensure("buffalo_l")
    assert (
        "det_10g.onnx" in info.value.message and str(tmp_path / "models" / "buffalo_l") in info.value.message
    )


def test_ensure_downloads_verifies_and_reports(http_server, tmp_path):
    catalog = _local_catalog(http_server)
    store = ModelStore(_settings(tmp_path), options=FAST, catalog=catalog)
    assert {r.name: r.state for r in store.status()}["wav2lip_gan"] == "missing"
    seen = []
    path = store.ensure("wav2lip_gan", progress=lambda d, t: seen.append((d, t)))
    assert path == tmp_path / "models" / "wav2lip_gan.pth"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == catalog["wav2lip_gan"].sha256
    assert seen[-1] == (20_000, 20_000)
    rows = {r.name: r for r in store.status()}
    assert rows["wav2lip_gan"].state == "verified" and rows["wav2lip_gan"].size == 20_000
    assert store.ensure("wav2lip_gan") == path  # present: no second download
    assert len(http_server.gets("wav2lip_gan.pth")) == 1


def test_unreachable_catalog_url_is_model_not_available(tmp_path):
    store = ModelStore(_settings(tmp_path), options=FAST, catalog=_local_catalog_unreachable())
    with pytest.raises(ModelNotAvailable) as info:
        store.ensure("lipsync_expert")
    assert str(tmp_path / "models" / "lipsync_expert.pth") in info.value.message


def _local_catalog_unreachable() -> dict[str, ModelSpec]:
    catalog = dict(CATALOG)
    catalog["lipsync_expert"] = replace(
        CATALOG["lipsync_expert"], urls=(closed_port_url("lipsync_expert.pth"),)
    )
    return catalog


def test_buffalo_zip_is_downloaded_extracted_and_verified(http_server, tmp_path, caplog):
    catalog = _local_catalog(http_server)
    store = ModelStore(_settings(tmp_path), options=FAST, catalog=catalog)
    with caplog.at_level("INFO", logger="lipsync.models"):
        folder = store.ensure("buffalo_l")  # no progress callback: the server's log lines instead
    assert any("downloading buffalo_l.zip: 100%" in r.getMessage() for r in caplog.records)
    assert folder == tmp_path / "models" / "buffalo_l"
    _, members = _fake_buffalo_zip()
    for name, data in members.items():
        assert (folder / name).read_bytes() == data
    assert not (folder / "1k3d68.onnx").exists()
    assert not (tmp_path / "models" / "buffalo_l.zip").exists()  # archive removed after extraction
    assert store.face_model_paths() == (folder / "det_10g.onnx", folder / "w600k_r50.onnx")
    row = {r.name: r for r in store.status()}["buffalo_l"]
    assert row.state == "verified" and row.size == 8000
    assert len(http_server.gets("buffalo_l.zip")) == 1


def test_verify_detects_corruption(tmp_path):
    store = ModelStore(_settings(tmp_path))
    path = store.path_for("gfpgan_v1.4")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not really GFPGAN")
    rows = {r.name: r for r in store.status()}
    assert rows["gfpgan_v1.4"].state == "present" and "not verified" in rows["gfpgan_v1.4"].detail
    rows = {r.name: r for r in store.verify(["gfpgan_v1.4", "lipsync_expert"])}
    assert (
        rows["gfpgan_v1.4"].state == "corrupt" and CATALOG["gfpgan_v1.4"].sha256 in rows["gfpgan_v1.4"].detail
    )
    assert rows["lipsync_expert"].state == "missing"


# --- CLI ----------------------------------------------------------------------------------------------


def _cli(args, env):
    from lipsync.cli.models import models

    return CliRunner().invoke(models, args, env=env, catch_exceptions=False)


def test_cli_list_and_verify(tmp_path):
    env = {"LIPSYNC_MODELS_DIR": str(tmp_path / "models")}
    result = _cli(["list"], env)
    assert result.exit_code == 0
    for name in CATALOG:
        assert re.search(rf"^{re.escape(name)}\s+missing", result.output, re.M)
    assert str(tmp_path / "models" / "wav2lip_gan.pth") in result.output

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "wav2lip.pth").write_bytes(b"junk")
    result = _cli(["verify", "wav2lip"], env)
    assert result.exit_code == 2 and "corrupt" in result.output
    result = _cli(["list", "--json"], env)
    assert '"state": "present"' in result.output


def test_cli_download_arguments_and_offline(tmp_path):
    env = {"LIPSYNC_MODELS_DIR": str(tmp_path / "models"), "LIPSYNC_OFFLINE": "1"}
    assert _cli(["download"], env).exit_code == 2
    assert _cli(["download", "nope"], env).exit_code == 2
    result = _cli(["download", "wav2lip_gan"], env)
    assert result.exit_code == 2
    assert "error (model_not_available) [wav2lip_gan]: " in result.output and "LIPSYNC_OFFLINE" in result.output


def test_cli_download_from_local_server(http_server, tmp_path, monkeypatch):
    import lipsync.cli.models as cli_models

    catalog = _local_catalog(http_server)
    monkeypatch.setattr(
        cli_models, "_store", lambda: ModelStore(_settings(tmp_path), options=FAST, catalog=catalog)
    )
    result = _cli(["download", "wav2lip_gan", "buffalo_l"], {})
    assert result.exit_code == 0, result.output
    assert (tmp_path / "models" / "wav2lip_gan.pth").exists()
    assert (tmp_path / "models" / "buffalo_l" / "det_10g.onnx").exists()
