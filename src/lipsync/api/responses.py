"""Response models of the HTTP API (what clients receive), apart from the request models so internals
never leak into them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ErrorBody(BaseModel):
    code: str = Field(..., examples=["validation_error"])
    message: str = Field(..., examples=["loop_mode: Input should be 'none', 'repeat', 'pingpong' or 'crossfade'"])
    field: str | None = Field(None, examples=["loop_mode"])


class ErrorOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"error": {"code": "unsafe_url", "field": "video_url",
                   "message": "video_url: 169.254.169.254 resolves to 169.254.169.254, a cloud metadata address; refused"}},
    ]})

    error: ErrorBody


class HealthOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "status": "degraded", "insightface_loaded": True, "wav2lip_loaded": True, "gfpgan_loaded": False,
        "gpu_available": True, "gpu_name": "NVIDIA RTX 4090", "gpu_memory_gb": 24.0, "queue_depth": 0,
        "running_jobs": 1, "models": "degraded",
        "model_states": {"insightface": "ready", "wav2lip": "ready", "gfpgan": "missing"},
        "models_error": "gfpgan: missing, model_not_available (lip-sync without enhancement and face tracking "
                        "still run)",
        "models_detail": None,
    }]})

    status: Literal["healthy", "loading", "degraded", "unhealthy"] = Field(
        ..., description="healthy; loading (a model is preloading); degraded (the optional GFPGAN enhancer is "
        "unavailable: jobs without enhancement run); unhealthy (face or Wav2Lip models unavailable).")
    insightface_loaded: bool
    wav2lip_loaded: bool
    gfpgan_loaded: bool
    gpu_available: bool
    gpu_name: str | None
    gpu_memory_gb: float | None
    queue_depth: int
    running_jobs: int
    models: Literal["idle", "loading", "ready", "degraded", "failed"] = Field(
        ..., description="Model loader state: idle (load on first use), loading, ready, degraded (only the "
        "enhancer unavailable), failed (a core model unavailable).")
    model_states: dict[Literal["insightface", "wav2lip", "gfpgan"],
                       Literal["idle", "loading", "ready", "missing", "failed"]] = Field(
        ..., description="Per model: idle (not loaded yet, lazy), loading, ready, missing (file absent and not "
        "obtainable), failed (present but unusable).")
    models_error: str | None = Field(
        None, description="The unavailable models with state and error code; never a server path.")
    models_detail: dict[str, dict[str, str]] | None = Field(
        None, description="Only for a request with the API key: each unavailable model's error code and full "
        "message (which may name server paths).")


class InfoOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "name": "lipsync", "version": "0.1.0",
        "endpoints": {"GET /health": "model loading status, GPU and queue", "POST /lipsync": "lip-sync"},
    }]})

    name: str
    version: str
    endpoints: dict[str, str]


class StageOut(BaseModel):
    done: int
    total: int
    fraction: float


class JobOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "3f2c9a0e5b9d4c7e8a1b2c3d4e5f6a7b", "kind": "lipsync", "status": "running", "stage": "generate",
        "progress": {"download": {"done": 3, "total": 3, "fraction": 1.0},
                     "generate": {"done": 40, "total": 125, "fraction": 0.32}},
        "result": None, "error": None, "attempts": 1,
        "created_at": "2026-01-09T12:00:00Z", "started_at": "2026-01-09T12:00:01Z", "finished_at": None,
    }]})

    id: str
    kind: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    stage: str | None = None
    progress: dict[str, StageOut] = Field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: ErrorBody | None = None
    attempts: int = 0
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None


class JobListOut(BaseModel):
    jobs: list[JobOut]
    next: str | None = Field(None, description="Pass as `before` for the next (older) page; null at the end.")


class JobAccepted(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "job_id": "3f2c9a0e5b9d4c7e8a1b2c3d4e5f6a7b", "status": "queued",
        "status_url": "/jobs/3f2c9a0e5b9d4c7e8a1b2c3d4e5f6a7b",
    }]})

    job_id: str
    status: str
    status_url: str


class LipSyncOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "job_id": "3f2c9a0e5b9d4c7e8a1b2c3d4e5f6a7b", "status": "succeeded",
        "output_url": "https://your-storage.com/presigned-upload-url", "download_url": None,
        "duration": 8.0, "stats": {"frames": 200, "wall_s": 12.5, "realtime_factor": 0.64},
    }]})

    job_id: str
    status: str
    output_url: str | None = Field(None, description="Where the MP4 was uploaded (query string removed).")
    download_url: str | None = Field(None, description="GET this for the MP4 when no upload_url was given.")
    duration: float
    stats: dict[str, Any] = Field(default_factory=dict)


class FaceTrackingOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "job_id": "3f2c9a0e5b9d4c7e8a1b2c3d4e5f6a7b", "status": "succeeded", "output_url": None,
        "download_url": "/jobs/3f2c9a0e5b9d4c7e8a1b2c3d4e5f6a7b/result", "duration": 4.0,
        "tracks": {"fps": 25.0, "num_frames": 100, "characters": [{"id": "speaker", "name": "Main Speaker",
                   "frames": [{"frame": 0, "box": [120.0, 80.0, 220.0, 190.0], "similarity": 0.71,
                               "interpolated": False}]}]},
    }]})

    job_id: str
    status: str
    output_url: str | None = None
    download_url: str | None = None
    duration: float
    tracks: dict[str, Any] = Field(default_factory=dict)
