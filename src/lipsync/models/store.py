"""Where model files live, fetching them on demand, and reporting their state.

Paths come from the catalog under ``settings.models_dir``, unless the user pointed a model at a file of
their own (``LIPSYNC_WAV2LIP_CHECKPOINT`` and friends): such a file is used as is, never downloaded and
never checked against the catalog checksum (its layout is still checked when it is loaded).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import httpx
from filelock import FileLock

from lipsync.config import Settings
from lipsync.errors import ModelNotAvailable, UnknownModel
from lipsync.models.archive import extract_zip
from lipsync.models.catalog import CATALOG, ModelSpec
from lipsync.models.download import (
    DownloadOptions,
    ProgressCallback,
    download,
    read_verified_record,
    sha256_file,
    write_verified_record,
)

log = logging.getLogger(__name__)

ModelState = Literal["verified", "present", "missing", "corrupt"]

# model name -> the Settings field that replaces its file
FILE_OVERRIDES: dict[str, str] = {
    "wav2lip_gan": "wav2lip_checkpoint",
    "wav2lip": "wav2lip_checkpoint",
    "lipsync_expert": "syncnet_checkpoint",
    "gfpgan_v1.4": "gfpgan_checkpoint",
    "face_parsing": "face_parsing_checkpoint",
}
# (pack, member) -> the Settings field that replaces that member
MEMBER_OVERRIDES: dict[tuple[str, str], str] = {
    ("buffalo_l", "det_10g.onnx"): "det_model",
    ("buffalo_l", "w600k_r50.onnx"): "rec_model",
}


def env_var(field: str) -> str:
    """The environment variable behind a Settings field (all model settings use the LIPSYNC_ prefix)."""
    return f"LIPSYNC_{field.upper()}"


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """One row of ``lipsync models list``.

    ``state``: verified (sha256 matched the catalog), present (exists; no checksum known, not yet
    verified, or a user file), missing, corrupt (verification failed)."""

    name: str
    state: ModelState
    path: Path
    size: int | None
    expected_size: int | None
    override: bool
    licence: str
    purpose: str
    detail: str = ""

    def to_dict(self) -> dict:
        out = asdict(self)
        out["path"] = str(self.path)
        return out


class ModelStore:
    """The models directory plus user overrides. Cheap to build; does no I/O until asked."""

    def __init__(
        self,
        settings: Settings,
        *,
        options: DownloadOptions | None = None,
        client: httpx.Client | None = None,
        catalog: Mapping[str, ModelSpec] | None = None,
    ) -> None:
        self.settings = settings
        # The catalog is injectable so tests (and private deployments) can point at other servers.
        self.catalog: Mapping[str, ModelSpec] = catalog if catalog is not None else CATALOG
        self.options = options or DownloadOptions(
            connect_timeout=settings.download_connect_timeout_s,
            read_timeout=settings.download_read_timeout_s,
        )
        self._client = client

    def spec(self, name: str) -> ModelSpec:
        """The catalog entry for ``name``, or UnknownModel listing the valid names."""
        try:
            return self.catalog[name]
        except KeyError:
            raise UnknownModel(f"unknown model {name!r}; known models: {', '.join(self.catalog)}") from None

    # --- paths --------------------------------------------------------------------------------------

    @property
    def models_dir(self) -> Path:
        return Path(self.settings.models_dir).expanduser()

    @property
    def wav2lip_name(self) -> str:
        """The Wav2Lip variant the settings choose (wav2lip_gan by default)."""
        return self.settings.wav2lip_model

    def override_for(self, name: str, member: str | None = None) -> Path | None:
        field = MEMBER_OVERRIDES.get((name, member)) if member else FILE_OVERRIDES.get(name)
        value = getattr(self.settings, field) if field else None
        return Path(value).expanduser() if value else None

    def catalog_path(self, name: str) -> Path:
        """Where the catalog file (or, for a pack, its extracted folder) lives under models_dir."""
        spec = self.spec(name)
        return self.models_dir / (spec.name if spec.is_archive else spec.filename)

    def path_for(self, name: str) -> Path:
        """The file to use for ``name``: the user's override if set, else the catalog location.
        For buffalo_l: the folder holding its ONNX files."""
        self.spec(name)
        return self.override_for(name) or self.catalog_path(name)

    def member_path(self, name: str, member: str) -> Path:
        """One file of a pack (e.g. buffalo_l/det_10g.onnx), honouring det_model/rec_model."""
        self.spec(name).member(member)
        return self.override_for(name, member) or self.catalog_path(name) / member

    # --- fetching -----------------------------------------------------------------------------------

    def ensure(self, name: str, progress: ProgressCallback | None = None) -> Path:
        """The path of ``name``, downloading it first when missing (unless offline).

        A user override must exist (no download is attempted for it). For buffalo_l the return value is
        the folder holding det_10g.onnx and w600k_r50.onnx."""
        spec = self.spec(name)
        override = self.override_for(name)
        if override is not None:
            self._check_override(override, FILE_OVERRIDES[name], name)
            return override
        if spec.is_archive:
            return self._ensure_pack(spec, progress)
        path = self.catalog_path(name)
        if path.is_file():
            return path
        self._refuse_if_offline(spec, path)
        return download(
            spec.urls,
            path,
            spec.sha256,
            size=spec.size,
            progress=progress or _log_progress(spec.filename),
            options=self.options,
            client=self._client,
        )

    def ensure_member(self, name: str, member: str, progress: ProgressCallback | None = None) -> Path:
        """One file of a pack. A member already in place is used even when the pack's other members are
        absent (the user may have replaced those with LIPSYNC_DET_MODEL / LIPSYNC_REC_MODEL); otherwise
        the pack is downloaded (unless offline, and then the error names only the missing member)."""
        override = self.override_for(name, member)
        if override is not None:
            self._check_override(override, MEMBER_OVERRIDES[(name, member)], f"{name}/{member}")
            return override
        spec = self.spec(name)
        spec.member(member)
        path = self.catalog_path(name) / member
        if path.is_file():
            return path
        self._refuse_if_offline(spec, path.parent, members=(member,))
        return self.ensure(name, progress) / member

    def face_model_paths(self, progress: ProgressCallback | None = None) -> tuple[Path, Path]:
        """(detector, recognizer) ONNX paths for the InsightFace backend."""
        return (
            self.ensure_member("buffalo_l", "det_10g.onnx", progress),
            self.ensure_member("buffalo_l", "w600k_r50.onnx", progress),
        )

    def _ensure_pack(self, spec: ModelSpec, progress: ProgressCallback | None) -> Path:
        folder = self.catalog_path(spec.name)
        if _pack_complete(spec, folder):
            return folder
        self._refuse_if_offline(spec, folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        # One process extracts; a second one waits here and then finds the folder complete.
        with FileLock(str(folder) + ".lock"):
            if _pack_complete(spec, folder):
                return folder
            archive = self.models_dir / spec.filename
            download(
                spec.urls,
                archive,
                spec.sha256,
                size=spec.size,
                progress=progress or _log_progress(spec.filename),
                options=self.options,
                client=self._client,
            )
            members = [m.name for m in spec.members]
            extract_zip(archive, folder, members, sha256={m.name: m.sha256 for m in spec.members})
            # The archive is no longer needed once its members are verified in place.
            archive.unlink(missing_ok=True)
            archive.with_name(archive.name + ".sha256").unlink(missing_ok=True)
            log.info("extracted %s into %s", ", ".join(members), folder)
        return folder

    def _check_override(self, path: Path, field: str, what: str) -> None:
        if not path.is_file():
            raise ModelNotAvailable(
                f"{env_var(field)} points {what} at {path}, which does not exist or is not a file; "
                f"fix the path or unset {env_var(field)} to use the catalog model",
                field=field,
            )

    def _refuse_if_offline(self, spec: ModelSpec, path: Path, members: tuple[str, ...] | None = None) -> None:
        if not self.settings.offline:
            return
        wanted = members or tuple(m.name for m in spec.members)
        raise ModelNotAvailable(
            f"model {spec.name} ({spec.filename}) is missing and downloads are off (LIPSYNC_OFFLINE=1); "
            f"{self.how_to_place(spec.name, path, members)}{self.own_file_hint(spec.name, wanted)}"
        )

    def how_to_place(self, name: str, path: Path | None = None, members: tuple[str, ...] | None = None) -> str:
        """What to do by hand for a missing model: download it and put it where it goes, or (for a pack)
        extract only ``members`` (default: all of them) into its folder."""
        spec = self.spec(name)
        path = path or self.catalog_path(name)
        if spec.is_archive:
            wanted = members or tuple(m.name for m in spec.members)
            return f"download {spec.url} by hand and extract {', '.join(wanted)} into {path}/"
        return f"download {spec.url} by hand and put it at {path}"

    @staticmethod
    def own_file_hint(name: str, members: tuple[str, ...] = ()) -> str:
        """", or point LIPSYNC_... at your own file" for a model (or pack members) a user file can replace."""
        fields = [MEMBER_OVERRIDES[(name, m)] for m in members if (name, m) in MEMBER_OVERRIDES]
        if not members and name in FILE_OVERRIDES:
            fields = [FILE_OVERRIDES[name]]
        if not fields:
            return ""
        return f", or point {' / '.join(env_var(f) for f in fields)} at your own file{'s' if len(fields) > 1 else ''}"

    def missing_members(self, name: str, members: tuple[str, ...]) -> tuple[str, ...]:
        """The members of pack ``name`` that are neither overridden nor in place (no I/O beyond stat)."""
        folder = self.catalog_path(name)
        return tuple(
            m for m in members if self.override_for(name, m) is None and not (folder / m).is_file()
        )

    # --- reporting ----------------------------------------------------------------------------------

    def status(self, names: Iterable[str] | None = None) -> list[ModelStatus]:
        """State of each model without hashing anything (uses records of earlier verifications)."""
        return [self._status_one(self.spec(n), verify=False) for n in (names or self.catalog)]

    def verify(self, names: Iterable[str] | None = None) -> list[ModelStatus]:
        """Hash every present catalog file against its sha256 (user overrides are only checked to exist)."""
        return [self._status_one(self.spec(n), verify=True) for n in (names or self.catalog)]

    def _status_one(self, spec: ModelSpec, *, verify: bool) -> ModelStatus:
        if spec.is_archive:
            return self._pack_status(spec, verify=verify)
        override = self.override_for(spec.name)
        path = override or self.catalog_path(spec.name)
        state, detail = _file_state(path, None if override else spec.sha256, verify=verify)
        if override is not None:
            detail = f"user file ({env_var(FILE_OVERRIDES[spec.name])}); " + detail
        return ModelStatus(
            spec.name,
            state,
            path,
            path.stat().st_size if path.is_file() else None,
            None if override else spec.size,
            override is not None,
            spec.licence,
            spec.purpose,
            detail.strip("; "),
        )

    def _pack_status(self, spec: ModelSpec, *, verify: bool) -> ModelStatus:
        states: list[ModelState] = []
        details: list[str] = []
        total = 0
        overridden = False
        for member in spec.members:
            override = self.override_for(spec.name, member.name)
            overridden = overridden or override is not None
            path = override or self.catalog_path(spec.name) / member.name
            state, detail = _file_state(path, None if override else member.sha256, verify=verify)
            states.append(state)
            if path.is_file():
                total += path.stat().st_size
            label = f"{member.name}: {state}"
            if override is not None:
                label += f" (user file, {env_var(MEMBER_OVERRIDES[(spec.name, member.name)])})"
            details.append(label + (f" ({detail})" if detail and state == "corrupt" else ""))
        for worst in ("corrupt", "missing", "present", "verified"):
            if worst in states:
                state = worst
                break
        return ModelStatus(
            spec.name,
            state,  # type: ignore[arg-type]
            self.catalog_path(spec.name),
            total or None,
            sum(m.size or 0 for m in spec.members) or None,
            overridden,
            spec.licence,
            spec.purpose,
            "; ".join(details),
        )


def _file_state(path: Path, sha256: str | None, *, verify: bool) -> tuple[ModelState, str]:
    if not path.is_file():
        return "missing", ""
    if sha256 is None:
        return "present", "no catalog checksum"
    if read_verified_record(path) == sha256.lower():
        return "verified", ""
    if not verify:
        return "present", "not verified yet (run `lipsync models verify`)"
    actual = sha256_file(path)
    if actual == sha256.lower():
        write_verified_record(path, actual)
        return "verified", ""
    return "corrupt", f"sha256 {actual}, expected {sha256.lower()}; delete it and download again"


def _pack_complete(spec: ModelSpec, folder: Path) -> bool:
    return all((folder / m.name).is_file() for m in spec.members)


def _log_progress(label: str, step: float = 0.1) -> ProgressCallback:
    """A progress callback for servers: one log line per ``step`` of the file (or per 50 MB when the
    size is unknown)."""
    last = [-1.0]

    def report(done: int, total: int | None) -> None:
        mark = done / total if total else done / 50e6
        if mark - last[0] >= step or (total and done >= total and last[0] < 1.0):
            last[0] = mark
            if total:
                log.info("downloading %s: %d%% (%d / %d bytes)", label, int(100 * done / total), done, total)
            else:
                log.info("downloading %s: %d bytes", label, done)

    return report
