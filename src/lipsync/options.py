"""Every setting of a lip-sync or tracking job, declared once.

The API's request bodies inherit these models (so the brief's flat JSON names, defaults, ranges and
descriptions reach the OpenAPI schema from here), the CLI builds its options from them
(``lipsync.cli.options``), a job record stores them as JSON and the worker re-validates them, and the
pipeline reads them as they are. Adding a setting is one ``Field`` below plus the code that uses it.

Each field carries, in ``json_schema_extra``: ``group`` (how the README and ``--help`` group it) and
``kinds`` (the jobs that use it: ``lipsync``, ``tracking``). Values are checked strictly, the same way for
every caller: ``"16"`` is not a number and ``true`` is not a pad.

Torch-free on purpose: the API node, the CLI's argument parsing and the job store import it.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

from lipsync.errors import InputError
from lipsync.types import LoopMode, SilenceMode

log = logging.getLogger(__name__)

EnhanceChoice = Literal["auto", "on", "off"]
ENHANCE_CHOICES: tuple[str, ...] = get_args(EnhanceChoice)

# Kept beside lipsync.stages.composite.PoissonSolver (cv2 is not imported here).
PoissonSolver = Literal["dst", "opencv"]

DetectAngles = Literal["upright", "fallback"]
DETECT_ANGLES: tuple[str, ...] = get_args(DetectAngles)

X264Preset = Literal[
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow"
]
X264_PRESETS: tuple[str, ...] = get_args(X264Preset)

# Kept beside lipsync.media.encoders.EncoderChoice (which this torch- and av-free module cannot import).
EncoderName = Literal["auto", "libx264", "h264_nvenc"]

# Group names in the order the README and --help list them.
GROUPS: tuple[str, ...] = ("tracking", "generation", "silence", "compositing", "output")

LIPSYNC = "lipsync"
TRACKING = "tracking"

Pad = Annotated[int, Field(ge=0, le=512)]


def _meta(group: str, *kinds: str, **extra: Any) -> dict[str, Any]:
    return {"group": group, "kinds": list(kinds), **extra}


class _Options(BaseModel):
    # strict: JSON "16" for an int, "yes" for a bool or true for a pad are refused, not coerced.
    # extra=forbid: a typo must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


class TrackOptions(_Options):
    """Settings of face tracking: used by /face-tracking and `lipsync track`, and by every lip-sync job."""

    similarity_threshold: float = Field(
        0.5, ge=0.0, le=1.0, allow_inf_nan=False,
        description="Face matching threshold on the face backend's 0-1 similarity scale; lower accepts "
        "less similar faces.",
        json_schema_extra=_meta("tracking", LIPSYNC, TRACKING),
    )  # fmt: skip
    temporal_smoothing: float = Field(
        0.3, ge=0.0, le=1.0, allow_inf_nan=False,
        description="Box smoothing, 0 (off) to 1; zero-phase, so boxes do not lag.",
        json_schema_extra=_meta("tracking", LIPSYNC, TRACKING),
    )  # fmt: skip
    pads: list[Pad] = Field(
        [0, 20, 0, 0], min_length=4, max_length=4,
        description="Face box padding in pixels (top, bottom, left, right), each 0-512; the default "
        "reaches down to the chin.",
        json_schema_extra=_meta("tracking", LIPSYNC, TRACKING, cli_metavar="T B L R"),
    )  # fmt: skip
    sample_every: int | None = Field(
        None, ge=1, le=1000,
        description="Detect faces every N frames (and at shot changes); boxes are interpolated in between. "
        "Default: per face-analysis device, 10 on CPU (boxes within IoU 0.93 of every 5 on the shared "
        "clips), 5 on CUDA.",
        json_schema_extra=_meta("tracking", LIPSYNC, TRACKING, none_means="per device"),
    )  # fmt: skip
    detect_angles: DetectAngles = Field(
        "upright",
        description="upright: detect faces in the frame as it is; fallback: when a sampled frame has no "
        "confident face, also try it turned by 90, 180 and 270 degrees (up to 3 more detections on such "
        "frames; for phone videos filmed sideways or upside down).",
        json_schema_extra=_meta("tracking", LIPSYNC, TRACKING),
    )  # fmt: skip
    shot_change_threshold: float = Field(
        0.3, ge=0.01, le=1.0, allow_inf_nan=False,
        description="Histogram distance (0-1) above which a frame starts a new shot and is detected anew.",
        json_schema_extra=_meta("tracking", LIPSYNC, TRACKING, cli_aliases=["--shot-threshold"]),
    )  # fmt: skip

    @property
    def pads_tuple(self) -> tuple[int, int, int, int]:
        top, bottom, left, right = self.pads
        return (top, bottom, left, right)


class LipSyncOptions(TrackOptions):
    """Every setting of a lip-sync job: tracking, generation, compositing and output."""

    loop_mode: LoopMode = Field(
        "crossfade", description="How to extend a video shorter than the audio: none, repeat, pingpong "
        "or crossfade.",
        json_schema_extra=_meta("generation", LIPSYNC),
    )  # fmt: skip
    crossfade_frames: int = Field(
        10, ge=0, le=250, description="Frames blended at each loop boundary (crossfade mode).",
        json_schema_extra=_meta("generation", LIPSYNC),
    )  # fmt: skip
    wav2lip_batch_size: int | None = Field(
        None, ge=1, le=1024,
        description="Faces per Wav2Lip forward pass (default: LIPSYNC_BATCH_SIZE, else 128 on CUDA, 16 on "
        "CPU).",
        json_schema_extra=_meta("generation", LIPSYNC, cli_aliases=["--batch-size"], none_means="per device"),
    )  # fmt: skip
    silence: SilenceMode = Field(
        "closed",
        description="What a synced mouth does while its speaker's track is silent (voice activity by "
        "silero-vad): closed (the generator gets the mel of true silence, so the mouth rests), original "
        "(the source face is kept untouched) or generate (follow the track as it is, noise included). "
        "Transitions ramp over 3 frames.",
        json_schema_extra=_meta("silence", LIPSYNC),
    )  # fmt: skip
    vad_threshold: float = Field(
        0.5, ge=0.05, le=0.95, allow_inf_nan=False,
        description="Speech probability (0-1) above which a 32 ms chunk starts speech; speech ends below "
        "this minus 0.15. Lower finds quieter speech.",
        json_schema_extra=_meta("silence", LIPSYNC),
    )  # fmt: skip
    vad_min_speech_ms: int = Field(
        120, ge=0, le=5000,
        description="Speech shorter than this many milliseconds (a click, a cough) counts as silence.",
        json_schema_extra=_meta("silence", LIPSYNC),
    )  # fmt: skip
    vad_min_silence_ms: int = Field(
        300, ge=0, le=10000,
        description="Pauses shorter than this many milliseconds stay speech (the mouth does not close "
        "between words).",
        json_schema_extra=_meta("silence", LIPSYNC),
    )  # fmt: skip
    enhance: EnhanceChoice = Field(
        "auto",
        description="GFPGAN face enhancement: auto (on under CUDA, off on a CPU, where it costs seconds "
        "a face), on or off. The brief's enhance_quality true/false means on/off.",
        json_schema_extra=_meta("compositing", LIPSYNC, cli_flag_off="--no-enhance"),
    )  # fmt: skip
    poisson_blending: bool = Field(
        True, description="Blend the mouth in with Poisson (seamless) cloning; false: a feathered paste.",
        json_schema_extra=_meta("compositing", LIPSYNC),
    )  # fmt: skip
    poisson_solver: PoissonSolver = Field(
        "dst", description="How the Poisson blend is solved: dst (cv2.seamlessClone's equations solved "
        "with scipy's sine transforms over all three channels at once; within 1 grey level of seamlessClone "
        "and 4-6x faster) or opencv (cv2.seamlessClone itself).",
        json_schema_extra=_meta("compositing", LIPSYNC),
    )  # fmt: skip
    occlusion_mask: EnhanceChoice = Field(
        "auto",
        description="Keep the mouth off whatever covers the face (a hand, a microphone) with the BiSeNet "
        "face-parsing model: auto (on under CUDA when its weights are in the models folder; off on a CPU, "
        "where it costs about a second a face), on (fetched if missing) or off.",
        json_schema_extra=_meta("compositing", LIPSYNC),
    )  # fmt: skip
    mask_shrink: float = Field(
        0.0, ge=0.0, le=0.5, allow_inf_nan=False,
        description="Shrink the pasted lower-face ellipse by this fraction (0-0.5), its top kept, so the "
        "generated patch stays off the jaw line.",
        json_schema_extra=_meta("compositing", LIPSYNC),
    )  # fmt: skip
    crf: int | None = Field(
        None, ge=0, le=51, description="x264 constant rate factor: 0 lossless, 18 visually lossless, 51 "
        "worst (NVENC: its constant quality). Default: per device, 18 on CPU and CUDA.",
        json_schema_extra=_meta("output", LIPSYNC, none_means="per device"),
    )  # fmt: skip
    preset: X264Preset | None = Field(
        None, description="x264 speed/size preset (ultrafast ... veryslow; NVENC: mapped onto p1-p7). "
        "Default: per device, veryfast with a lighter motion search (me=dia, subme=1, intra partitions) on "
        "CPU and CUDA: 0.55x plain veryfast's CPU for a 7% larger file at crf 18. A preset given is x264's "
        "own.",
        json_schema_extra=_meta("output", LIPSYNC, none_means="per device"),
    )  # fmt: skip
    encoder: EncoderName = Field(
        "libx264", description="H.264 encoder: libx264, h264_nvenc (NVIDIA's hardware encoder; falls back "
        "to libx264 with a log line where the GPU has none, e.g. H100/H200) or auto (NVENC when the job "
        "runs on a CUDA GPU that has it).",
        json_schema_extra=_meta("output", LIPSYNC),
    )  # fmt: skip

    enhance_quality: bool | None = Field(
        None, exclude=True,
        description="The brief's spelling of enhance: true means on, false off (not both).",
        json_schema_extra=_meta("compositing", LIPSYNC, cli=False, alias_of="enhance"),
    )  # fmt: skip

    @model_validator(mode="after")
    def _brief_enhance_quality(self) -> LipSyncOptions:
        if self.enhance_quality is None:
            return self
        mapped = "on" if self.enhance_quality else "off"
        if "enhance" in self.model_fields_set and self.enhance != mapped:
            raise ValueError(
                f"enhance_quality={str(self.enhance_quality).lower()} contradicts enhance={self.enhance!r}; "
                "give one of them"
            )
        # Canonical form: one spelling, so equal settings compare (and are stored) equal.
        object.__setattr__(self, "enhance", mapped)
        object.__setattr__(self, "enhance_quality", None)
        return self


# --- helpers for every caller ---------------------------------------------------------------------------


def option_fields(model: type[_Options] = LipSyncOptions) -> dict[str, FieldInfo]:
    return dict(model.model_fields)


def field_meta(info: FieldInfo) -> dict[str, Any]:
    extra = info.json_schema_extra
    return dict(extra) if isinstance(extra, dict) else {}


def field_bounds(info: FieldInfo) -> tuple[float | None, float | None]:
    """(ge, le) of a field, or of a list field's items."""
    lo = hi = None
    metadata = list(info.metadata)
    args = get_args(info.annotation)
    if args and get_args(args[0]):  # list[Annotated[int, Field(...)]]
        metadata += list(getattr(args[0], "__metadata__", ()))
    for item in metadata:
        for m in getattr(item, "metadata", [item]):
            lo = getattr(m, "ge", lo) if getattr(m, "ge", None) is not None else lo
            hi = getattr(m, "le", hi) if getattr(m, "le", None) is not None else hi
    return lo, hi


