"""The model catalog: every public weight file lipsync can fetch, as one table of data.

Provenance of the facts below (no file was downloaded or hashed here; every value was found pinned by
public sources, and where none was found the field is ``None``; a checksum is never guessed):

* wav2lip_gan.pth: sha256 and size pinned together by several unrelated public download scripts (one
  of them downloads from the camenduru mirror listed here, one from the Nekochu mirror); the size also
  matches the storage layout parsed from a public copy (tests/data/manifests/wav2lip_gan.json).
* wav2lip.pth: sha256 = the Hugging Face LFS blob name of camenduru/SadTalker-hf checkpoints/wav2lip.pth,
  also pinned with size 435807851 by scripts that fetched it from the rippertnt/wav2lip mirror.
* lipsync_expert.pth: no public sha256 found (sha256=None, so a download is only checked for
  completeness). The size is computed from a parsed public copy (manifest), not observed; it is only
  used to show progress, never to reject a file.
* GFPGANv1.4.pth: sha256 and size pinned by many public projects for the TencentARC release asset
  (attached to both the v1.3.0 and v1.3.4 releases); upstream publishes no checksum itself.
* buffalo_l.zip: zip sha256 and size, and the sha256 of det_10g.onnx and w600k_r50.onnx inside it,
  pinned by several public projects and by insightface's own model-package table. The w600k_r50.onnx
  size comes from one public README (174,383,860 bytes).
* face-parsing-bisenet.pth: BiSeNet face parsing trained on CelebAMask-HQ, zllrunning/face-parsing.PyTorch's
  ``79999_iter.pth`` (published there on Google Drive only). sha256 as pinned by the clibdev/face-parsing
  .PyTorch README for its GitHub release asset of the same weights; the Hugging Face copies of
  79999_iter.pth are mirrors (a copy whose bytes differ is rejected by the checksum). No exact size was
  found pinned: the size is the README's rounded 50.8 MB, used for progress only (as for lipsync_expert).

Licences: the Wav2Lip weights (trained on LRS2) are for non-commercial research use only, per the
Wav2Lip README; InsightFace's pretrained packs are non-commercial research only; GFPGAN's code and
released weights are Apache-2.0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lipsync.errors import UnknownModel

ModelKind = Literal["torch", "onnx_pack"]

WAV2LIP_LICENCE = (
    "Wav2Lip weights: non-commercial research use only (trained on LRS2; commercial use prohibited "
    "by the Wav2Lip authors)"
)
INSIGHTFACE_LICENCE = "InsightFace pretrained models: non-commercial research use only"
GFPGAN_LICENCE = "Apache-2.0 (TencentARC GFPGAN code and released weights)"
FACE_PARSING_LICENCE = (
    "face-parsing.PyTorch code: MIT; weights trained on CelebAMask-HQ, whose images are for "
    "non-commercial research and education only"
)


@dataclass(frozen=True, slots=True)
class ArchiveMember:
    """One file we use from inside an archive release (checked after extraction)."""

    name: str
    sha256: str | None
    size: int | None
    purpose: str


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A downloadable model file. ``urls`` are tried in order (primary first, then mirrors)."""

    name: str
    filename: str
    urls: tuple[str, ...]
    sha256: str | None
    size: int | None
    licence: str
    purpose: str
    kind: ModelKind = "torch"
    members: tuple[ArchiveMember, ...] = ()

    @property
    def url(self) -> str:
        return self.urls[0]

    @property
    def is_archive(self) -> bool:
        return bool(self.members)

    def member(self, name: str) -> ArchiveMember:
        for member in self.members:
            if member.name == name:
                return member
        raise UnknownModel(f"{self.name} has no member {name!r}; members: {[m.name for m in self.members]}")


_HF_NEKOCHU = "https://huggingface.co/Nekochu/Wav2Lip/resolve/main"
_HF_CAMENDURU = "https://huggingface.co/camenduru/Wav2Lip/resolve/main/checkpoints"
_GFPGAN_RELEASES = "https://github.com/TencentARC/GFPGAN/releases/download"

