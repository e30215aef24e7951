"""Request and response models of the HTTP API, separate from the internal types on purpose: the
brief's field names and defaults are a public contract, the internals may change."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lipsync.api.netguard import check_url_syntax
from lipsync.errors import UnsafeURL
from lipsync.options import LipSyncOptions, TrackOptions
from lipsync.request import check_audio_sources
from lipsync.types import CHARACTER_ID_RULE, is_character_id

EXAMPLE_CHARACTER = {
    "id": "speaker",
    "name": "Main Speaker",
    "reference_image_url": "https://example.com/face-reference.jpg",
}
EXAMPLE_LIPSYNC = {
    "video_url": "https://example.com/video.mp4",
    "audio_url": "https://example.com/audio.mp3",
    "upload_url": "https://your-storage.com/presigned-upload-url",
    "characters": [EXAMPLE_CHARACTER],
}


def _http_url(value: str) -> str:
    try:
        check_url_syntax(value)
    except UnsafeURL as exc:
        # pydantic turns ValueError into a 422 naming the field
        raise ValueError(exc.message.removeprefix("url: ")) from None
    return value


def _character_id(v: str) -> str:
    if not is_character_id(v):
        raise ValueError(f"must be {CHARACTER_ID_RULE}")
    return v


class _Strict(BaseModel):
    # Unknown fields are refused: a typo ("enhance_qualty") must not silently use a default. Strict types:
    # "16" is not a number, "true" is not a boolean.
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


class CharacterIn(_Strict):
    id: str = Field(..., description="Unique id of the character in this request.", examples=["speaker"])
    name: str = Field("", max_length=200, description="Display name.", examples=["Main Speaker"])
    reference_image_url: str = Field(
        ..., description="http(s) URL of a clear frontal photo of this person.",
        examples=["https://example.com/face-reference.jpg"],
    )
    audio_url: str | None = Field(
        None, description="http(s) URL of this character's own driving track (a dub's stem): their mouth "
        "follows it instead of audio_url. Given for every character, audio_url may be left out and the "
        "stems are mixed into the output's sound.",
        examples=["https://example.com/speaker-stem.wav"],
    )

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return _character_id(v)

    @field_validator("reference_image_url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _http_url(v)

    @field_validator("audio_url")
    @classmethod
    def _audio_url(cls, v: str | None) -> str | None:
        return v if v is None else _http_url(v)


def _unique_ids(chars: list[Any]) -> list[Any]:
    ids = [c.id for c in chars]
    if len(set(ids)) != len(ids):
        raise ValueError("character ids must be unique")
    return chars


class _JobFields(_Strict):
    """What every job request has besides its inputs and its settings: delivery and waiting."""

    upload_url: str | None = Field(
        None,
        description="Presigned URL the output MP4 is PUT to. Without it the result is kept for "
        "GET /jobs/{id}/result.",
    )
    webhook_url: str | None = Field(None, description="POSTed the job's final state, signed (async jobs).")
    async_: bool = Field(False, alias="async", description="Answer 202 with a job id instead of waiting.")

    @field_validator("upload_url", "webhook_url")
    @classmethod
    def _urls(cls, v: str | None) -> str | None:
        return v if v is None else _http_url(v)

    #: the settings model whose fields this request carries (lipsync.options)
    options_model: ClassVar[type[TrackOptions]] = TrackOptions

    def job_options(self) -> TrackOptions:
        """The request's settings as the options model (validated again, so it is canonical)."""
        return self.options_model.model_validate(
            {name: getattr(self, name) for name in self.options_model.model_fields}
        )

    def job_params(self, **replace: Any) -> dict[str, Any]:
        """The job record's params: the request fields, with the settings under ``options``."""
        settings = set(LipSyncOptions.model_fields)
        params = self.model_dump(mode="json", exclude={"async_", *settings})
        return {**params, **replace, "options": self.job_options().model_dump(mode="json")}


class _Characters(_Strict):
    characters: list[CharacterIn] = Field(
        default_factory=list, max_length=16,
        description="Characters to lip-sync or track; empty: the most prominent face (id 'face').",
    )

    @field_validator("characters")
    @classmethod
    def _chars(cls, v: list) -> list:
        return _unique_ids(v)


class _VideoURL(_Strict):
    video_url: str = Field(..., description="http(s) URL of the input video (or a still image).")

    @field_validator("video_url")
    @classmethod
    def _video_url(cls, v: str) -> str:
        return _http_url(v)


