"""Request and response models of the HTTP API, separate from the internal types on purpose: the
brief's field names and defaults are a public contract, the internals may change."""

from __future__ import annotations

from typing import Any, ClassVar

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


# The response models live in lipsync.api.responses; imported here so callers have one place to import from.
from lipsync.api.responses import (  # noqa: E402
    ErrorBody,
    ErrorOut,
    FaceTrackingOut,
    HealthOut,
    InfoOut,
    JobAccepted,
    JobListOut,
    JobOut,
    LipSyncOut,
    StageOut,
)

__all__ = [
    "CharacterIn", "ErrorBody", "ErrorOut", "FaceTrackingIn", "FaceTrackingOut", "HealthOut", "InfoOut",
    "JobAccepted", "JobListOut", "JobOut", "LipSyncIn", "LipSyncOut", "LipSyncUploadOptions", "StageOut",
    "TrackingUploadOptions", "UploadCharacterIn",
]
