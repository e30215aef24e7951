"""ModelGate over the real PipelineEngine: each model loads (or fails) on its own, offline, with a seeded
random Wav2Lip checkpoint in the public file format and no other model file present."""

from __future__ import annotations

from pathlib import Path

import pytest

from lipsync.config import Settings
from lipsync.errors import ModelNotAvailable
from lipsync.jobs.engine import PipelineEngine
from lipsync.jobs.gate import ModelGate, models_needed
from pipeline_fixtures import write_random_wav2lip


@pytest.fixture
def engine(tmp_path: Path) -> PipelineEngine:
    checkpoint = write_random_wav2lip(tmp_path / "own_wav2lip.pth")
    settings = Settings(models_dir=tmp_path / "models", offline=True, device="cpu",
                        wav2lip_checkpoint=checkpoint, face_backend="insightface")  # fmt: skip
    return PipelineEngine(settings, devices=["cpu"])


def test_models_needed_per_job() -> None:
    assert models_needed("face_tracking") == ("insightface",)
    assert models_needed("lipsync", enhance=False) == ("insightface", "wav2lip")
    assert models_needed("lipsync", enhance=True) == ("insightface", "wav2lip", "gfpgan")


def test_each_model_is_gated_on_its_own(engine: PipelineEngine, tmp_path: Path) -> None:
    gate = ModelGate(engine, preload=False)
    gate.require(["wav2lip"])  # loads the user's checkpoint, although the other two files are absent
    assert engine.models_loaded() == {"insightface": False, "wav2lip": True, "gfpgan": False}
    assert gate.states == {"insightface": "idle", "wav2lip": "ready", "gfpgan": "idle"}

    with pytest.raises(ModelNotAvailable) as info:
        gate.require(models_needed("lipsync", enhance=False))
    assert "insightface" in info.value.message and str(tmp_path) not in info.value.message
    with pytest.raises(ModelNotAvailable) as info:
        gate.require(["gfpgan"])
    err = info.value
    assert err.field == "enhance_quality" and '"enhance_quality": false' in err.message
    assert str(tmp_path) not in err.message
    assert gate.states == {"insightface": "missing", "wav2lip": "ready", "gfpgan": "missing"}
    assert gate.state == "failed"  # a core model is missing
    # The operator's view keeps the store's full message: the file and where it goes.
    assert str(tmp_path / "models" / "GFPGANv1.4.pth") in gate.details()["gfpgan"]["message"]
    assert "gfpgan: missing, model_not_available" in (gate.summary() or "")
    assert str(tmp_path) not in (gate.summary() or "")


def test_preload_failures_stick_and_refuse_at_submission(engine: PipelineEngine) -> None:
    gate = ModelGate(engine, preload=True)
    gate.start()
    assert gate._thread is not None
    gate._thread.join(60)
    assert gate.states == {"insightface": "missing", "wav2lip": "ready", "gfpgan": "missing"}
    with pytest.raises(ModelNotAvailable):
        gate.check_accepting(["insightface"])
    gate.check_accepting(["wav2lip"])  # what is loaded is accepted
    with pytest.raises(ModelNotAvailable):  # sticky: no second load attempt before a restart
        gate.require(["gfpgan"])
