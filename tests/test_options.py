"""The options model is the one declaration of every job setting: the CLI and the API accept the same
values with the same effect on the engine's request, and refuse the same values naming the same field
with the same message. The cases are generated from the model, so a new setting is covered here without
touching this file."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import httpx
import pytest

from api_fixtures import ApiServer, AssetServer, make_media
from conftest import REPO
from lipsync.cli import main
from lipsync.cli.options import cli_fields
from lipsync.options import (
    LipSyncOptions,
    OptionsInvalid,
    TrackOptions,
    field_bounds,
    field_choices,
    field_meta,
    options_from_record,
    parse_options,
    resolve_enhance,
)
from lipsync.options_doc import cli_flag, options_markdown

# --- cases, generated from the model --------------------------------------------------------------------


def _valid_other(name: str, info) -> Any:
    """A valid value different from the default."""
    default = info.get_default(call_default_factory=True)
    choices = field_choices(info)
    if choices:
        return next(c for c in choices if c != default)
    if info.annotation is bool:
        return not default
    lo, hi = field_bounds(info)
    if isinstance(default, list):
        return [min(int(hi), v + 1) for v in default]
    if "float" in str(info.annotation):
        return round((lo + hi) / 2 + 0.05, 3) if default != round((lo + hi) / 2 + 0.05, 3) else lo
    candidate = int(lo) + 1 if lo is not None else 1
    return candidate if candidate != default else candidate + 1


def _just_outside(name: str, info) -> Any | None:
    """A value just outside the allowed range, or None for a setting without one (a boolean)."""
    default = info.get_default(call_default_factory=True)
    if field_choices(info):
        return "not-a-choice"
    if info.annotation is bool:
        return None
    lo, hi = field_bounds(info)
    if isinstance(default, list):
        return [*default[:-1], int(hi) + 1]
    if "float" in str(info.annotation):
        return hi + 0.01 if hi is not None else lo - 0.01
    return int(hi) + 1 if hi is not None else int(lo) - 1


def _cases(model: type, kind: str) -> list[Any]:
    cases = []
    for name, info in cli_fields(model):
        if kind not in field_meta(info)["kinds"]:
            continue
        default = info.get_default(call_default_factory=True)
        cases.append(pytest.param(name, default, True, id=f"{kind}-{name}-default"))
        cases.append(pytest.param(name, _valid_other(name, info), True, id=f"{kind}-{name}-other"))
        outside = _just_outside(name, info)
        if outside is not None:
            cases.append(pytest.param(name, outside, False, id=f"{kind}-{name}-outside"))
    return cases


def _cli_args(name: str, value: Any) -> list[str]:
    flag = cli_flag(name)
    if isinstance(value, bool):
        return [flag if value else f"--no-{flag[2:]}"]
    if value is None:
        return []
    if isinstance(value, list):
        return [flag, *(str(v) for v in value)]
    return [flag, str(value)]


# --- the CLI side: the options each command hands on ----------------------------------------------------


class _Captured(Exception):
    def __init__(self, options: Any) -> None:
        self.options = options


class _RecordingPipeline:
    """Stands in for LipSyncPipeline inside `lipsync run`: records the request and stops the run."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings

    def enhance_enabled(self, options: LipSyncOptions) -> bool:
        return False

    store = None

    def __call__(self, request: Any, progress: Any = None) -> Any:
        raise _Captured(request.options)


