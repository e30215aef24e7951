"""Reading checkpoint files safely and loading them into networks strictly.

Public checkpoints come in several shapes: the legacy (pre-1.6, non-zip) torch pickle and the zip
format; a training dict with ``state_dict`` (Wav2Lip, SyncNet) or ``params_ema``/``params`` (GFPGAN,
where ``params_ema`` is the one meant for inference); keys with or without the ``module.`` prefix that
``nn.DataParallel`` adds. All are read with ``weights_only=True``: a file whose unpickling would need
arbitrary code is refused instead of executed.
"""

from __future__ import annotations

import itertools
import logging
import pickle
import re
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lipsync.errors import CheckpointError, CheckpointLayoutError, UnknownModel, UnsafeCheckpoint
from lipsync.models.device import prepare_module

log = logging.getLogger(__name__)

# Where the weights live inside a training checkpoint, in order of preference.
STATE_DICT_KEYS: tuple[str, ...] = ("params_ema", "params", "state_dict")
DATA_PARALLEL_PREFIX = "module."
# How many names an error message lists per category before summarising the rest.
MAX_LISTED_KEYS = 8

# Phrases of torch's weights-only unpickler that mean "this file wants to run or build something
# that is not plain tensors and containers" (as opposed to "this is not a pickle at all").
_UNSAFE_MARKERS = (
    "unsupported global",
    "unsupported class",
    "not an allowed global",
    "unrecognized function",
    "can only build",
    "trying to",
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def load_checkpoint_object(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU with errors turned into CheckpointError kinds."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file", field="path")
    try:
        # Zip-format files can be memory-mapped: tensors are read from the page cache instead of
        # being copied into RAM first (the legacy format does not support it).
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        text = _ANSI.sub("", str(exc))
        detail = text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()[0].strip() or text[:200]
        if any(marker in text.lower() for marker in _UNSAFE_MARKERS):
            raise UnsafeCheckpoint(
                f"refusing to load {path}: unpickling it would need arbitrary Python objects or code "
                f"({detail}). Only plain tensor checkpoints are accepted (torch.load weights_only=True); "
                "re-save the weights as a state_dict from a trusted environment.",
                field="path",
            ) from None
        raise CheckpointError(
            f"{path} is not a readable torch checkpoint ({detail}); it may be truncated, an HTML "
            "error page, or a different format. Delete it and download again.",
            field="path",
        ) from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CheckpointError(
            f"could not read checkpoint {path}: {type(exc).__name__}: {str(exc)[:300] or 'unexpected end'}; "
            "the file may be truncated or corrupt. Delete it and download again.",
            field="path",
        ) from None


def extract_state_dict(obj: Any, *, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensor dict inside a loaded checkpoint, with any ``module.`` prefix removed."""
    state = obj
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                state = obj[key]
                break
    has_tensors = isinstance(state, Mapping) and any(isinstance(v, torch.Tensor) for v in state.values())
    if not has_tensors:
        kind = f"keys {_listing(map(str, obj.keys()))}" if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointLayoutError(
            f"{source} holds no state dict (expected a dict of tensors, or one under "
            f"{'/'.join(STATE_DICT_KEYS)}); found {kind}"
        )
    out: dict[str, torch.Tensor] = {}
    not_tensors = []
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            not_tensors.append(str(key))
            continue
        name = str(key)
        if name.startswith(DATA_PARALLEL_PREFIX):
            name = name[len(DATA_PARALLEL_PREFIX) :]
        out[name] = value
    if not_tensors:
        raise CheckpointLayoutError(
            f"{source}: state dict entries that are not tensors: {_listing(not_tensors)}"
        )
    return out


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file (legacy or zip) and return its weights as a plain state dict."""
    return extract_state_dict(load_checkpoint_object(path), source=str(path))


def check_layout(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str = "checkpoint"
) -> None:
    """Raise CheckpointLayoutError naming missing, unexpected and mis-shaped keys, if any."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [
        f"{k} (file {tuple(state_dict[k].shape)}, network {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or misshaped):
        return
    parts = []
    if missing:
        parts.append(f"missing {len(missing)}: {_listing(missing)}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)}: {_listing(unexpected)}")
    if misshaped:
        parts.append(f"mis-shaped {len(misshaped)}: {_listing(misshaped)}")
    raise CheckpointLayoutError(
        f"{source} does not fit {type(module).__name__}: "
        + "; ".join(parts)
        + ". Is it the right model file?"
    )


def load_into(module: nn.Module, path: str | Path, *, assign: bool = False) -> nn.Module:
    """Load the weights in ``path`` into ``module`` strictly (layout checked first). Returns ``module``.
    ``assign``: the file's tensors become the module's (for a module built on the meta device)."""
    state_dict = load_state_dict_file(path)
    # BatchNorm's batch counters are training bookkeeping that checkpoints saved before torch 0.4.1 lack.
    for key, value in module.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in state_dict:
            state_dict[key] = torch.zeros_like(value, device="cpu") if value.is_meta else value
    check_layout(module, state_dict, source=str(path))
    module.load_state_dict(state_dict, strict=True, assign=assign)
    return module


# Networks built on the meta device before loading (build_and_load). Not GFPGAN: its initialisers on meta
# tensors go through torch's decompositions, whose first use imports torch._dynamo (seconds, and a cache
# folder under TMPDIR).
META_BUILT = frozenset({"wav2lip", "wav2lip_gan"})


def build_and_load(factory: Callable[[], nn.Module], path: str | Path) -> nn.Module:
    """``factory()`` with the weights of ``path``. The network is built on the meta device, so its random
    initialisation (a third of Wav2Lip's load time on a CPU, all of it holding the GIL) is never computed;
    a network holding tensors the file does not fill (non-persistent buffers) is built normally instead."""
    with torch.device("meta"):
        module = factory()
    load_into(module, path, assign=True)
    if any(t.is_meta for t in itertools.chain(module.parameters(), module.buffers())):
        return load_into(factory(), path)
    return module


def network_factory(name: str) -> Callable[[], nn.Module]:
    """The constructor lipsync.nets registers for ``name``."""
    from lipsync.nets import NETWORKS  # the networks live beside this package; imported on use

    try:
        return NETWORKS[name]
    except KeyError:
        raise UnknownModel(f"no network named {name!r}; known networks: {', '.join(NETWORKS)}") from None


def load_network(
    name: str,
    path: str | Path,
    device: str | torch.device = "cpu",
    *,
    fp16: bool = False,
    channels_last: bool = False,
) -> nn.Module:
    """Build network ``name`` (wav2lip_gan, wav2lip, lipsync_expert, gfpgan_v1.4, face_parsing), load ``path`` into it
    strictly and return it in eval mode with gradients off, on ``device``.

    ``fp16`` applies on CUDA only; ``channels_last`` converts the memory format. The file is used as
    is: its layout is checked, never its checksum (bring-your-own weights)."""
    factory = network_factory(name)
    module = build_and_load(factory, path) if name in META_BUILT else load_into(factory(), path)
    log.debug("loaded %s from %s", name, path)
    return prepare_module(module, device, fp16=fp16, channels_last=channels_last)


def _listing(names: Iterable[str]) -> str:
    names = list(names)
    shown = ", ".join(names[:MAX_LISTED_KEYS])
    if len(names) > MAX_LISTED_KEYS:
        shown += f", ... (+{len(names) - MAX_LISTED_KEYS} more)"
    return shown
