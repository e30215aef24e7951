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
    cpu_generator: Literal["torch", "onnxruntime"] = Field(
        "torch", description="What runs Wav2Lip on a CPU: torch (BatchNorm folded, channels_last) or "
        "onnxruntime (the folded network exported once per checkpoint to <models_dir>/onnx). They measured "
        "a tie in CPU time (benchmarks/generator_backends.py).",
    )  # fmt: skip

    # --- models --------------------------------------------------------------------------------------
    offline: bool = Field(False, description="Never download; missing models raise a clear error.")
    wav2lip_model: Wav2LipVariant = Field("wav2lip_gan", description="Which Wav2Lip weights to use.")
    wav2lip_checkpoint: Path | None = Field(None, description="Use this Wav2Lip file instead of the catalog's.")
    syncnet_checkpoint: Path | None = Field(None, description="Use this SyncNet expert file.")
    gfpgan_checkpoint: Path | None = Field(None, description="Use this GFPGAN v1.4 file.")
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
    queue_size: int = Field(100, ge=1, description="Jobs that may wait; beyond that, 429.")
    workers: int | None = Field(None, ge=1, description="Worker count (default: one per GPU, one on CPU).")

    @field_validator("log_level")
    @classmethod
    def _upper(cls, value: str) -> str:
        value = value.upper()
        if value not in {"CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"}:
            raise ValueError("must be one of CRITICAL, ERROR, WARNING, INFO, DEBUG")
        return value