# Base order matters: pydantic lists inherited fields from the last base first, so the URLs come first
# in the schema, then the characters, then the settings (declared in lipsync.options), then delivery.
class FaceTrackingIn(_JobFields, TrackOptions, _Characters, _VideoURL):
    """POST /face-tracking: every tracking setting of POST /lipsync, declared once in lipsync.options."""

    model_config = ConfigDict(
        extra="forbid", strict=True, populate_by_name=True,
        json_schema_extra={"examples": [{
            "video_url": "https://example.com/video.mp4",
            "characters": [EXAMPLE_CHARACTER],
            "similarity_threshold": 0.5,
            "temporal_smoothing": 0.3,
        }]},
    )
    options_model: ClassVar[type[TrackOptions]] = TrackOptions


class _AudioURL(_Strict):
    audio_url: str | None = Field(
        None, description="http(s) URL of the speech to lip-sync to, and the output's sound (the final mix). "
        "Required unless every character has its own audio_url.",
    )

    @field_validator("audio_url")
    @classmethod
    def _audio_url(cls, v: str | None) -> str | None:
        return v if v is None else _http_url(v)


class LipSyncIn(_JobFields, LipSyncOptions, _Characters, _AudioURL, _VideoURL):
    """POST /lipsync and POST /jobs: the input URLs, the characters and every lip-sync setting."""

    model_config = ConfigDict(
        extra="forbid", strict=True, populate_by_name=True,
        json_schema_extra={"examples": [EXAMPLE_LIPSYNC, {**EXAMPLE_LIPSYNC, "async": True,
                                                           "webhook_url": "https://example.com/hook",
                                                           "enhance_quality": False, "loop_mode": "pingpong"}]},
    )
    options_model: ClassVar[type[TrackOptions]] = LipSyncOptions

    def job_params(self, **replace: Any) -> dict[str, Any]:
        # Checked here rather than in a model validator, whose errors pydantic cannot pin on a field.
        check_audio_sources(self.audio_url is not None,
                            [(c.id, c.audio_url is not None) for c in self.characters], field="audio_url")
        return super().job_params(**replace)


class UploadCharacterIn(_Strict):
    """A character of POST /lipsync/upload: its reference photo(s) are uploaded `references` parts,
    named here by their file names."""

    id: str = CharacterIn.model_fields["id"]
    name: str = CharacterIn.model_fields["name"]
    reference: str | list[str] = Field(
        ..., description="File name of an uploaded `references` part (or a list of them, several photos of "
        "the same person).", examples=["speaker.jpg"],
    )

    audio: str | None = Field(
        None, description="File name of an uploaded `character_audio` part: this character's own driving "
        "track (a dub's stem).", examples=["speaker-stem.wav"],
    )

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return _character_id(v)

    @field_validator("reference")
    @classmethod
    def _reference(cls, v: str | list[str]) -> str | list[str]:
        names = [v] if isinstance(v, str) else v
        if not names:
            raise ValueError("name at least one uploaded reference file")
        if len(names) > 8:
            raise ValueError("at most 8 reference files per character")
        if any(not n for n in names):
            raise ValueError("a reference file name cannot be empty")
        return v

    @property
    def references(self) -> list[str]:
        return [self.reference] if isinstance(self.reference, str) else list(self.reference)


EXAMPLE_UPLOAD_OPTIONS = {
    "characters": [{"id": "speaker", "name": "Main Speaker", "reference": "speaker.jpg"}],
    "enhance_quality": True,
    "loop_mode": "crossfade",
    "async": False,
}


class LipSyncUploadOptions(_JobFields, LipSyncOptions):
    """The `options` part of POST /lipsync/upload: the settings of POST /lipsync without the input URLs."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True,
                              json_schema_extra={"examples": [EXAMPLE_UPLOAD_OPTIONS]})
    options_model: ClassVar[type[TrackOptions]] = LipSyncOptions

    characters: list[UploadCharacterIn] = Field(
        default_factory=list, max_length=16,
        description="Characters to lip-sync, each naming its uploaded reference file(s); empty: the most "
        "prominent face.",
    )

    @field_validator("characters")
    @classmethod
    def _chars(cls, v: list) -> list:
        return _unique_ids(v)


class TrackingUploadOptions(_JobFields, TrackOptions):
    """The `options` part of POST /face-tracking/upload: the settings of POST /face-tracking without the
    video URL, the characters naming their uploaded reference file(s)."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    options_model: ClassVar[type[TrackOptions]] = TrackOptions

    characters: list[UploadCharacterIn] = LipSyncUploadOptions.model_fields["characters"]

    @field_validator("characters")
    @classmethod
    def _chars(cls, v: list) -> list:
        return _unique_ids(v)


# --- responses ------------------------------------------------------------------------------------


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
