"""Which H.264 encoder a job uses, and with which settings: resolved once per job by ``resolve_encoder``.

``crf`` and ``preset`` left unset (None) mean "the default for this device", measured with
encode-only runs of the 850x480 Chaplin clip (210 frames; 2-core CPU; libx264 with frame threads; fps of
CPU time, so other processes on the shared machine do not skew it; ``benchmarks/throughput.py`` repeats
the encode-only row per clip, benchmarks/media.py the medium/veryfast/ultrafast rows per resolution):

=========  ===========  =====================  =========
preset     CPU fps      file at crf 18         vs medium
=========  ===========  =====================  =========
ultrafast  259          1905 kB                4.2x
superfast  207          1051 kB                3.3x
veryfast   153          451 kB                 2.5x
faster     99           511 kB                 1.6x
medium     62           499 kB                 1.0x
=========  ===========  =====================  =========

``veryfast`` costs 2.5x less CPU than x264's ``medium`` for a file no larger at the same crf (its
``medium`` spends the time on psycho-visual tuning that crf 18 does not need). crf 18 (visually lossless)
stays: the output is a master, not a streaming rendition.

The default (``preset`` left unset) is ``veryfast`` with a lighter motion search, LIGHT_MOTION: diamond
search, sub-pixel refinement level 1 and intra partitions only (``superfast``'s analysis, but keeping
``veryfast``'s macroblock tree and 10-frame look-ahead, which is what halves ``superfast``'s file).
Measured on Chaplin (210 frames, CPU time of encoding decoded frames, 3 rounds, best):

===========================  ========  =========  ==========
crf 18                       CPU       file       PSNR (Y+UV)
===========================  ========  =========  ==========
veryfast                     0.97 s    438 kB     49.21 dB
veryfast + LIGHT_MOTION      0.54 s    467 kB     48.81 dB
superfast                    0.64 s    936 kB     50.57 dB
===========================  ========  =========  ==========

So 0.55x the CPU for a file 7 % larger at the same crf (at equal PSNR about 19 % larger: crf 17 gives
49.32 dB in 553 kB), on both kinds of device: on a CPU the encoder shares the two cores with Wav2Lip
(a Chaplin render: 32.4 instead of 31.3 fps), and on a GPU server libx264 is what limits the whole run.
A ``preset`` given explicitly is x264's own, unchanged (``veryfast`` gives the plain veryfast file).

``h264_nvenc`` is used when asked for (``encoder=h264_nvenc``, or ``auto`` on a CUDA device) and an
NVENC-capable GPU answers; otherwise libx264, with a log line. H100/H200 have no NVENC engine.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Literal

log = logging.getLogger(__name__)

EncoderChoice = Literal["auto", "libx264", "h264_nvenc"]

#: (preset, crf) per device type when the job leaves them unset.
DEVICE_DEFAULTS: dict[str, tuple[str, int]] = {"cpu": ("veryfast", 18), "cuda": ("veryfast", 18)}
#: x264 options added to the device's default preset (never to a preset the job names): see above.
LIGHT_MOTION = "me=dia:subme=1:partitions=i8x8,i4x4"

# x264 preset names -> NVENC's p1 (fastest) .. p7 (best), by their place on the speed/quality scale.
_NVENC_PRESETS = {
    "ultrafast": "p1", "superfast": "p1", "veryfast": "p2", "faster": "p3", "fast": "p4",
    "medium": "p5", "slow": "p6", "slower": "p7", "veryslow": "p7",
}  # fmt: skip


@dataclass(frozen=True)
class EncoderSettings:
    """The resolved choice: the FFmpeg encoder name, its crf (NVENC: constant quality ``cq``), its
    x264-style preset name and x264 options on top of the preset (libx264 only)."""

    codec: Literal["libx264", "h264_nvenc"] = "libx264"
    crf: int = 18
    preset: str = "veryfast"
    x264_params: str = ""

    def stream_options(self) -> dict[str, str]:
        """FFmpeg private options for the stream."""
        if self.codec == "h264_nvenc":
            # cq 0 means "let the driver pick" to NVENC, not lossless: the nearest real value is 1.
            cq = max(1, self.crf)
            preset = _NVENC_PRESETS.get(self.preset, "p4")
            return {"preset": preset, "tune": "hq", "rc": "vbr", "cq": str(cq), "b": "0"}
        options = {"crf": str(self.crf), "preset": self.preset}
        if self.x264_params:
            options["x264-params"] = self.x264_params
        return options


def device_defaults(device_type: str) -> tuple[str, int]:
    return DEVICE_DEFAULTS.get(device_type, DEVICE_DEFAULTS["cpu"])


def resolve_encoder(
    choice: EncoderChoice = "libx264",
    crf: int | None = None,
    preset: str | None = None,
    device_type: str = "cpu",
) -> EncoderSettings:
    """The one place a job's encoder, crf and preset are decided (None = the device's default; the
    default preset comes with LIGHT_MOTION).
    ``device_type``: ``cpu``, ``cuda`` or a device string such as ``cuda:1``; anything else counts as cpu."""
    device_type = "cuda" if str(device_type).startswith("cuda") else "cpu"
    default_preset, default_crf = device_defaults(device_type)
    crf = default_crf if crf is None else int(crf)
    x264_params = "" if preset else LIGHT_MOTION
    preset = preset or default_preset
    codec: Literal["libx264", "h264_nvenc"] = "libx264"
    if choice == "h264_nvenc" or (choice == "auto" and device_type == "cuda"):
        if nvenc_available():
            codec = "h264_nvenc"
        elif choice == "h264_nvenc":
            log.warning("encoder=h264_nvenc: this machine has no usable NVENC encoder; using libx264 instead")
        else:
            log.info("encoder=auto: no NVENC on this GPU; using libx264")
    settings = EncoderSettings(codec, crf, preset, x264_params if codec == "libx264" else "")
    log.info("encoder %s, crf %d, preset %s%s", settings.codec, settings.crf, settings.preset,
             f" + {settings.x264_params}" if settings.x264_params else "")  # fmt: skip
    return settings


@lru_cache(maxsize=1)
def nvenc_available() -> bool:
    """Whether an ``h264_nvenc`` encoder can actually be opened here: FFmpeg may be built with NVENC
    while the GPU has no NVENC engine (H100/H200) or there is no driver at all, so it is tried, once."""
    import av

    if "h264_nvenc" not in av.codecs_available:
        return False
    try:
        ctx = av.CodecContext.create("h264_nvenc", "w")
        ctx.width, ctx.height, ctx.pix_fmt = 256, 256, "yuv420p"
        ctx.time_base = Fraction(1, 25)
        ctx.open()
    except Exception as exc:  # FFmpeg's errors for a missing driver/engine vary by version
        log.debug("h264_nvenc cannot be opened: %s", exc)
        return False
    return True
