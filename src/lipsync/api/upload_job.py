"""POST /lipsync/upload: receive the files into a new job's scratch folder, validate the options, and
submit an ordinary lip-sync job whose inputs are those local files (``inputs: "local"``, see
JobWork._received). From then on it is a URL job in every way: queue, progress, cancel, webhook, result.

The scratch folder is the job's own (JobRunner.scratch_for), so the runner's cleanup deletes the files
when the job ends; until the job is submitted, this module deletes them on any failure.
"""

from __future__ import annotations

import json
import logging
import shutil
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from lipsync.api.errors import RequestInvalid
from lipsync.api.receive import (
    MAX_OPTIONS_BYTES,
    MAX_REFERENCES,
    MultipartReceiver,
    Received,
    ReceivedFile,
    multipart_boundary,
)
from lipsync.api.schemas import EXAMPLE_UPLOAD_OPTIONS, LipSyncUploadOptions, TrackingUploadOptions
from lipsync.api.work import LOCAL_INPUTS
from lipsync.jobs.models import JobRecord, new_job_id
from lipsync.request import check_audio_sources

log = logging.getLogger(__name__)

UPLOAD_DESCRIPTION = f"""Lip-sync uploaded files instead of URLs. The body is `multipart/form-data` with these parts:

* `video` (file, required): the input video, or a still image.
* `audio` (file): the speech to lip-sync to (a video file's audio track works too), and the output's sound.
  Required unless every character names its own `character_audio` file.
* `references` (file, zero or more, at most {MAX_REFERENCES}): reference photos; characters name them by
  their file names.
* `character_audio` (file, zero or more): the characters' own driving tracks (a dub's stems); a
  character names one by its file name in `characters[].audio`. Without `audio` they are mixed into the
  output's sound.
* `options` (JSON text, optional, at most {MAX_OPTIONS_BYTES // 1024} KiB): the fields of `POST /lipsync`
  except `video_url`/`audio_url`, with `characters[].reference` (a file name or a list of file names of
  `references` parts) in place of `reference_image_url`. `upload_url`, `webhook_url` and `"async": true`
  work as in `POST /lipsync`.

Each file is limited to `LIPSYNC_MAX_DOWNLOAD_BYTES` (413 `download_too_large` naming the part) and is
checked by its content (an HTML page or text is 422 `not_media`). The job then runs like a URL job; the
uploaded files are deleted when it ends.

    curl -H "Authorization: Bearer $KEY" -F video=@talk.mp4 -F audio=@speech.wav -F references=@anna.jpg \\
         -F 'options={{"characters": [{{"id": "anna", "reference": "anna.jpg"}}]}}' http://host:8000/lipsync/upload
"""

UPLOAD_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["video"],
                "properties": {
                    "video": {"type": "string", "format": "binary",
                              "description": "The input video (or a still image)."},
                    "audio": {"type": "string", "format": "binary", "description": "The speech to lip-sync to "
                              "(required unless every character has its own character_audio file)."},
                    "character_audio": {"type": "array", "items": {"type": "string", "format": "binary"},
                                        "description": "Characters' own tracks, named by characters[].audio."},
                    "references": {"type": "array", "items": {"type": "string", "format": "binary"},
                                   "description": "Reference photos, named by characters[].reference."},
                    "options": {"type": "string",
                                "description": "JSON: the POST /lipsync fields without video_url/audio_url; "
                                "characters[].reference names uploaded reference files.",
                                "example": json.dumps(EXAMPLE_UPLOAD_OPTIONS)},
                },
            },
            "encoding": {"options": {"contentType": "application/json"}},
        }},
    },
}


# kind -> (the options part's model, the file parts that must be there)
_KINDS: dict[str, tuple[type[LipSyncUploadOptions] | type[TrackingUploadOptions], tuple[str, ...]]] = {
    # The main audio may be left out when every character sends its own track (checked with the options).
    "lipsync": (LipSyncUploadOptions, ("video",)),
    "face_tracking": (TrackingUploadOptions, ("video",)),
}