def field_choices(info: FieldInfo) -> tuple[str, ...] | None:
    annotation = info.annotation
    if getattr(annotation, "__origin__", None) is Literal:
        return get_args(annotation)
    # Optional choices (X264Preset | None): the choices of the Literal inside.
    for arg in get_args(annotation):
        if getattr(arg, "__origin__", None) is Literal:
            return get_args(arg)
    return None


class OptionsInvalid(InputError):
    """A job setting is out of range or of the wrong type: the same code in the API and the CLI."""

    code = "validation_error"


def describe_validation_error(exc: ValidationError, prefix: tuple[Any, ...] = ()) -> tuple[str | None, str]:
    """(field, message) for the first problem of a pydantic error, in the API's style: ``pads[1]: Input
    should be less than or equal to 512``. Used by the API's 422 handler and by the CLI."""
    return describe_errors(exc.errors(), prefix)


def describe_errors(errors: list[dict[str, Any]], prefix: tuple[Any, ...] = ()) -> tuple[str | None, str]:
    first = errors[0] if errors else {}
    loc = (*prefix, *tuple(first.get("loc", ())))
    where = loc_to_field(loc)
    message = _message(first, where)
    field = where
    # An item of a settings list (pads[1]) is reported as the setting; the message keeps the index.
    for i, part in enumerate(loc[:-1]):
        if part in LipSyncOptions.model_fields and isinstance(loc[i + 1], int):
            field = loc_to_field(loc[: i + 1])
            break
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return field, message


