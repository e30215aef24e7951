"""Typed settings. Built once by the CLI or the API app factory from the environment and passed down;
nothing below those layers reads environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lipsync.types import DeviceChoice, FaceBackendName, Wav2LipVariant


def _default_models_dir() -> Path:
    return Path.home() / ".cache" / "lipsync" / "models"


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "lipsync"


class Settings(BaseSettings):
    """Every setting, its environment variable, and its default. The README's table mirrors this class."""

    model_config = SettingsConfigDict(env_prefix="LIPSYNC_", extra="ignore", populate_by_name=True)

    # --- from the brief (unprefixed names kept for compatibility) -------------------------------------
    models_dir: Path = Field(
        default_factory=_default_models_dir,
        validation_alias=AliasChoices("MODELS_DIR", "LIPSYNC_MODELS_DIR"),
        description="Directory for model weights.",
    )
    preload_models: bool = Field(
        True,
        validation_alias=AliasChoices("PRELOAD_MODELS", "LIPSYNC_PRELOAD_MODELS"),
        description="Load models when the server starts (false: on first use).",
    )
    log_level: str = Field(
        "INFO", validation_alias=AliasChoices("LOG_LEVEL", "LIPSYNC_LOG_LEVEL"), description="Logging level."
    )

    # --- compute -------------------------------------------------------------------------------------
    device: DeviceChoice = Field("auto", description="auto (cuda if available), cpu or cuda.")
    fp16: bool = Field(True, description="Run the generators in float16 on CUDA.")
    batch_size: int | None = Field(None, ge=1, le=1024, description="Wav2Lip batch size (default per device).")
    cpu_generator: Literal["mnn", "onnxruntime", "torch"] = Field(
        "mnn", description="What runs Wav2Lip on a CPU: mnn (the BatchNorm-folded network's ONNX export "
        "converted once for MNN, whose Winograd convolutions take about 0.55x the CPU time a frame, in "
        "float32; falls back to onnxruntime, with a warning, when MNN is missing or cannot convert it), "
        "onnxruntime (the export, once per checkpoint file in <models_dir>/onnx; a run then needs no torch) "
        "or torch (folded, channels_last: onnxruntime's CPU time a frame, about 2 CPU seconds more start-up). "
        "See benchmarks/generator_backends.py.",
    )  # fmt: skip
    cpu_detector: Literal["mnn", "onnxruntime"] = Field(
        "mnn", description="What runs the InsightFace detector (SCRFD) on a CPU: mnn (the ONNX file converted "
        "once into <models_dir>/mnn and run in a worker process: 12 ms a 320 input against onnxruntime's "
        "21; falls back to onnxruntime, with a warning, when MNN is missing, cannot convert it or its worker "
        "fails) or onnxruntime.",
    )  # fmt: skip

    # --- models --------------------------------------------------------------------------------------
    offline: bool = Field(False, description="Never download; missing models raise a clear error.")
    wav2lip_model: Wav2LipVariant = Field("wav2lip_gan", description="Which Wav2Lip weights to use.")
    wav2lip_checkpoint: Path | None = Field(None, description="Use this Wav2Lip file instead of the catalog's.")
    syncnet_checkpoint: Path | None = Field(None, description="Use this SyncNet expert file.")
    gfpgan_checkpoint: Path | None = Field(None, description="Use this GFPGAN v1.4 file.")
    face_parsing_checkpoint: Path | None = Field(
        None, description="Use this BiSeNet face-parsing file (the occlusion mask) instead of the catalog's."
    )
    det_model: Path | None = Field(None, description="Use this SCRFD detector ONNX instead of buffalo_l's.")
    rec_model: Path | None = Field(None, description="Use this ArcFace ONNX instead of buffalo_l's.")
    det_size: int | None = Field(
        None, ge=160, le=1280, multiple_of=32,
        description="SCRFD input side in pixels for models with a dynamic input (det_10g). Default: per "
        "device, 320 on CPU (4x fewer pixels than 640; boxes within IoU 0.9 of 640's on the shared "
        "clips, benchmarks/detection.py), 640 on CUDA.",
    )  # fmt: skip
    face_backend: FaceBackendName = Field("insightface", description="insightface or dlib.")

    # --- media limits --------------------------------------------------------------------------------
    max_width: int = Field(4096, ge=16)
    max_height: int = Field(4096, ge=16)
    max_duration_s: float = Field(3 * 3600.0, gt=0)
    max_fps: float = Field(240.0, gt=0, description="Videos above this frame rate are refused (bad_frame_rate).")
    max_total_pixels: int = Field(
        4096 * 2160 * 30 * 10800, ge=1, description="Width x height x frames of one video (3 h of 4K30)."
    )

    # --- server --------------------------------------------------------------------------------------
    api_key: str | None = Field(None, description="When set, every endpoint but /health needs Bearer auth.")
    allow_private_urls: bool = Field(False, description="Allow loopback/private/link-local URLs (tests, LANs).")
    webhook_secret: str | None = Field(None, description="HMAC-SHA256 key for webhook signatures.")
    jobs_db: Path | None = Field(None, description="SQLite job database (default: <work_dir>/jobs.sqlite3).")
    work_dir: Path | None = Field(None, description="Scratch space for downloads and results.")
    max_download_bytes: int = Field(2 * 1024**3, ge=1, description="Per-input download limit.")
    download_connect_timeout_s: float = Field(10.0, gt=0)
    download_read_timeout_s: float = Field(30.0, gt=0)
    download_total_timeout_s: float = Field(600.0, gt=0)
    # --- tracking cache (tracks depend on the video and the tracking settings, not on the audio) ------
    track_cache: bool = Field(True, description="Reuse the face tracks of a video tracked before (same "
                              "content, tracking settings, characters and face backend).")
    track_cache_dir: Path | None = Field(
        None, description="Where cached tracks live (default: <work_dir>/track-cache, else ~/.cache/lipsync/"
        "track-cache)."
    )
    track_cache_max_mb: int = Field(512, ge=1, description="Cached tracks kept at most, in MB (least "
                                    "recently used go first).")
    track_cache_max_entries: int = Field(256, ge=1, description="Cached videos kept at most.")
    queue_size: int = Field(100, ge=1, description="Jobs that may wait; beyond that, 429.")
    workers: int | None = Field(None, ge=1, description="Worker count (default: one per GPU, one on CPU).")
    upload_total_timeout_s: float = Field(1800.0, gt=0, description="Total time for PUTting one result.")

    # --- retention (0 keeps for ever) -----------------------------------------------------------------
    result_retention_s: float = Field(24 * 3600.0, ge=0, description="Stored results are deleted this long "
                                      "after they were written.")
    job_retention_s: float = Field(7 * 24 * 3600.0, ge=0, description="Finished jobs' rows are deleted this "
                                   "long after they finished.")
    retention_sweep_s: float = Field(600.0, gt=0, description="How often the retention sweep runs.")

    # --- HTTP connections (lipsync serve) --------------------------------------------------------------
    http_max_connections: int = Field(512, ge=1, description="Open connections beyond which new requests "
                                      "get 503 (uvicorn limit_concurrency).")
    http_keep_alive_s: int = Field(5, ge=1, description="Idle keep-alive connections are closed after this.")
    http_header_timeout_s: float = Field(10.0, gt=0, description="The request line and headers must arrive "
                                         "within this; else the connection is closed.")
    http_body_timeout_s: float = Field(30.0, gt=0, description="A request body that stalls this long gets "
                                       "408; JSON bodies must arrive whole within it.")

    # --- scale-out: the distributed queue on Redis (unset: embedded SQLite + threads) ----------------
    redis_url: str | None = Field(None, description="redis://host:port/db: jobs go through Redis (Dramatiq).")
    redis_namespace: str = Field("lipsync", min_length=1, description="Prefix of every Redis key.")
    queue_name: str = Field("lipsync", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Dramatiq queue name.")
    heartbeat_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="A worker silent this long is dead; its job goes to another.")
    maintenance_chance: float = Field(
        0.1, gt=0, le=1, description="Share of broker calls that also requeue dead workers' messages.")
    worker_lost_after: int = Field(3, ge=1, le=100, description="Worker deaths before a job fails worker_lost.")
    worker_stop_grace_s: float = Field(
        30.0, ge=0, description="On SIGTERM a worker lets its job run this long, then requeues it.")
    run_workers: bool = Field(True, description="Redis mode: also run workers inside `lipsync serve`.")
    results_url: str | None = Field(
        None, description="Shared results store: s3://bucket/prefix or file:///dir (Redis mode).")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, moto, R2...).")
    job_ttl_s: float = Field(7 * 86400.0, gt=0, description="Redis mode: how long a finished job record stays.")

    @field_validator("log_level")
    @classmethod
    def _upper(cls, value: str) -> str:
        value = value.upper()
        if value not in {"CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"}:
            raise ValueError("must be one of CRITICAL, ERROR, WARNING, INFO, DEBUG")
        return value
