"""One exception tree for the whole package.

Every error a user can cause carries a stable ``code`` (used by the API's error JSON), an HTTP status,
an optional ``field`` naming the offending input, and a message that says what was wrong and what to do.
"""

from __future__ import annotations


class LipSyncError(Exception):
    """Base of every error raised on purpose by lipsync."""

    code: str = "internal_error"
    http_status: int = 500

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def named(self, field: str) -> LipSyncError:
        """Name ``field`` as the culprit unless a more precise one is already set; returns self."""
        if self.field is None:
            self.field = field
        return self

    def to_dict(self) -> dict[str, str]:
        out = {"code": self.code, "message": self.message}
        if self.field:
            out["field"] = self.field
        return out


# --- user input -----------------------------------------------------------------------------------


class InputError(LipSyncError):
    """The request or its files are wrong; the user can fix it."""

    code = "invalid_input"
    http_status = 422


class MissingAudio(InputError):
    """No main audio while some character has no track of its own: a required field left out."""

    code = "validation_error"


# --- media ----------------------------------------------------------------------------------------


class MediaError(InputError):
    code = "media_error"
    http_status = 422


class MediaNotFound(MediaError):
    code = "media_not_found"
    http_status = 400


class NotAMediaFile(MediaError):
    code = "not_media"


class NoVideoStream(MediaError):
    code = "no_video_stream"


class NoAudioStream(MediaError):
    code = "no_audio_stream"


class EmptyAudio(MediaError):
    code = "empty_audio"


class CorruptMedia(MediaError):
    code = "corrupt_media"


class MediaTooLarge(MediaError):
    code = "media_too_large"
    http_status = 413


class BadFrameRate(MediaError):
    """A video's frame rate is outside what lipsync decodes (above LIPSYNC_MAX_FPS)."""

    code = "bad_frame_rate"


class EncodeError(LipSyncError):
    code = "encode_failed"


# --- models ---------------------------------------------------------------------------------------


class ModelError(LipSyncError):
    code = "model_error"
    http_status = 503


class UnknownModel(ModelError):
    code = "unknown_model"
    http_status = 422


class ModelNotAvailable(ModelError):
    """A model file is missing and cannot be downloaded (offline, or the network is unreachable)."""

    code = "model_not_available"


class ModelDownloadError(ModelError):
    code = "model_download_failed"


class ChecksumMismatch(ModelDownloadError):
    code = "checksum_mismatch"

    def __init__(
        self, message: str, *, expected: str | None = None, actual: str | None = None, field: str | None = None
    ) -> None:
        super().__init__(message, field=field)
        self.expected = expected
        self.actual = actual


class DeviceUnavailable(ModelError):
    """The requested compute device (e.g. cuda) is not present on this machine."""

    code = "device_unavailable"


class CheckpointError(ModelError):
    """A checkpoint file could not be read, or is unsafe to read."""

    code = "bad_checkpoint"


class UnsafeCheckpoint(CheckpointError):
    code = "unsafe_checkpoint"


class CheckpointLayoutError(CheckpointError):
    """Keys or shapes do not match the network; the message names them."""

    code = "checkpoint_layout"


# --- faces ----------------------------------------------------------------------------------------


class FaceError(InputError):
    code = "face_error"


class NoFaceFound(FaceError):
    code = "no_face_found"


class ReferenceFaceNotFound(FaceError):
    code = "reference_no_face"


# --- remote inputs and outputs --------------------------------------------------------------------


class FetchError(InputError):
    code = "fetch_failed"
    http_status = 400


class UnsafeURL(FetchError):
    code = "unsafe_url"
    http_status = 422


class DownloadTooLarge(FetchError):
    code = "download_too_large"
    http_status = 413


class FetchTimeout(FetchError):
    code = "fetch_timeout"
    http_status = 400


class UploadError(LipSyncError):
    code = "upload_failed"
    http_status = 502


class UploadTimeout(UploadError):
    """The upload did not finish within LIPSYNC_UPLOAD_TOTAL_TIMEOUT_S (a target reading or answering too
    slowly)."""

    code = "upload_timeout"
    http_status = 504


class UploadRejected(UploadError):
    """The upload URL answered 4xx (an expired or wrongly signed presigned URL): the caller must fix it."""

    code = "upload_rejected"
    http_status = 400


# --- jobs -----------------------------------------------------------------------------------------


class JobError(LipSyncError):
    code = "job_error"


class JobNotFound(JobError):
    code = "job_not_found"
    http_status = 404


class QueueFull(JobError):
    code = "queue_full"
    http_status = 429


class JobCancelled(JobError):
    code = "cancelled"
    http_status = 409


class UploadLost(JobError):
    """A queued job's uploaded input files are gone (the server restarted before it ran: scratch space
    does not survive a restart); the client has to upload them again."""

    code = "upload_lost"
    http_status = 410


class NotReady(LipSyncError):
    code = "not_ready"
    http_status = 503


# --- the distributed queue (LIPSYNC_REDIS_URL) ----------------------------------------------------------


class WorkerLost(JobError):
    """The job's worker died (SIGKILL, out of memory, a crashed driver) as many times as allowed
    (LIPSYNC_WORKER_LOST_AFTER); the job is not tried again."""

    code = "worker_lost"
    http_status = 500


class QueueUnavailable(JobError):
    """The Redis queue could not be reached; nothing was queued."""

    code = "queue_unavailable"
    http_status = 503


class NoResultsStore(InputError):
    """A job without ``upload_url`` on a cluster that has no shared results store to keep it in."""

    code = "no_results_store"
    http_status = 422


class ResultsStoreError(LipSyncError):
    """The shared results store (LIPSYNC_RESULTS_URL) refused or failed a read or write."""

    code = "results_store_failed"
    http_status = 502
