"""A stand-in for InsightFace's buffalo_l recogniser (w600k_r50, an IResNet-50) with seeded random weights.

Benchmarks time a recogniser of the real size, but the real weights cannot be downloaded here. This builds
the same architecture (43.6 M parameters, about 166 MB as ONNX) and exports it with the real file's input
name and layout, so ``lipsync.faces.arcface.ArcFaceRecognizer`` runs on it unchanged. The embeddings mean
nothing; only the cost is real.

Layout: NCHW float32 (N, 3, 112, 112) named ``input.1`` (N dynamic) -> one output (N, 512) named ``embedding``
(the real file calls it ``683``; the recogniser reads whatever name the session reports).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

LAYERS = (3, 4, 14, 3)
WIDTHS = (64, 128, 256, 512)
EPS = 1e-5
INPUT_NAME = "input.1"
OUTPUT_NAME = "embedding"  # the real file's "683" is not a name TorchScript export accepts
INPUT_SIZE = 112
EMBEDDING_SIZE = 512


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class _IBasicBlock(nn.Module):
    """BN -> conv3x3 -> BN -> PReLU -> conv3x3 (stride s) -> BN, plus the shortcut; no activation after."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin, eps=EPS),
            _conv3x3(cin, cout),
            nn.BatchNorm2d(cout, eps=EPS),
            nn.PReLU(cout),
            _conv3x3(cout, cout, stride),
            nn.BatchNorm2d(cout, eps=EPS),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout, eps=EPS)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class IResNet50(nn.Module):
    """IResNet-50 as in w600k_r50: stem, four stages of [3, 4, 14, 3] blocks, BN, flatten, FC, BN1d."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            _conv3x3(3, WIDTHS[0]), nn.BatchNorm2d(WIDTHS[0], eps=EPS), nn.PReLU(WIDTHS[0])
        )
        blocks: list[nn.Module] = []
        cin = WIDTHS[0]
        for n, width in zip(LAYERS, WIDTHS, strict=True):
            for i in range(n):
                blocks.append(_IBasicBlock(cin, width, 2 if i == 0 else 1))
                cin = width
        self.stages = nn.Sequential(*blocks)
        self.bn2 = nn.BatchNorm2d(cin, eps=EPS)
        self.dropout = nn.Dropout(p=0.0)  # identity at inference, as in the real model
        side = INPUT_SIZE // 2 ** len(LAYERS)  # 7
        self.fc = nn.Linear(cin * side * side, EMBEDDING_SIZE)
        self.features = nn.BatchNorm1d(EMBEDDING_SIZE, eps=EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn2(self.stages(self.stem(x)))
        x = torch.flatten(self.dropout(x), 1)
        return self.features(self.fc(x))


def _randomise(model: nn.Module, generator: torch.Generator) -> None:
    """Seeded He-scaled weights and BN statistics measured on noise, then jittered: finite, non-degenerate."""

    def normal(t: torch.Tensor, std: float, mean: float = 0.0) -> None:
        t.copy_(torch.randn(t.shape, generator=generator) * std + mean)

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                normal(m.weight, (2.0 / m.weight[0].numel()) ** 0.5)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                normal(m.weight, 0.1, 1.0)
                normal(m.bias, 0.1)
            elif isinstance(m, nn.PReLU):
                normal(m.weight, 0.02, 0.25)
        # Running statistics from one batch of noise (so activations keep a sane scale through the 24
        # residual blocks, as a trained model's do), then jittered a little.
        norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]
        for m in norms:
            m.momentum = 1.0
        model.train()
        model(torch.randn(8, 3, INPUT_SIZE, INPUT_SIZE, generator=generator))
        for m in norms:
            m.running_mean.add_(torch.randn(m.running_mean.shape, generator=generator) * 0.05)
            m.running_var.mul_(0.9 + 0.2 * torch.rand(m.running_var.shape, generator=generator))
            m.momentum = 0.1


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_random_arcface(seed: int = 0) -> IResNet50:
    """The IResNet-50 in eval mode with weights drawn from ``seed``."""
    model = IResNet50()
    _randomise(model, torch.Generator().manual_seed(seed))
    return model.eval()


def write_random_arcface(path: Path, seed: int = 0) -> Path:
    """Export the seeded IResNet-50 to ONNX at ``path`` (opset 17, dynamic batch); returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = build_random_arcface(seed)
    dummy = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "None"}, OUTPUT_NAME: {0: "None"}},
            do_constant_folding=True,
        )
    return path
