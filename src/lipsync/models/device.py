"""Choosing the compute device and preparing a loaded network for it.

fp16 and channels_last are decisions per network and device: fp16 only ever on CUDA (CPU half-precision
convolutions are slow or unsupported), channels_last only where it was measured to help (the nets
benchmark decides; ``prepare_module`` is the one place that applies it).

torch is imported on first use, not with this module: the run path reaches its first decoded frame
without it (tracking needs no torch), while the generator loads beside it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from lipsync.errors import DeviceUnavailable, InputError

if TYPE_CHECKING:
    import torch
    from torch import nn

_NVIDIA_NODES = ("/dev/nvidiactl", "/dev/nvidia0")


def device_kind(choice: str = "auto") -> str:
    """``cpu`` or ``cuda``: what ``resolve_device(choice)`` would pick, without importing torch where the
    answer is plain (an explicit choice, or a machine with no NVIDIA device node at all)."""
    choice = (choice or "auto").strip().lower()
    if choice == "cpu":
        return "cpu"
    if choice.startswith("cuda"):
        return "cuda"
    if not any(os.path.exists(node) for node in _NVIDIA_NODES):
        return "cpu"
    return resolve_device(choice).type


def resolve_device(choice: str = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cpu``; ``cuda`` or ``cuda:N`` (must exist)."""
    import torch

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
    import torch

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
    import torch

    for param in module.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32


@contextlib.contextmanager
def inference() -> Iterator[None]:
    """The context every forward pass runs in: no autograd bookkeeping at all."""
    import torch

    with torch.inference_mode():
        yield


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is the device running out of memory (CUDA's own type, or the RuntimeError text)."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


class PinnedStaging:
    """Page-locked host buffers, reused batch after batch, for asynchronous host<->CUDA copies.

    A copy from pageable memory makes the driver stage it through a hidden pinned buffer first and blocks
    the host; from a pinned one it is a DMA the host does not wait for. Buffers grow to the largest batch
    seen and are then reused.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def _buffer(self, name: str, like: torch.Tensor) -> torch.Tensor:
        import torch

        buf = self._buffers.get(name)
        if buf is None or buf.dtype != like.dtype or buf.numel() < like.numel():
            buf = torch.empty(like.numel(), dtype=like.dtype, pin_memory=True)
            self._buffers[name] = buf
        return buf[: like.numel()].view(like.shape)

    def upload(self, name: str, host: torch.Tensor) -> torch.Tensor:
        """``host`` copied into a pinned buffer (the caller then copies it to the device non_blocking).
        The previous upload through this buffer must be finished: ``download`` synchronises."""
        staged = self._buffer(name, host)
        staged.copy_(host)
        return staged

    def download(self, device_tensor: torch.Tensor) -> np.ndarray:
        """A host copy of ``device_tensor``: non-blocking into a pinned buffer, then one stream sync."""
        import torch

        staged = self._buffer("out", device_tensor)
        staged.copy_(device_tensor, non_blocking=True)
        torch.cuda.current_stream(device_tensor.device).synchronize()
        return staged.numpy().copy()


def cpu_session_options(threads: int = 1):
    """onnxruntime session options for a model run on a CPU beside the render's other stages: ``threads``
    intra-op threads that sleep when idle (onnxruntime's spinning pool took the cores Wav2Lip needed:
    measured on 2 cores, the tracker's CPU time doubled and the generator's with it), no inter-op pool,
    and warnings only from us (its CUDA-provider fallbacks are reported by lipsync, not as noise)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """numpy's BLAS on one thread for the block. A job's own matrix products are small (the mel's
    filterbank, 2x3 alignments, a few solves); OpenBLAS's worker threads spun on the cores after each
    of them, 0.23 s of CPU a Chaplin job (perf), taken from the stages that run one thread each side by
    side. threadpoolctl restores the previous limit on exit."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield
