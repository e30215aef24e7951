"""Opening inputs with PyAV and turning FFmpeg's errors into lipsync's typed, actionable ones."""

from __future__ import annotations

import os
from pathlib import Path

import av
import av.container

from lipsync.errors import CorruptMedia, InputError, MediaNotFound, NotAMediaFile

# Leading bytes of containers FFmpeg reads. When one of these opens badly, the file is media that was
# damaged (typically a truncated download), which deserves a different message than "not media at all".
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (4, b"ftyp", "MP4/MOV"),
    (0, b"\x1a\x45\xdf\xa3", "Matroska/WebM"),
    (0, b"RIFF", "RIFF (WAV/AVI/WebP)"),
    (0, b"OggS", "Ogg"),
    (0, b"fLaC", "FLAC"),
    (0, b"ID3", "MP3"),
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"\x89PNG", "PNG"),
    (0, b"FLV", "FLV"),
)

VIDEO_HINT = "Give a video (mp4, mov, mkv, webm) or an image (jpg, png, webp)."
AUDIO_HINT = "Give an audio file (wav, mp3, m4a, flac, ogg, opus) or a video with sound."
# For a file that is not media at all, where we cannot tell whether it was meant as video or audio.
ANY_MEDIA_HINT = (
    "lipsync reads videos (mp4, mov, mkv, webm), images (jpg, png, webp) and audio "
    "(wav, mp3, m4a, flac, ogg, opus)."
)


def display_name(path: Path) -> str:
    return path.name or str(path)


def _sniff(path: Path) -> tuple[str | None, bytes]:
    try:
        with path.open("rb") as fh:
            head = fh.read(64)
    except OSError:
        return None, b""
    for offset, magic, label in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return label, head
    # MPEG audio frame sync (raw mp3 without an ID3 tag) and ADTS AAC.
    if len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0:
        return "MPEG audio", head
    return None, head


def _describe_head(head: bytes) -> str:
    text = head.lstrip()[:16].lower()
    if text.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")):
        return " It is an HTML/XML page (often an error page saved in place of the real file)."
    if text.startswith((b"{", b"[")):
        return " It looks like JSON text."
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return " It is plain text."
    return ""


IMAGE_HINT = "Give an image file (jpg, png, webp) showing the face."
_HINTS = {"video": VIDEO_HINT, "audio": AUDIO_HINT, "characters": IMAGE_HINT}


def check_exists(path: str | os.PathLike[str], field: str | None = None) -> Path:
    """``path`` as a Path when it is a readable, non-empty file; else MediaNotFound / NotAMediaFile with
    one wording for every command and input (``field`` picks the hint and tags the error)."""
    p = Path(path)
    if not p.exists():
        raise MediaNotFound(f"{p}: no such file. Check the path (or that the download finished).", field=field)
    if p.is_dir():
        hint = _HINTS.get(field or "", ANY_MEDIA_HINT)
        raise NotAMediaFile(f"{p} is a directory, not a media file. {hint}", field=field)
    if not os.access(p, os.R_OK):
        raise MediaNotFound(f"{p}: permission denied. Make the file readable by this process.", field=field)
    if p.stat().st_size == 0:
        raise NotAMediaFile(f"{display_name(p)} is empty (0 bytes). Re-upload or re-download it.", field=field)
    return p


def check_output_file(path: str | os.PathLike[str], field: str = "output") -> Path:
    """An output path lipsync can write: not a directory, and its folder either exists or can be created
    (writers create missing folders, like ``mkdir -p``). Nothing is created here."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{p} is a directory; give a file name inside it (e.g. {p / 'out.mp4'}).", field=field)
    folder = p.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"cannot create a folder for {p}: {folder} is a file, not a folder.", field=field)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {p}: no write permission in {folder}.", field=field)
    return p


def open_input(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> av.container.InputContainer:
    """Open ``path`` for reading, or raise MediaNotFound / NotAMediaFile / CorruptMedia.

    ``max_pixels`` is handed to FFmpeg's decoders (its ``max_pixels`` codec option): opening a file makes
    FFmpeg decode a frame to learn its parameters, and a picture over the limit is then refused before
    it is allocated instead of costing its full decode."""
    p = check_exists(path)
    options = {"max_pixels": str(int(max_pixels))} if max_pixels else None
    try:
        return av.open(str(p), mode="r", metadata_errors="ignore", options=options)
    except FileNotFoundError as exc:  # raced with a delete
        raise MediaNotFound(f"{p}: no such file. Check the path.") from exc
    except PermissionError as exc:
        raise MediaNotFound(f"{p}: permission denied. Make the file readable by this process.") from exc
    except (av.FFmpegError, OSError, ValueError) as exc:
        label, head = _sniff(p)
        if label is not None:
            raise CorruptMedia(
                f"{display_name(p)} looks like {label} but FFmpeg cannot read it ({exc}). It is probably "
                "truncated or damaged (an interrupted upload or download); re-export or re-download it."
            ) from exc
        raise NotAMediaFile(
            f"{display_name(p)} is not a media file FFmpeg can read.{_describe_head(head)} {ANY_MEDIA_HINT}"
        ) from exc


def corrupt_partway(path: Path, where: str, exc: BaseException, field: str | None = None) -> CorruptMedia:
    return CorruptMedia(
        f"{display_name(path)} is corrupt partway through ({where}: {exc}). The file is probably truncated "
        "or damaged; re-export or re-download it.",
        field=field,
    )


def check_complete(path: Path, field: str | None = "audio") -> None:
    """Refuse a WAV cut short of the length its header declares (FFmpeg would read it as a shorter file)."""
    from lipsync.media._headers import wav_data_extent

    extent = wav_data_extent(path)
    # Half a hundredth of a second of slack: some writers round the header's size up to a block.
    if extent is not None and extent[1] < extent[0] - 0.005:
        declared, present = extent
        raise CorruptMedia(
            f"{display_name(path)} is truncated: its header declares {declared:.2f} s of audio but the file "
            f"holds only {present:.2f} s. It was probably cut off (an interrupted upload or download); "
            "re-export or re-download it.",
            field=field,
        )