def _run_cli(monkeypatch, capsys, args: list[str]) -> tuple[Any | None, int, str]:
    """(options the command passed on, exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["lipsync", *args])
    try:
        main()
    except _Captured as captured:
        return captured.options, 0, capsys.readouterr().err
    except SystemExit as exc:
        return None, int(exc.code or 0), capsys.readouterr().err
    return None, 0, capsys.readouterr().err


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    return make_media(tmp_path_factory.mktemp("media"))


@pytest.fixture
def cli_lipsync(monkeypatch, capsys, tmp_path, media):
    import lipsync.models.preflight
    import lipsync.pipeline

    monkeypatch.setattr(lipsync.pipeline, "LipSyncPipeline", _RecordingPipeline)
    monkeypatch.setattr(lipsync.models.preflight, "ensure_models", lambda *a, **k: None)

    def run(extra: list[str]) -> tuple[Any | None, int, str]:
        base = ["run", "--video", str(media.video), "--audio", str(media.audio), "--out", str(tmp_path / "o.mp4"),
                "--no-progress"]
        return _run_cli(monkeypatch, capsys, base + extra)

    return run


@pytest.fixture
def cli_track(monkeypatch, capsys, tmp_path, media):
    import lipsync.faces
    from lipsync.faces import TrackingOptions

    def record(cls, job, *args, **internal):
        raise _Captured(job)

    monkeypatch.setattr(TrackingOptions, "from_job", classmethod(record))
    import lipsync.models.preflight

    monkeypatch.setattr(lipsync.faces, "create_face_backend", lambda settings, store=None: object())
    monkeypatch.setattr(lipsync.models.preflight, "ensure_models", lambda *a, **k: None)

    def run(extra: list[str]) -> tuple[Any | None, int, str]:
        base = ["track", "--video", str(media.video), "--json", str(tmp_path / "t.json"), "--no-progress"]
        return _run_cli(monkeypatch, capsys, base + extra)

    return run


# --- the API side: a real server on loopback with a fake engine that reports its options --------------


@pytest.fixture(scope="module")
def assets(media):
    with AssetServer() as srv:
        srv.add_file("v.mp4", media.video, "video/mp4")
        srv.add_file("a.wav", media.audio, "audio/wav")
        yield srv


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("options-api")
    with ApiServer(env={"LIPSYNC_ALLOW_PRIVATE_URLS": "true", "LIPSYNC_WORKERS": "2"}, work_dir=base / "work") as srv:
        yield srv


def _post(server: ApiServer, path: str, body: dict[str, Any]) -> httpx.Response:
    with server.client() as client:
        return client.post(path, json=body)


def _error_line(err: str) -> tuple[str, str | None, str]:
    """(code, field, message) of the CLI's one-line error."""
    lines = [line for line in err.splitlines() if line.startswith("error (")]
    assert len(lines) == 1, err
    m = re.fullmatch(r"error \(([a-z_]+)\)(?: \[([^\]]+)\])?: (.*)", lines[0])
    assert m, lines[0]
    return m.group(1), m.group(2), m.group(3)


def _check(name: str, value: Any, valid: bool, cli_result, api_response: httpx.Response, model: type) -> None:
    options, code, err = cli_result
    if valid:
        assert code == 0 and options is not None, err
        assert getattr(options, name) == value
        assert api_response.status_code == 200, api_response.text
        api_options = model.model_validate(api_response.json()["stats"]["options"])
        # The same effect on the engine's request, field for field (defaults included).
        assert api_options == options
    else:
        assert options is None and code == 2, err
        cli_code, cli_field, cli_message = _error_line(err)
        assert api_response.status_code == 422, api_response.text
        api_error = api_response.json()["error"]
        assert (cli_code, cli_field) == (api_error["code"], api_error["field"]) == ("validation_error", name)
        assert cli_message == api_error["message"]
        _lo, hi = field_bounds(model.model_fields[name])
        if hi is not None:  # the bound is named in the message
            assert f"{hi:g}" in cli_message or str(hi) in cli_message


@pytest.mark.slow
@pytest.mark.parametrize(("name", "value", "valid"), _cases(LipSyncOptions, "lipsync"))
def test_lipsync_setting_same_in_cli_and_api(name, value, valid, cli_lipsync, server, assets):
    cli_result = cli_lipsync(_cli_args(name, value))
    body = {"video_url": assets.url("v.mp4"), "audio_url": assets.url("a.wav"), name: value}
    _check(name, value, valid, cli_result, _post(server, "/lipsync", body), LipSyncOptions)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "value", "valid"), _cases(TrackOptions, "tracking"))
def test_tracking_setting_same_in_cli_and_api(name, value, valid, cli_track, server, assets):
    cli_result = cli_track(_cli_args(name, value))
    body = {"video_url": assets.url("v.mp4"), name: value}
    _check(name, value, valid, cli_result, _post(server, "/face-tracking", body), TrackOptions)


def test_every_field_is_covered_by_the_generated_cases():
    # A setting the generators cannot make a case for fails here instead of being skipped quietly.
    for model, kind in ((LipSyncOptions, "lipsync"), (TrackOptions, "tracking")):
        names = {p.values[0] for p in _cases(model, kind)}
        offered = {n for n, _ in cli_fields(model)}
        assert names == offered
        for name, info in cli_fields(model):
            parse_options(model, {name: _valid_other(name, info)})
            outside = _just_outside(name, info)
            if outside is not None:
                with pytest.raises(OptionsInvalid):
                    parse_options(model, {name: outside})


# --- the brief's spelling, strict types, enhance=auto ---------------------------------------------------


