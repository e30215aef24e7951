"""Reference embeddings for characters and the optimal face-to-character assignment."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from lipsync.errors import FaceError, ReferenceFaceNotFound
from lipsync.faces.backend import FaceBackend
from lipsync.media import MediaLimits, check_image_header
from lipsync.types import Character

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CharacterRef:
    """A character with its averaged, L2-normalised reference embedding."""

    id: str
    name: str
    embedding: np.ndarray


@dataclass(frozen=True, slots=True)
class Assignment:
    face: int  # index into the frame's faces
    character: int  # index into the references
    similarity: float


def load_image(path: Path, limits: MediaLimits | None = None) -> np.ndarray:
    """A reference image as BGR uint8 (EXIF orientation applied by OpenCV). Its declared size is
    checked from the header first: a small file can declare a picture of gigabytes."""
    check_image_header(path, limits or MediaLimits())
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FaceError(f"cannot read reference image {Path(path).name}", field="characters")
    return image


def reference_embedding(
    backend: FaceBackend,
    character: Character,
    *,
    images: Sequence[np.ndarray] | None = None,
    loader: Callable[[Path], np.ndarray] = load_image,
) -> CharacterRef:
    """Average the embeddings of the largest face in each of the character's reference images.

    Raises ReferenceFaceNotFound naming the character when an image has no face; with several faces,
    the largest is used and a warning is logged.
    """
    sources = list(images) if images is not None else [loader(p) for p in character.reference_images]
    labels = [Path(p).name for p in character.reference_images] or [f"#{i}" for i in range(len(sources))]
    if not sources:
        raise ReferenceFaceNotFound(
            f"character {character.id!r} ({character.name}) has no reference image", field="characters"
        )
    vectors = []
    for k, image in enumerate(sources):
        label = labels[k] if k < len(labels) else f"#{k}"
        faces = backend.detect(image)
        if not faces:
            raise ReferenceFaceNotFound(
                f"no face found in reference image {label} of character {character.id!r} ({character.name})",
                field="characters",
            )
        face = max(faces, key=lambda f: f.box.area)
        if len(faces) > 1:
            log.warning(
                "reference image %s of character %r has %d faces; using the largest",
                label,
                character.id,
                len(faces),
            )
        vectors.append(np.asarray(backend.embed(image, face), dtype=np.float32))
    mean = np.mean(vectors, axis=0)
    norm = float(np.linalg.norm(mean))
    if norm <= 1e-12:
        raise ReferenceFaceNotFound(
            f"reference images of character {character.id!r} ({character.name}) give no usable identity",
            field="characters",
        )
    return CharacterRef(character.id, character.name, (mean / norm).astype(np.float32))


def build_references(backend: FaceBackend, characters: Sequence[Character]) -> list[CharacterRef]:
    ids = [c.id for c in characters]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise FaceError(f"character ids must be unique; repeated: {', '.join(dupes)}", field="characters")
    return [reference_embedding(backend, c) for c in characters]


def assign(scores: np.ndarray, eligible: np.ndarray) -> list[tuple[int, int]]:
    """Optimal one-to-one assignment (Hungarian) maximising ``scores`` over ``eligible`` pairs.

    ``scores`` and ``eligible`` are (faces, characters). Ineligible pairs are never returned, so a face
    goes to at most one character and a character takes at most one face.
    """
    if scores.size == 0 or not eligible.any():
        return []
    if min(scores.shape) == 1:
        # One face or one character (the usual case): the best eligible pair is the optimum, and
        # importing scipy for it cost half a CPU second in the middle of the render.
        masked = np.where(eligible, scores, -np.inf)
        r, c = np.unravel_index(int(np.argmax(masked)), masked.shape)
        return [(int(r), int(c))]
    # Ineligible pairs get a cost worse than any eligible total so they are only picked when unavoidable
    # (then dropped); the offset keeps every eligible cost negative, so matching more pairs always wins.
    big = float(np.abs(scores[eligible]).sum() + 1.0) * 2.0
    cost = np.where(eligible, -(scores + big / 2.0), big)
    from scipy.optimize import linear_sum_assignment  # on use: keeps scipy out of start-up

    rows, cols = linear_sum_assignment(cost)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if eligible[r, c]]


def match_faces(
    similarities: np.ndarray,
    threshold: float,
    *,
    bonus: np.ndarray | None = None,
    relaxed: np.ndarray | None = None,
) -> list[Assignment]:
    """Assign faces (rows) to characters (columns).

    A pair is eligible when its similarity is >= ``threshold`` (or where ``relaxed`` is True: the
    tracker's IoU continuity). The Hungarian solution maximises similarity plus the optional ``bonus``.
    """
    sims = np.asarray(similarities, dtype=np.float32)
    if sims.ndim != 2 or sims.size == 0:
        return []
    eligible = sims >= threshold
    if relaxed is not None:
        eligible |= relaxed
    scores = sims + (bonus if bonus is not None else 0.0)
    return [Assignment(f, c, float(sims[f, c])) for f, c in assign(scores, eligible)]
