"""Receiving POST /lipsync/upload's multipart body: each file part is streamed straight into the job's
scratch folder, never held whole in memory nor spooled to the system temp dir (which Starlette's own
form parser does, and only after reading the whole body).

Every part is checked while it arrives: the per-input byte limit (DownloadTooLarge naming the part),
the same content sniffing as URL downloads (an HTML page as `video` is refused after its first bytes),
and only the known part names; the whole body's size and time are bounded upstream by the request gate
(api/gate.py). The ``options`` part parses like a JSON body (api/jsonbody.py: one ``invalid_json`` error).
The caller owns the folder: on any error it deletes what was written (``MultipartReceiver.abort`` closes
the open file first).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from lipsync.api.errors import RequestInvalid, RequestTooLarge, UnsupportedContentType
from lipsync.api.fetch import SNIFF_BYTES, InputKind, expected, human_size, sniff, unacceptable
from lipsync.api.jsonbody import parse_json
from lipsync.errors import DownloadTooLarge, NotAMediaFile

# The file parts and what their content must sniff as (the same rules as the *_url downloads).
_KIND: dict[str, InputKind] = {"video": "video", "audio": "audio", "references": "image",
                               "character_audio": "audio"}
MAX_REFERENCES = 16
MAX_CHARACTER_AUDIO = 16  # one stem per character, at most 16 characters
MAX_OPTIONS_BYTES = 64 * 1024
MAX_HEADER_BYTES = 8 * 1024
# RFC 2046: 1 to 70 characters from this set (the last not a space).
_BOUNDARY = re.compile(rb"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")


@dataclass
class ReceivedFile:
    part: str  # "video", "audio", "references" or "character_audio"
    filename: str  # as the client named it (only used to match characters[i].reference and in messages)
    path: Path  # where it was saved: <workdir>/<video|audio|ref<k>>.<sniffed extension>
    size: int = 0


@dataclass
class Received:
    video: ReceivedFile | None = None
    audio: ReceivedFile | None = None
    references: list[ReceivedFile] = field(default_factory=list)
    character_audio: list[ReceivedFile] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Part:
    name: str
    filename: str | None
    stem: str | None = None  # scratch file stem for file parts
    head: bytes = b""
    size: int = 0
    text: bytearray = field(default_factory=bytearray)
    out: IO[bytes] | None = None
    saved: ReceivedFile | None = None


class MultipartReceiver:
    """Feed it the body chunk by chunk (blocking file writes: call from a worker thread), then
    ``finish()``. Raises LipSyncErrors naming the offending part."""

    def __init__(self, boundary: bytes, workdir: Path, *, max_file_bytes: int) -> None:
        self.workdir = Path(workdir)
        self.max_file_bytes = max_file_bytes
        self.total = 0
        self.received = Received()
        self._options_seen = False
        self._ended = False
        self._events: list[tuple[str, bytes]] = []
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._part: _Part | None = None
        self._parser = MultipartParser(boundary, {
            "on_part_begin": lambda: self._events.append(("begin", b"")),
            "on_header_field": lambda d, s, e: self._events.append(("hfield", d[s:e])),
            "on_header_value": lambda d, s, e: self._events.append(("hvalue", d[s:e])),
            "on_header_end": lambda: self._events.append(("hend", b"")),
            "on_headers_finished": lambda: self._events.append(("headers", b"")),
            "on_part_data": lambda d, s, e: self._events.append(("data", d[s:e])),
            "on_part_end": lambda: self._events.append(("end", b"")),
            "on_end": lambda: self._events.append(("done", b"")),
        }, max_header_size=MAX_HEADER_BYTES)

    # --- input ----------------------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        try:
            self._parser.write(chunk)
        except FormParserError as exc:  # the base of every python-multipart error
            raise RequestInvalid(f"the multipart/form-data body is malformed: {exc}") from None
        events, self._events = self._events, []
        for kind, data in events:
            self._handle(kind, data)

    def finish(self, required: tuple[str, ...] = ("video", "audio")) -> Received:
        if not self._ended:
            raise RequestInvalid("the multipart/form-data body ended before its closing boundary")
        # The main audio may be missing when every character sends its own track (checked with the options).
        for name in required:
            if getattr(self.received, name) is None:
                raise RequestInvalid(f"{name}: file part required", field=name)
        return self.received

    def abort(self) -> None:
        """Close the file being written (the caller deletes the folder)."""
        if self._part is not None and self._part.out is not None:
            self._part.out.close()
            self._part.out = None

    # --- events ---------------------------------------------------------------------------------------

    def _handle(self, kind: str, data: bytes) -> None:
        if kind == "begin":
            self._headers = {}
        elif kind == "hfield":
            self._header_field += data
        elif kind == "hvalue":
            self._header_value += data
        elif kind == "hend":
            self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
            self._header_field.clear()
            self._header_value.clear()
        elif kind == "headers":
            self._part = self._start_part()
        elif kind == "data":
            if self._part is not None:
                self._data(self._part, data)
        elif kind == "end":
            if self._part is not None:
                self._end_part(self._part)
            self._part = None
        elif kind == "done":
            self._ended = True

    def _start_part(self) -> _Part:
        disposition = self._headers.get(b"content-disposition", b"")
        _, params = parse_options_header(disposition)
        name = params.get(b"name", b"").decode("utf-8", "replace")
        raw_filename = params.get(b"filename")
        filename = raw_filename.decode("utf-8", "replace") if raw_filename is not None else None
        if name not in (*_KIND, "options"):
            raise RequestInvalid(
                f"{name or '(unnamed part)'}: unknown part; send video, audio, references, character_audio "
                "and options",
                field=name or None,
            )
        if name == "options":
            if self._options_seen:
                raise RequestInvalid("options: sent more than once", field="options")
            self._options_seen = True
            return _Part(name=name, filename=filename)
        if name in ("video", "audio"):
            if getattr(self.received, name) is not None:
                raise RequestInvalid(f"{name}: sent more than once (one file per request)", field=name)
            stem = name
        elif name == "character_audio":
            if len(self.received.character_audio) >= MAX_CHARACTER_AUDIO:
                raise RequestInvalid(f"character_audio: at most {MAX_CHARACTER_AUDIO} files",
                                     field="character_audio")  # fmt: skip
            stem = f"voice{len(self.received.character_audio)}"
        else:
            if len(self.received.references) >= MAX_REFERENCES:
                raise RequestInvalid(f"references: at most {MAX_REFERENCES} reference files", field="references")
            stem = f"ref{len(self.received.references)}"
        return _Part(name=name, filename=filename or "", stem=stem)

    def _data(self, part: _Part, data: bytes) -> None:
        part.size += len(data)
        if part.stem is None:  # the options text
            if part.size > MAX_OPTIONS_BYTES:
                raise RequestTooLarge(f"options: over {human_size(MAX_OPTIONS_BYTES)}", field="options")
            part.text += data
            return
        if part.size > self.max_file_bytes:
            raise DownloadTooLarge(
                f"{part.name}: the uploaded file is over the {human_size(self.max_file_bytes)} limit",
                field=part.name,
            )
        if part.out is not None:
            part.out.write(data)
            return
        part.head += data
        if len(part.head) >= SNIFF_BYTES:
            self._open(part)

    def _open(self, part: _Part) -> None:
        """Sniff the first bytes, then create the scratch file named after what they are."""
        found = sniff(part.head)
        kind = _KIND[part.name]
        what = unacceptable(found, kind)
        if what is not None:
            raise NotAMediaFile(f"{part.name}: {expected(kind)} but the uploaded file {part.filename!r} is {what}",
                                field=part.name)
        assert part.stem is not None  # file parts only
        path = self.workdir / f"{part.stem}.{found}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        part.out = open(path, "wb")  # noqa: SIM115 - closed in _end_part or abort
        part.out.write(part.head)
        part.head = b""
        part.saved = ReceivedFile(part=part.name, filename=part.filename or "", path=path)

    def _end_part(self, part: _Part) -> None:
        if part.stem is None:
            self._options(bytes(part.text))
            return
        if part.out is None:
            if not part.head:
                raise NotAMediaFile(f"{part.name}: the uploaded file {part.filename!r} is empty", field=part.name)
            self._open(part)
        assert part.out is not None and part.saved is not None  # set by _open
        part.out.close()
        part.out = None
        part.saved.size = part.size
        if part.name == "references":
            self.received.references.append(part.saved)
        elif part.name == "character_audio":
            self.received.character_audio.append(part.saved)
        else:
            setattr(self.received, part.name, part.saved)

    def _options(self, text: bytes) -> None:
        if not text.strip():
            return
        value = parse_json(text, what="options", field="options")
        if not isinstance(value, dict):
            raise RequestInvalid("options: must be a JSON object", field="options")
        self.received.options = value


def upload_body_limit(max_file_bytes: int) -> int:
    """The cap on a whole upload request: every file part at its limit, the options, and room for the
    multipart headers and boundaries."""
    return max_file_bytes * (2 + MAX_REFERENCES + MAX_CHARACTER_AUDIO) + MAX_OPTIONS_BYTES + 64 * 1024


def multipart_boundary(content_type: str | None) -> bytes:
    kind, params = parse_options_header(content_type or "")
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise UnsupportedContentType(
            f"send multipart/form-data (with a boundary), not {content_type or 'no Content-Type'}"
        )
    if not _BOUNDARY.fullmatch(boundary):
        raise RequestInvalid(
            f"the multipart boundary ({len(boundary)} characters) is not valid: RFC 2046 allows 1 to 70 letters,"
            " digits and '()+_,-./:=? (every HTTP client's default is)", field="content-type",
        )
    return boundary