def test_enhance_quality_maps_to_enhance_and_types_are_strict():
    assert parse_options(LipSyncOptions, {"enhance_quality": True}) == LipSyncOptions(enhance="on")
    assert parse_options(LipSyncOptions, {"enhance_quality": False}).enhance == "off"
    assert LipSyncOptions().enhance == "auto"
    for bad, field in (
        ({"enhance_quality": "yes"}, "enhance_quality"),
        ({"wav2lip_batch_size": "16"}, "wav2lip_batch_size"),
        ({"pads": [True, False, True, False]}, "pads"),
        ({"similarity_threshold": float("nan")}, "similarity_threshold"),
        ({"crf": 1.5}, "crf"),
    ):
        with pytest.raises(OptionsInvalid) as info:
            parse_options(LipSyncOptions, bad)
        assert info.value.field == field, bad
    with pytest.raises(OptionsInvalid, match="contradicts"):
        parse_options(LipSyncOptions, {"enhance": "on", "enhance_quality": False})


def test_auto_enhance_resolves_by_device(monkeypatch, caplog, tmp_path):
    import torch

    import lipsync.models.device
    from lipsync.config import Settings
    from lipsync.pipeline import LipSyncPipeline

    assert resolve_enhance("auto", "cuda") is True and resolve_enhance("auto", "cpu") is False
    assert resolve_enhance("on", "cpu") is True and resolve_enhance("off", "cuda") is False
    pipe = LipSyncPipeline(Settings(device="auto"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level("INFO", logger="lipsync.pipeline"):
        assert pipe.enhance_enabled(LipSyncOptions()) is False
    assert "enhance=auto" in caplog.text and "off on cpu" in caplog.text
    # A CUDA host, mocked: a device node and torch's answer.
    monkeypatch.setattr(lipsync.models.device, "_NVIDIA_NODES", (str(tmp_path),))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pipe.enhance_enabled(LipSyncOptions()) is True
    assert pipe.enhance_enabled(LipSyncOptions(enhance="off")) is False


def test_auto_enhance_does_not_load_gfpgan_on_cpu(tmp_path):
    from lipsync.config import Settings
    from lipsync.pipeline import LipSyncPipeline, LipSyncRequest
    from pipeline_fixtures import (
        ColorFaceBackend,
        FaceSpec,
        IdentityGenerator,
        moving_box,
        write_speechlike_wav,
        write_synthetic_video,
    )

    video = write_synthetic_video(tmp_path / "v.mp4", [FaceSpec("red", moving_box(40, 30, 60, 80))], seconds=0.4)
    audio = write_speechlike_wav(tmp_path / "a.wav", 0.4)
    pipe = LipSyncPipeline(Settings(device="cpu"), generator=IdentityGenerator(), face_backend=ColorFaceBackend())
    result = pipe(LipSyncRequest(video, audio, tmp_path / "o.mp4"))  # enhance=auto
    assert not pipe.enhancer_loaded and result.stats.enhanced == 0


# --- job records ----------------------------------------------------------------------------------------


OLD_RECORD = {  # what the code before the options model stored (flat fields beside the URLs)
    "video_url": "http://127.0.0.1:1/v.mp4", "audio_url": "http://127.0.0.1:1/a.wav", "upload_url": None,
    "characters": [], "similarity_threshold": 0.4, "enhance_quality": False, "loop_mode": "pingpong",
    "crossfade_frames": 12, "temporal_smoothing": 0.2, "pads": [0, 10, 0, 0], "wav2lip_batch_size": 8,
    "webhook_url": None,
}


def test_old_flat_record_is_read_into_the_model():
    options = options_from_record(OLD_RECORD)
    assert options == LipSyncOptions(similarity_threshold=0.4, enhance="off", loop_mode="pingpong",
                                      crossfade_frames=12, temporal_smoothing=0.2, pads=[0, 10, 0, 0],
                                      wav2lip_batch_size=8)
    tracking = options_from_record({"video_url": "x", "similarity_threshold": 0.6, "temporal_smoothing": 0.1},
                                   TrackOptions)
    assert (tracking.similarity_threshold, tracking.temporal_smoothing) == (0.6, 0.1)
    new = {"video_url": "x", "options": options.model_dump(mode="json")}
    assert options_from_record(new) == options
    with pytest.raises(OptionsInvalid) as info:  # a tampered record is re-validated, not trusted
        options_from_record({"options": {**options.model_dump(mode="json"), "crf": 99}})
    assert info.value.field == "crf"


@pytest.mark.slow
def test_old_record_in_an_existing_database_still_runs(tmp_path, assets):
    """A job queued by the previous version (flat params in jobs.sqlite3) runs after the upgrade."""
    from lipsync.jobs.store import JobStore

    work = tmp_path / "work"
    work.mkdir()
    store = JobStore(work / "jobs.sqlite3")
    params = {**OLD_RECORD, "video_url": assets.url("v.mp4"), "audio_url": assets.url("a.wav")}
    record = store.create("lipsync", params, webhook_url=None, max_queued=10)
    store.close()
    env = {"LIPSYNC_ALLOW_PRIVATE_URLS": "true"}
    with ApiServer(env=env, work_dir=work) as srv:
        final = srv.wait_final(record.id)
    assert final["status"] == "succeeded", final
    ran = LipSyncOptions.model_validate(final["result"]["stats"]["options"])
    assert ran == options_from_record(OLD_RECORD)


# --- the README ----------------------------------------------------------------------------------------


def test_readme_option_table_is_the_models():
    readme = (REPO / "README.md").read_text()
    begin, end = "<!-- options-table:begin -->", "<!-- options-table:end -->"
    assert begin in readme and end in readme, "README lacks the generated options table markers"
    table = readme.split(begin, 1)[1].split(end, 1)[0].strip()
    assert table == options_markdown().strip(), (
        "README's option table differs from lipsync.options; regenerate it with "
        "`python -m lipsync.options_doc --markdown` and paste it between the markers"
    )


def test_no_option_list_is_copied_elsewhere():
    """The settings live in the model only: no click option or schema Field declares one again."""
    sources = [p for p in (REPO / "src" / "lipsync").rglob("*.py") if p.name != "options.py"]
    for path in sources:
        text = path.read_text()
        for name in LipSyncOptions.model_fields:
            assert not re.search(rf"^\s+{name}: [^=]+= Field\(", text, re.M), f"{path}: {name} declared again"
            assert f'"{cli_flag(name)}"' not in text, f"{path}: {cli_flag(name)} declared by hand"


def test_help_texts_come_from_the_model():
    from click.testing import CliRunner

    from lipsync.cli import cli

    out = CliRunner().invoke(cli, ["run", "--help"], terminal_width=200).output
    flat = " ".join(out.split())
    for name, info in cli_fields(LipSyncOptions):
        assert cli_flag(name) in out
        first_words = " ".join(info.description.split()[:4])
        assert first_words in flat, (name, first_words)
    assert json.dumps(LipSyncOptions().model_dump(mode="json"))  # serialisable as stored


def test_character_id_rule_is_one_for_cli_and_api(tmp_path):
    import click

    from lipsync.api.schemas import CharacterIn
    from lipsync.cli._common import parse_character_specs
    from lipsync.types import is_character_id

    image = tmp_path / "ref.jpg"
    image.write_bytes(b"x")
    for good in ("speaker", "a", "Host_2.b-c", "x" * 64):
        assert is_character_id(good)
        parse_character_specs([f"{good}:Name:{image}"])
        CharacterIn(id=good, reference_image_url="https://e.com/r.jpg")
    for bad in ("speaker\n", "_x", "", "x" * 65, "a b", "ü"):
        assert not is_character_id(bad), repr(bad)
        if bad.strip() == bad:  # the CLI strips blanks around each part of ID:NAME:IMAGE first
            with pytest.raises(click.BadParameter):
                parse_character_specs([f"{bad}:Name:{image}"])
        with pytest.raises(ValueError):
            CharacterIn(id=bad, reference_image_url="https://e.com/r.jpg")


@pytest.mark.slow
@pytest.mark.parametrize(("change", "field"), [
    ({"enhance_quality": "yes"}, "enhance_quality"),
    ({"async": "true"}, "async"),
    ({"wav2lip_batch_size": "16"}, "wav2lip_batch_size"),
    ({"pads": [True, False, True, False]}, "pads"),
    ({"similarity_threshold": "0.5"}, "similarity_threshold"),
    ({"characters": [{"id": "speaker\n", "reference_image_url": "https://e.com/r.jpg"}]}, "characters[0].id"),
])
def test_api_types_are_strict(change, field, server, assets):
    """Issue #13 (7, 8): wrong types are refused with 422 naming the field, never coerced and run."""
    body = {"video_url": assets.url("v.mp4"), "audio_url": assets.url("a.wav"), **change}
    resp = _post(server, "/lipsync", body)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["code"] == "validation_error" and resp.json()["error"]["field"] == field