async def receive_and_submit(request: Request, state: Any, kind: str = "lipsync") -> tuple[JobRecord, bool]:
    """Returns the queued job and whether the client asked for ``async``."""
    model, required = _KINDS[kind]
    boundary = multipart_boundary(request.headers.get("content-type"))
    max_file = state.settings.max_download_bytes
    job_id = new_job_id()
    workdir = state.runner.scratch_for(job_id)
    receiver = MultipartReceiver(boundary, workdir, max_file_bytes=max_file)
    try:
        try:
            async for chunk in request.stream():
                await run_in_threadpool(receiver.feed, chunk)
        except ClientDisconnect:
            raise RequestInvalid("the client disconnected during the upload") from None
        received = receiver.finish(required)
        options = _validate(model, received.options)
        state.gate.check_accepting(state.models_for(kind, options.job_options()))
        params = _params(received, options)
        await run_in_threadpool(state.check_urls, params)
        record = await run_in_threadpool(
            state.runner.submit, kind, params, webhook_url=params.get("webhook_url"), job_id=job_id
        )
    except BaseException:
        # Nothing was queued: these files belong to no job, so no one else will delete them.
        receiver.abort()
        await run_in_threadpool(shutil.rmtree, workdir, True)
        raise
    log.info("upload job %s: received %d bytes", job_id, receiver.total)
    return record, options.async_


def _validate(model: type[Any], options: dict[str, Any]) -> Any:
    try:
        return model.model_validate(options)
    except ValidationError as exc:
        # The error handler names the field (characters[0].id) just as for a JSON body.
        raise RequestValidationError(exc.errors()) from None


def _by_name(files: list[ReceivedFile], part: str) -> dict[str, ReceivedFile]:
    by_name: dict[str, ReceivedFile] = {}
    for f in files:
        if f.filename in by_name:
            raise RequestInvalid(f"{part}: two files are named {f.filename!r}; characters name them by "
                                 "file name, so names must be unique", field=part)
        by_name[f.filename] = f
    return by_name


def _stems(received: Received, options: LipSyncUploadOptions) -> dict[str, str]:
    """character id -> the scratch name of its own track; every uploaded track must be named."""
    stems = _by_name(received.character_audio, "character_audio")
    out: dict[str, str] = {}
    for i, ch in enumerate(options.characters):
        if ch.audio is None:
            continue
        if ch.audio not in stems:
            sent = ", ".join(repr(n) for n in stems) or "none"
            raise RequestInvalid(f"characters[{i}].audio: no uploaded character_audio file is named "
                                 f"{ch.audio!r} (uploaded: {sent})", field=f"characters[{i}].audio")  # fmt: skip
        out[ch.id] = stems[ch.audio].path.name
    named = {ch.audio for ch in options.characters}
    for name in stems:
        if name not in named:
            ids = ", ".join(repr(c.id) for c in options.characters) or "none"
            raise RequestInvalid(
                f"character_audio: the file {name!r} is named by no character's audio (characters: {ids}); "
                "name it in characters[].audio of the character it belongs to", field="character_audio",
            )
    check_audio_sources(received.audio is not None, [(c.id, c.id in out) for c in options.characters])
    return out


def _params(received: Received, options: LipSyncUploadOptions | TrackingUploadOptions) -> dict[str, Any]:
    by_name = _by_name(received.references, "references")
    # Driving tracks belong to lip-sync jobs; a tracking job has no audio to check.
    stems = _stems(received, options) if isinstance(options, LipSyncUploadOptions) else {}
    characters = []
    for i, ch in enumerate(options.characters):
        for name in ch.references:
            if name not in by_name:
                sent = ", ".join(repr(n) for n in by_name) or "none"
                raise RequestInvalid(
                    f"characters[{i}].reference: no uploaded references file is named {name!r}"
                    f" (uploaded: {sent})", field=f"characters[{i}].reference",
                )
        characters.append({"id": ch.id, "name": ch.name, "audio_file": stems.get(ch.id),
                           "reference_files": [by_name[n].path.name for n in ch.references]})
    assert received.video is not None  # finish() checked
    main = [received.audio] if received.audio is not None else []
    files = [received.video, *main, *received.references, *received.character_audio]
    return options.job_params(
        characters=characters,
        inputs=LOCAL_INPUTS,
        video_file=received.video.path.name,
        audio_file=received.audio.path.name if received.audio is not None else None,
        # For error messages: the job names files by the part and the client's file name.
        uploads={f.path.name: {"field": f.part, "filename": f.filename} for f in files},
    )
