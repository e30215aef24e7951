"""Before a run: every model file it needs, checked (and fetched) up front, with ONE report of all the
problems, so a first run without models fails once, saying everything to do, instead of once per model.

``needs_for_run`` / ``needs_for_tracking`` say which files a command uses with the given settings (a user
file named by ``LIPSYNC_*_CHECKPOINT``, ``LIPSYNC_DET_MODEL`` or ``LIPSYNC_REC_MODEL`` replaces its catalog
file); ``ensure_models`` makes them present or raises one ModelError listing each missing one with what
to do: the URL and the exact place, the variable that points at a file of one's own, and how to run
without it where that is possible (``--no-enhance``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lipsync.config import Settings
from lipsync.errors import ModelDownloadError, ModelError, ModelNotAvailable
from lipsync.models.download import ProgressCallback
from lipsync.models.store import FILE_OVERRIDES, MEMBER_OVERRIDES, ModelStore, env_var

log = logging.getLogger(__name__)

SKIP_ENHANCE_CLI = "pass --no-enhance to run without enhancement"
# Without characters the recognizer still tells the faces of the video apart (the most prominent one is
# followed across shots by its embedding), so it is needed either way; the report says so.
RECOGNIZER_NOTE = (
    "the face recognizer (w600k_r50.onnx) is needed with or without --character: it also tells the faces "
    "in the video apart"
)


@dataclass(frozen=True, slots=True)
class ModelNeed:
    """One catalog model a command uses. ``members``: for a pack, the files of it used (each may be
    replaced by a user file); ``skip``: how to run without it, when one can."""

    name: str
    purpose: str
    members: tuple[str, ...] = ()
    skip: str | None = None


def needs_for_tracking(settings: Settings) -> list[ModelNeed]:
    """The face models: buffalo_l's detector and recognizer for InsightFace, none for dlib (its models
    come with its PyPI packages)."""
    if settings.face_backend != "insightface":
        return []
    return [ModelNeed("buffalo_l", "face detection and recognition", ("det_10g.onnx", "w600k_r50.onnx"))]


def needs_for_run(settings: Settings, *, enhance: bool, skip_enhance: str = SKIP_ENHANCE_CLI,
                  occlusion: bool = False) -> list[ModelNeed]:
    """Wav2Lip (the variant the settings choose), the face models, GFPGAN when enhancing, and the face
    parser when the occlusion mask is asked for (``occlusion_mask=on``)."""
    needs = [ModelNeed(settings.wav2lip_model, "lip-sync"), *needs_for_tracking(settings)]
    if enhance:
        needs.append(ModelNeed("gfpgan_v1.4", "enhancement", skip=skip_enhance))
    if occlusion:
        needs.append(ModelNeed("face_parsing", "the occlusion mask", skip="--occlusion-mask off"))
    return needs


@dataclass(frozen=True, slots=True)
class _Problem:
    text: str
    downloadable: bool  # False: a user file that does not exist (no download can help)


def _bad_override(field: str, path: object) -> str:
    return f"{env_var(field)} points at {path}, which does not exist; fix it or unset it"


def _problem(store: ModelStore, need: ModelNeed) -> _Problem | None:
    """What is wrong with ``need`` right now (no download), or None when every file is in place."""
    if need.members:
        texts = []
        for member in need.members:
            override = store.override_for(need.name, member)
            if override is not None and not override.is_file():
                texts.append(_bad_override(MEMBER_OVERRIDES[(need.name, member)], override))
        bad_overrides = bool(texts)
        missing = store.missing_members(need.name, need.members)
        if missing:
            texts.append(store.how_to_place(need.name, members=missing) + store.own_file_hint(need.name, missing))
        return _Problem("; ".join(texts), not bad_overrides) if texts else None
    override = store.override_for(need.name)
    if override is not None:
        return None if override.is_file() else _Problem(_bad_override(FILE_OVERRIDES[need.name], override), False)
    if store.catalog_path(need.name).is_file():
        return None
    return _Problem(store.how_to_place(need.name) + store.own_file_hint(need.name), True)


def _fetch(store: ModelStore, need: ModelNeed, progress: ProgressCallback | None) -> None:
    if not need.members:
        store.ensure(need.name, progress=progress)
    for member in store.missing_members(need.name, need.members):
        store.ensure_member(need.name, member, progress=progress)


def _label(need: ModelNeed, store: ModelStore) -> str:
    missing = store.missing_members(need.name, need.members) if need.members else ()
    files = f" {', '.join(missing)}" if missing else ""
    return f"{need.name}{files} ({need.purpose})"


def ensure_models(
    store: ModelStore,
    needs: Sequence[ModelNeed],
    progress: Callable[[str], ProgressCallback | None] | None = None,
) -> None:
    """Make every needed file present: nothing to do when they are, downloads when allowed. Raises ONE
    ModelNotAvailable (ModelDownloadError when a download failed for another reason) naming every model
    still missing and what to do about each."""
    problems: list[tuple[ModelNeed, str]] = []
    failed_otherwise = False
    for need in needs:
        problem = _problem(store, need)
        if problem is None:
            continue
        if store.settings.offline or not problem.downloadable:
            problems.append((need, problem.text))
            continue
        members = store.missing_members(need.name, need.members)
        try:
            _fetch(store, need, progress(need.name) if progress else None)
        except ModelError as exc:
            failed_otherwise = failed_otherwise or not isinstance(exc, ModelNotAvailable)
            problems.append((need, exc.message + store.own_file_hint(need.name, members)))
    if not problems:
        return
    count = len(problems)
    offline = " (downloads are off: LIPSYNC_OFFLINE=1)" if store.settings.offline else ""
    parts = []
    for k, (need, problem) in enumerate(problems, 1):
        skip = f"; or {need.skip}" if need.skip else ""
        parts.append(f"({k}) {_label(need, store)}: {problem}{skip}")
    notes = [RECOGNIZER_NOTE] if any("w600k_r50.onnx" in p for _, p in problems) else []
    message = (
        f"{count} model{'s' if count > 1 else ''} this run needs {'are' if count > 1 else 'is'} missing"
        f"{offline}: " + "; ".join(parts) + "".join(f". Note: {n}" for n in notes)
    )
    error_type = ModelDownloadError if failed_otherwise else ModelNotAvailable
    raise error_type(message)