CATALOG: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="wav2lip_gan",
            filename="wav2lip_gan.pth",
            urls=(f"{_HF_NEKOCHU}/wav2lip_gan.pth", f"{_HF_CAMENDURU}/wav2lip_gan.pth"),
            sha256="ca9ab7b7b812c0e80a6e70a5977c545a1e8a365a6c49d5e533023c034d7ac3d8",
            size=435_801_865,
            licence=WAV2LIP_LICENCE,
            purpose="lip-sync generator, GAN-trained (default: sharper mouths)",
        ),
        ModelSpec(
            name="wav2lip",
            filename="wav2lip.pth",
            urls=(
                "https://huggingface.co/rippertnt/wav2lip/resolve/main/checkpoints/wav2lip.pth",
                f"{_HF_CAMENDURU}/wav2lip.pth",
                f"{_HF_NEKOCHU}/wav2lip.pth",
            ),
            sha256="b78b681b68ad9fe6c6fb1debc6ff43ad05834a8af8a62ffc4167b7b34ef63c37",
            size=435_807_851,
            licence=WAV2LIP_LICENCE,
            purpose="lip-sync generator without GAN (more accurate sync, blurrier)",
        ),
        ModelSpec(
            name="lipsync_expert",
            filename="lipsync_expert.pth",
            urls=(f"{_HF_NEKOCHU}/lipsync_expert.pth", f"{_HF_CAMENDURU}/lipsync_expert.pth"),
            sha256=None,  # no public checksum found; see the module docstring
            size=197_357_631,
            licence=WAV2LIP_LICENCE,
            purpose="SyncNet lip-sync expert: scores audio/lip sync of a result",
        ),
        ModelSpec(
            name="gfpgan_v1.4",
            filename="GFPGANv1.4.pth",
            urls=(
                f"{_GFPGAN_RELEASES}/v1.3.0/GFPGANv1.4.pth",
                f"{_GFPGAN_RELEASES}/v1.3.4/GFPGANv1.4.pth",
            ),
            sha256="e2cd4703ab14f4d01fd1383a8a8b266f9a5833dacee8e6a79d3bf21a1b6be5ad",
            size=348_632_874,
            licence=GFPGAN_LICENCE,
            purpose="face restoration (optional enhance step)",
        ),
        ModelSpec(
            name="face_parsing",
            filename="face-parsing-bisenet.pth",
            urls=(
                "https://github.com/clibdev/face-parsing.PyTorch/releases/latest/download/face-parsing-bisenet.pth",
                "https://huggingface.co/vivym/face-parsing-bisenet/resolve/main/79999_iter.pth",
                "https://huggingface.co/ManyOtherFunctions/face-parse-bisent/resolve/main/79999_iter.pth",
            ),
            sha256="468e13ca13a9b43cc0881a9f99083a430e9c0a38abd935431d1c28ee94b26567",
            size=53_267_660,  # the README's rounded "50.8 MB" (MiB): a progress hint, never a check
            licence=FACE_PARSING_LICENCE,
            purpose="face parsing (BiSeNet): the occlusion-aware mask keeps the mouth off hands, mics",
        ),
        ModelSpec(
            name="buffalo_l",
            filename="buffalo_l.zip",
            urls=(
                "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
                # a re-upload of the same release; if its bytes differ the zip checksum rejects it
                "https://huggingface.co/vladmandic/insightface-faceanalysis/resolve/main/buffalo_l.zip",
            ),
            sha256="80ffe37d8a5940d59a7384c201a2a38d4741f2f3c51eef46ebb28218a7b0ca2f",
            size=288_621_354,
            licence=INSIGHTFACE_LICENCE,
            purpose="face detection (SCRFD-10G) and identity embeddings (ArcFace R50)",
            kind="onnx_pack",
            members=(
                ArchiveMember(
                    "det_10g.onnx",
                    "5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91",
                    16_923_827,
                    "SCRFD-10G face detector with 5 keypoints",
                ),
                ArchiveMember(
                    "w600k_r50.onnx",
                    "4c06341c33c2ca1f86781dab0e829f88ad5b64be9fba56e56bc9ebdefc619e43",
                    174_383_860,
                    "ArcFace ResNet-50 (WebFace600K) face embeddings",
                ),
            ),
        ),
    )
}

# The networks lipsync builds in torch (lipsync.nets.NETWORKS has the same names).
TORCH_MODELS: tuple[str, ...] = tuple(name for name, spec in CATALOG.items() if spec.kind == "torch")


def get_spec(name: str) -> ModelSpec:
    """The catalog entry for ``name``, or UnknownModel listing the valid names."""
    try:
        return CATALOG[name]
    except KeyError:
        raise UnknownModel(f"unknown model {name!r}; known models: {', '.join(CATALOG)}") from None
