"""Model catalog, download, verification and loading.

Stable public API::

    from lipsync.models import load_network
    net = load_network("wav2lip_gan", "/path/to/wav2lip_gan.pth", device="cpu")

Names are resolved lazily so that catalog and download users (``lipsync models list``, worker processes
that only fetch files) do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    # loading
    "load_network": "loading",
    "load_into": "loading",
    "load_state_dict_file": "loading",
    "load_checkpoint_object": "loading",
    "extract_state_dict": "loading",
    "check_layout": "loading",
    # device
    "resolve_device": "device",
    "device_kind": "device",
    "prepare_module": "device",
    "use_fp16": "device",
    "module_dtype": "device",
    "inference": "device",
    # catalog
    "CATALOG": "catalog",
    "TORCH_MODELS": "catalog",
    "ArchiveMember": "catalog",
    "ModelSpec": "catalog",
    "get_spec": "catalog",
    # download
    "DownloadOptions": "download",
    "ProgressCallback": "download",
    "download": "download",
    "extract_zip": "archive",
    "sha256_file": "download",
    # store
    "ModelStore": "store",
    "ModelStatus": "store",
    "env_var": "store",
}

__all__ = [
    "CATALOG",
    "TORCH_MODELS",
    "ArchiveMember",
    "DownloadOptions",
    "ModelSpec",
    "ModelStatus",
    "ModelStore",
    "ProgressCallback",
    "check_layout",
    "device_kind",
    "download",
    "env_var",
    "extract_state_dict",
    "extract_zip",
    "get_spec",
    "inference",
    "load_checkpoint_object",
    "load_into",
    "load_network",
    "load_state_dict_file",
    "module_dtype",
    "prepare_module",
    "resolve_device",
    "sha256_file",
    "use_fp16",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from lipsync.models.archive import extract_zip
    from lipsync.models.catalog import CATALOG, TORCH_MODELS, ArchiveMember, ModelSpec, get_spec
    from lipsync.models.device import (
        device_kind,
        inference,
        module_dtype,
        prepare_module,
        resolve_device,
        use_fp16,
    )
    from lipsync.models.download import DownloadOptions, ProgressCallback, download, sha256_file
    from lipsync.models.loading import (
        check_layout,
        extract_state_dict,
        load_checkpoint_object,
        load_into,
        load_network,
        load_state_dict_file,
    )
    from lipsync.models.store import ModelStatus, ModelStore, env_var


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lipsync.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"lipsync.models.{module}"), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
