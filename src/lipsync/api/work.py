"""The work function the job runner runs: download the inputs, run the engine, deliver the output.

Everything a job touches lives in its private scratch folder (the runner deletes it afterwards, whatever
happened); only a result kept for GET /jobs/{id}/result is moved out, into the results folder.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from lipsync.api.fetch import Fetcher
from lipsync.api.netguard import redact
from lipsync.api.upload import Uploader
from lipsync.config import Settings
from lipsync.errors import InputError, LipSyncError, UploadLost
from lipsync.jobs.engine import Engine, device_type_for
from lipsync.jobs.gate import ModelGate, models_needed
from lipsync.jobs.models import JobRecord
from lipsync.jobs.results import DirResults, ResultStore
from lipsync.jobs.runner import JobContext
from lipsync.options import LipSyncOptions, TrackOptions, options_from_record, resolve_enhance
from lipsync.request import LipSyncRequest, TrackingRequest
from lipsync.types import Character

log = logging.getLogger(__name__)

# Internal field names (pipeline, media) -> the API's request field names.
_FIELD_NAMES = {"video": "video_url", "audio": "audio_url", "output": "upload_url"}


# Downloaded inputs are saved as video.<ext>, audio.<ext>, ref<i>.<ext>, voice<i>.<ext> (see
# JobWork._download).
_SCRATCH_NAME = re.compile(r"'?\b(video|audio|ref(\d+)|voice(\d+))\.[a-z0-9]{2,4}\b'?")
# The pipeline names a character's stem characters[i].audio.
_STEM_FIELD = re.compile(r"characters\[(\d+)\]\.audio")


# The same for jobs whose inputs were uploaded (POST /lipsync/upload): its parts are named video, audio
# and references.
_UPLOAD_FIELD_NAMES = {**_FIELD_NAMES, "video": "video", "audio": "audio"}

# params["inputs"] of a job whose files were received with the request and wait in its scratch folder.
LOCAL_INPUTS = "local"


def _scratch_field(match: re.Match) -> str:
    if match.group(2) is not None:
        return f"characters[{match.group(2)}].reference_image_url"
    if match.group(3) is not None:
        return f"characters[{match.group(3)}].audio_url"
    return f"{match.group(1)}_url"


def _for_api(exc: LipSyncError, workdir: Path, uploads: dict[str, dict[str, str]] | None = None) -> LipSyncError:
    """Speak the API's language: request field names instead of internal ones, and the input's field
    instead of a server path ("no face in reference image ref0.jpg" -> "... characters[0].reference_image_url").
    ``uploads`` (scratch name -> {field, filename}) describes an upload job's files: they are named by
    the part and the client's file name instead."""
    names = _FIELD_NAMES if uploads is None else _UPLOAD_FIELD_NAMES
    if exc.field in names:
        exc.field = names[exc.field]
    elif exc.field and _STEM_FIELD.fullmatch(exc.field):
        exc.field = f"{exc.field}_url" if uploads is None else "character_audio"
    message = exc.message.replace(f"{workdir}{os.sep}", "").replace(str(workdir), "")
    named: set[str] = set()

    def describe(m: re.Match) -> str:
        if uploads is None:
            field = _scratch_field(m)
            named.add(field)
            return f"the file from {field}"
        upload = uploads.get(m.group(0).strip("'"))
        if upload is None:
            return m.group(0)
        named.add(upload["field"])
        return f"the uploaded {upload['field']} file {upload['filename']!r}"

    message = _SCRATCH_NAME.sub(describe, message)
    if len(named) == 1 and exc.field in (None, "characters"):
        exc.field = named.pop()
    exc.message = message
    return exc


