"""Choosing the compute device and preparing a loaded network for it.

fp16 and channels_last are decisions per network and device: fp16 only ever on CUDA (CPU half-precision
convolutions are slow or unsupported), channels_last only where it was measured to help (the nets
benchmark decides; ``prepare_module`` is the one place that applies it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from lipsync.errors import DeviceUnavailable, InputError


def resolve_device(choice: str = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cpu``; ``cuda`` or ``cuda:N`` (must exist)."""
    choice = (choice or "auto").strip().lower()
    if choice == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "cuda" or choice.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceUnavailable(
                f"device {choice!r} was requested but CUDA is not available here "
                f"(torch {torch.__version__}, built for CUDA: {torch.version.cuda or 'no'}); "
                "set LIPSYNC_DEVICE=cpu or auto, or install a CUDA build of torch",
                field="device",
            )
        device = torch.device(choice)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceUnavailable(
                f"device {choice!r} was requested but only {torch.cuda.device_count()} CUDA device(s) exist",
                field="device",
            )
        return device
    raise InputError(f"unknown device {choice!r}; use auto, cpu, cuda or cuda:N", field="device")


def use_fp16(device: torch.device, enabled: bool = True) -> bool:
    """Whether a generator should run in float16: only when asked for and on CUDA."""
    return bool(enabled) and device.type == "cuda"


def prepare_module(
    module: nn.Module,
    device: torch.device | str = "cpu",
    *,
    fp16: bool = False,
    channels_last: bool = False,
) -> nn.Module:
    """Move to ``device``, set eval mode and freeze; optionally half precision (CUDA only) and
    channels_last memory format. Returns the same module."""
    device = torch.device(device)
    module = module.to(device)
    if use_fp16(device, fp16):
        module = module.half()
    if channels_last:
        # Not module.to(memory_format=...): that refuses GFPGAN's 5-D modulated-conv weights.
        from lipsync.nets import to_channels_last

        module = to_channels_last(module)
    module.eval()
    module.requires_grad_(False)
    return module


def module_dtype(module: nn.Module) -> torch.dtype:
    """The floating dtype of a module's parameters (float32 when it has none)."""
    for param in module.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32


@contextlib.contextmanager
def inference() -> Iterator[None]:
    """The context every forward pass runs in: no autograd bookkeeping at all."""
    with torch.inference_mode():
        yield
