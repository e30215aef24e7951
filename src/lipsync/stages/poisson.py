"""Poisson (seamless) cloning in torch, for frames that already live on a CUDA device.

The same problem as ``cv2.seamlessClone`` with NORMAL_CLONE, solved the same way, so the two agree within
2 grey levels (tests/test_poisson.py); the CPU path keeps OpenCV (``stages.composite``):

* the solve runs over the bounding rectangle of the mask, after the mask's outer one-pixel ring is
  cleared; the rectangle's border pixels are fixed to the frame's (Dirichlet boundary);
* the guidance field is the forward-difference gradient of the clone source inside the mask eroded by a
  7x7 square (OpenCV erodes three times with a 3x3 kernel), and the frame's own gradient elsewhere;
* its divergence (backward differences) minus the boundary's contribution is inverted in the basis of
  the type-I discrete sine transform, where the 5-point Laplacian is diagonal with eigenvalues
  ``2 cos(pi k / (n + 1)) - 2`` per axis;
* values are clamped to 0..255 and truncated (not rounded), as OpenCV does.

The DST is a matrix product with a cached sine matrix per size, so equal-sized crops (one face tracked
through a shot keeps its size) are solved as one batched product: O(n^3) flops, but dense GPU work.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from lipsync.errors import InputError

ERODE_SIDE = 7  # three 3x3 erosions
MIN_SIDE = 3  # a solve needs an interior: at least one pixel inside the fixed border


@lru_cache(maxsize=32)
def _sine_basis(n: int, device: str, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(S, eigenvalues): S[k, i] = sin(pi (k+1)(i+1) / (n+1)), symmetric, S @ S = (n+1)/2 I."""
    k = torch.arange(1, n + 1, dtype=torch.float64)
    basis = torch.sin(math.pi * k[:, None] * k[None, :] / (n + 1))
    eig = 2.0 * torch.cos(math.pi * k / (n + 1)) - 2.0
    return basis.to(device, dtype), eig.to(device, dtype)


def _dst2(x: Tensor, sy: Tensor, sx: Tensor) -> Tensor:
    return sy @ x @ sx


def poisson_clone(source: Tensor, dest: Tensor, mask: Tensor) -> Tensor:
    """Seamless-clone ``source`` into ``dest`` where ``mask`` is set, with the two images aligned.

    ``source``, ``dest``: (N, C, H, W) uint8 or float in 0..255, on any device; ``mask``: (N, H, W) or
    (H, W), nonzero = clone. Returns ``dest`` (as float32, N x C x H x W) with the mask's bounding
    rectangle replaced by the Poisson solution, integer-valued like OpenCV's uint8 output. All items of
    a batch share one size; their masks may differ.
    """
    if source.shape != dest.shape or source.dim() != 4:
        raise InputError(f"source {tuple(source.shape)} and dest {tuple(dest.shape)} must be equal NxCxHxW")
    n, _, h, w = dest.shape
    if mask.dim() == 2 and mask.shape == (h, w):
        mask = mask.expand(n, h, w)
    if mask.shape != (n, h, w):
        raise InputError(f"mask {tuple(mask.shape)} does not fit images {tuple(dest.shape)}", field="mask")
    src, dst = source.float(), dest.float()
    support = mask != 0
    # The outer ring never clones (OpenCV clears it), so the rectangle always has frame pixels around it.
    support[:, 0, :] = support[:, -1, :] = False
    support[:, :, 0] = support[:, :, -1] = False
    guide = _erode(support)
    out = dst.clone()
    for i in range(n):
        rows = torch.nonzero(support[i].any(dim=1)).flatten()
        cols = torch.nonzero(support[i].any(dim=0)).flatten()
        if rows.numel() == 0:
            continue
        y0, y1 = int(rows[0]), int(rows[-1]) + 1
        x0, x1 = int(cols[0]), int(cols[-1]) + 1
        if min(y1 - y0, x1 - x0) < MIN_SIDE:
            continue
        box = (slice(y0, y1), slice(x0, x1))
        out[i, :, y0:y1, x0:x1] = _solve(
            src[i, :, box[0], box[1]] * support[i, box[0], box[1]],
            dst[i, :, box[0], box[1]],
            guide[i, box[0], box[1]],
        )
    return out


def _erode(support: Tensor) -> Tensor:
    """(N, H, W) float: the mask eroded by a 7x7 square over the whole image (OpenCV erodes the rectangle
    as a view, so it sees the cleared pixels around it), the image's outside counting as set (erode's
    default border)."""
    inverted = (~support).float()[:, None]
    pad = ERODE_SIDE // 2
    inverted = F.pad(inverted, (pad, pad, pad, pad), value=0.0)
    return 1.0 - F.max_pool2d(inverted, ERODE_SIDE, stride=1)[:, 0]


def _solve(src: Tensor, dst: Tensor, guide: Tensor) -> Tensor:
    """One rectangle: (C, h, w) source (zeroed outside the mask), frame and eroded mask -> the solution."""
    _, h, w = dst.shape

    def grad(img: Tensor) -> tuple[Tensor, Tensor]:
        # Forward differences; the last column/row differences against its mirror (reflect-101).
        gx = torch.cat([img[..., :, 1:] - img[..., :, :-1], img[..., :, -2:-1] - img[..., :, -1:]], dim=-1)
        gy = torch.cat([img[..., 1:, :] - img[..., :-1, :], img[..., -2:-1, :] - img[..., -1:, :]], dim=-2)
        return gx, gy

    sgx, sgy = grad(src)
    dgx, dgy = grad(dst)
    gx = sgx * guide + dgx * (1.0 - guide)
    gy = sgy * guide + dgy * (1.0 - guide)
    # Divergence by backward differences, on the interior only (the border is fixed).
    div = (gx[:, 1:-1, 1:-1] - gx[:, 1:-1, :-2]) + (gy[:, 1:-1, 1:-1] - gy[:, :-2, 1:-1])
    # Move the known border values to the right-hand side: the interior pixels next to the border see them.
    bound = dst.clone()
    bound[:, 1:-1, 1:-1] = 0.0
    known = bound[:, :-2, 1:-1] + bound[:, 2:, 1:-1] + bound[:, 1:-1, :-2] + bound[:, 1:-1, 2:]
    rhs = div - known
    ih, iw = h - 2, w - 2
    # float64 on every device: TF32 matmuls (if enabled) would cost grey levels. A 300x300 crop needs about
    # 0.65 GFLOP of it (4 products per channel), well within a GPU's fp64 rate.
    dtype = torch.float64
    sy, ey = _sine_basis(ih, str(dst.device), dtype)
    sx, ex = _sine_basis(iw, str(dst.device), dtype)
    coeff = _dst2(rhs.to(dtype), sy, sx) / (ey[:, None] + ex[None, :])
    interior = _dst2(coeff, sy, sx) * (4.0 / ((ih + 1) * (iw + 1)))
    result = dst.clone()
    result[:, 1:-1, 1:-1] = interior.to(dst.dtype).clamp(0.0, 255.0).floor()
    return result


def poisson_clone_numpy(source, dest, mask, device: str | torch.device = "cpu"):
    """``poisson_clone`` on one HxWx3 uint8 pair and an HxW mask (numpy in, numpy uint8 out)."""
    import numpy as np

    def to_t(a):
        return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].to(device)

    out = poisson_clone(to_t(source), to_t(dest), torch.from_numpy(np.asarray(mask)).to(device))
    return out[0].permute(1, 2, 0).clamp(0, 255).to(torch.uint8).cpu().numpy()