class JobWork:
    def __init__(self, settings: Settings, engine: Engine, gate: ModelGate, fetcher: Fetcher,
                 uploader: Uploader, results_dir: Path, *, results: ResultStore | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.gate = gate
        self.fetcher = fetcher
        self.uploader = uploader
        self.results_dir = Path(results_dir)
        # Embedded: a local folder. A cluster passes its shared store (S3 or a shared directory).
        self.results: ResultStore = results if results is not None else DirResults(self.results_dir)

    def models_for(self, job: JobRecord) -> tuple[str, ...]:
        """The engine models a stored job needs (a missing enhancer must not stop a job without it)."""
        if job.kind == "face_tracking":
            return models_needed("face_tracking")
        options = options_from_record(job.params, LipSyncOptions)
        device = device_type_for(self.settings, self.engine.device_info())
        return models_needed("lipsync", resolve_enhance(options.enhance, device))

    def result_path(self, job_id: str) -> Path:
        return self.results_dir / f"{job_id}.mp4"

    def __call__(self, job: JobRecord, ctx: JobContext) -> dict[str, Any]:
        try:
            # Only the models this job uses: a missing enhancer does not stop a job without enhancement.
            self.gate.require(self.models_for(job))
            if job.kind == "face_tracking":
                return self._face_tracking(job, ctx)
            return self._lipsync(job, ctx)
        except LipSyncError as exc:
            uploads = job.params.get("uploads") if job.params.get("inputs") == LOCAL_INPUTS else None
            raise _for_api(exc, ctx.workdir, uploads) from None

    # --- steps --------------------------------------------------------------------------------------

    def _download(self, p: dict[str, Any], ctx: JobContext, *, audio: bool) -> tuple[Path, Path | None,
                                                                                        tuple[Character, ...]]:
        if p.get("inputs") == LOCAL_INPUTS:
            return self._received(p, ctx)
        wanted: list[tuple[str, str, str, str]] = [("video_url", p["video_url"], "video", "video")]
        if audio and p.get("audio_url"):
            wanted.append(("audio_url", p["audio_url"], "audio", "audio"))
        for i, ch in enumerate(p.get("characters") or []):
            wanted.append((f"characters[{i}].reference_image_url", ch["reference_image_url"], "image", f"ref{i}"))
            if audio and ch.get("audio_url"):
                wanted.append((f"characters[{i}].audio_url", ch["audio_url"], "audio", f"voice{i}"))
        paths: dict[str, Path] = {}
        ctx.progress("download", 0, len(wanted))
        for n, (field, url, kind, stem) in enumerate(wanted, 1):
            ctx.check_cancelled()
            paths[field] = self.fetcher.download(url, ctx.workdir / stem, kind=kind, field=field,
                                                 check_stop=ctx.check_cancelled)
            self._probe(paths[field], field)
            ctx.progress("download", n, len(wanted))
        characters = tuple(
            Character(id=ch["id"], name=ch.get("name") or ch["id"],
                      reference_images=(paths[f"characters[{i}].reference_image_url"],),
                      audio=paths.get(f"characters[{i}].audio_url"))
            for i, ch in enumerate(p.get("characters") or [])
        )
        return paths["video_url"], paths.get("audio_url"), characters

    def _received(self, p: dict[str, Any], ctx: JobContext) -> tuple[Path, Path | None, tuple[Character, ...]]:
        """An upload job's inputs: already in the scratch folder (sniffed while they arrived). They get
        the same probe as downloads, under the same 'download' stage so progress looks alike."""
        wanted = [("video", p["video_file"])] + ([("audio", p["audio_file"])] if p.get("audio_file") else [])
        for ch in p.get("characters") or []:
            wanted += [("references", name) for name in ch["reference_files"]]
            if ch.get("audio_file"):
                wanted.append(("character_audio", ch["audio_file"]))
        ctx.progress("download", 0, len(wanted))
        for n, (field, name) in enumerate(wanted, 1):
            ctx.check_cancelled()
            path = self._scratch_file(ctx, name)
            if not path.is_file():
                # Queued jobs keep their scratch across a restart, so this means it was removed by hand
                # (or the work dir was moved): nothing to run on.
                raise UploadLost(
                    "the uploaded files of this job are gone (its scratch folder was removed before the job"
                    " ran); send the request again", field=field,
                )
            self._probe(path, field)
            ctx.progress("download", n, len(wanted))
        characters = tuple(
            Character(id=ch["id"], name=ch.get("name") or ch["id"],
                      reference_images=tuple(self._scratch_file(ctx, name) for name in ch["reference_files"]),
                      audio=self._scratch_file(ctx, ch["audio_file"]) if ch.get("audio_file") else None)
            for ch in p.get("characters") or []
        )
        audio = self._scratch_file(ctx, p["audio_file"]) if p.get("audio_file") else None
        return self._scratch_file(ctx, p["video_file"]), audio, characters

    @staticmethod
    def _scratch_file(ctx: JobContext, name: str) -> Path:
        # Names are the server's own (video.mp4, ref0.jpg); refusing separators keeps a tampered job row
        # from reaching outside the job's folder.
        if Path(name).name != name or name in ("", ".", ".."):
            raise InputError(f"bad stored input name {name!r}")
        return ctx.workdir / name

    def _probe(self, path: Path, field: str) -> None:
        """Open each input with the real media code right after its download: a truncated or unreadable
        file, or one over the resolution/duration limits, fails now, naming the field, before any model
        runs."""
        from lipsync.media import MediaLimits, probe

        try:
            probe(path, MediaLimits.from_settings(self.settings))
        except LipSyncError as exc:
            exc.field = field
            raise

    def _deliver(self, job: JobRecord, out: Path, ctx: JobContext) -> dict[str, Any]:
        upload_url = job.params.get("upload_url")
        ctx.progress("upload", 0, 1)
        if upload_url:
            self.uploader.upload(out, upload_url, check_stop=ctx.check_cancelled)
            delivered = {"output_url": redact(upload_url), "download_url": None}
        else:
            self.results.put(job.id, out)
            delivered = {"output_url": None, "download_url": f"/jobs/{job.id}/result"}
        ctx.progress("upload", 1, 1)
        return delivered

    def _lipsync(self, job: JobRecord, ctx: JobContext) -> dict[str, Any]:
        p = job.params
        # Re-validated before any download: a record may come from an older version (flat fields).
        options = options_from_record(p, LipSyncOptions)
        video, audio, characters = self._download(p, ctx, audio=True)
        request = LipSyncRequest(video, audio, ctx.workdir / "output.mp4", characters, options)
        output = self.engine.lipsync(request, ctx.progress)
        ctx.check_cancelled()
        return {**self._deliver(job, output.out, ctx), "duration": round(output.duration, 4),
                "stats": output.stats}

    def _face_tracking(self, job: JobRecord, ctx: JobContext) -> dict[str, Any]:
        p = job.params
        options = options_from_record(p, TrackOptions)
        video, _, characters = self._download(p, ctx, audio=False)
        request = TrackingRequest(video, ctx.workdir / "tracking.mp4", characters, options)
        output = self.engine.face_tracking(request, ctx.progress)
        ctx.check_cancelled()
        return {**self._deliver(job, output.out, ctx), "duration": round(output.duration, 4),
                "stats": output.stats, "tracks": output.extra.get("tracks", {})}