def loc_to_field(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    if not parts:
        return None
    out = parts[0]
    for p in parts[1:]:
        out += f"[{p}]" if p.isdigit() else f".{p}"
    return out


def _message(err: dict[str, Any], field: str | None) -> str:
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    kind = err.get("type")
    if kind == "missing":
        msg = "field required"
    elif kind == "extra_forbidden":
        msg = "unknown field (check the spelling against /docs)"
    elif kind == "json_invalid":
        msg = "the body is not valid JSON: " + str(err.get("ctx", {}).get("error", ""))
    elif field and isinstance(err.get("input"), str | int | float | bool):
        # Say what was given: the value may come from far away (a stored job, a shell variable).
        given = repr(err["input"])
        msg += f" (got {given if len(given) <= 60 else given[:57] + '...'})"
    return f"{field}: {msg}" if field else msg


def parse_options(model: type[_Options], data: dict[str, Any]) -> Any:
    """Validate ``data`` into ``model``; a bad value raises OptionsInvalid naming the field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        field, message = describe_validation_error(exc)
        raise OptionsInvalid(message, field=field) from None


def options_from_record(params: dict[str, Any], model: type[_Options] = LipSyncOptions) -> Any:
    """The options of a stored job. Records of this version keep them under ``options``; records written
    before the options model kept the brief's fields flat among the URLs: those are picked out by name."""
    if "options" in params:
        return parse_options(model, params["options"])
    accepted = set(model.model_fields) | ({"enhance_quality"} if issubclass(model, LipSyncOptions) else set())
    legacy = {k: v for k, v in params.items() if k in accepted}
    return parse_options(model, legacy)


#: sample_every when a job leaves it unset, by the device the face detector runs on. Unknown backends
#: (test doubles, plug-ins) get the dense value, today's behaviour.
SAMPLE_EVERY_BY_DEVICE: dict[str, int] = {"cpu": 10, "cuda": 5}


def resolve_sample_every(value: int | None, device_type: str | None) -> int:
    """A job's ``sample_every``, or the default for the face backend's device (``cpu``/``cuda``/None)."""
    if value is not None:
        return int(value)
    return SAMPLE_EVERY_BY_DEVICE.get(device_type or "", SAMPLE_EVERY_BY_DEVICE["cuda"])


def resolve_enhance(choice: EnhanceChoice, device_type: str) -> bool:
    """``auto`` is on under CUDA and off on a CPU (GFPGAN costs seconds a face there)."""
    if choice != "auto":
        return choice == "on"
    return device_type == "cuda"


def resolve_occlusion(choice: EnhanceChoice, weights_present: bool, device_type: str) -> bool:
    """``auto`` is on when the face-parsing weights are present and the device is CUDA (on a CPU the
    parser costs about a second a face); ``on`` always (the weights are fetched), ``off`` never."""
    if choice != "auto":
        return choice == "on"
    return weights_present and device_type == "cuda"
