"""GiMeFive, the paper's best model (Wang & Kawka, arXiv 2402.15662).

Attribute names (conv1..conv5, bn1..bn5, fc1..fc3) match the authors' code, so a
state dict saved there with ``torch.save(model.state_dict(), ...)`` loads unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gimefive.labels import NUM_CLASSES

CONV_WIDTHS = (64, 128, 256, 512, 1024)
PAPER_PARAMETER_COUNT = 10_478_086


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters stored inside every checkpoint so weights rebuild their model."""

    num_classes: int = NUM_CLASSES
    input_size: int = 64
    conv_dropout: float = 0.2
    fc_dropout: float = 0.5

    def to_dict(self) -> dict:
        return asdict(self)


class GiMeFive(nn.Module):
    """Five conv blocks (3x3 conv, BN, ReLU, 2x2 max-pool) and a 1024-2048-1024-C MLP."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        widths = (3, *CONV_WIDTHS)
        for i in range(5):
            setattr(self, f"conv{i + 1}", nn.Conv2d(widths[i], widths[i + 1], 3, padding=1))
            setattr(self, f"bn{i + 1}", nn.BatchNorm2d(widths[i + 1]))
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc1 = nn.Linear(CONV_WIDTHS[-1], 2048)
        self.fc2 = nn.Linear(2048, 1024)
        self.fc3 = nn.Linear(1024, self.config.num_classes)
        self.dropout1 = nn.Dropout(self.config.conv_dropout)
        self.dropout2 = nn.Dropout(self.config.fc_dropout)

    def blocks(self) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
        return [(getattr(self, f"conv{i}"), getattr(self, f"bn{i}")) for i in range(1, 6)]

    def forward_with(self, x: torch.Tensor, keep: tuple[str, ...] = ()):
        """Logits plus the raw conv outputs named in ``keep`` (e.g. ``("conv5",)``).

        The kept tensors are the conv layers' outputs before BatchNorm, which is
        where the paper hooks Grad-CAM.
        """
        kept: dict[str, torch.Tensor] = {}
        for i, (conv, bn) in enumerate(self.blocks(), start=1):
            x = conv(x)
            if f"conv{i}" in keep:
                kept[f"conv{i}"] = x
            x = F.max_pool2d(F.relu(bn(x)), 2)
            if i < 5:
                x = self.dropout1(x)
        x = self.pool(x).flatten(1)
        x = self.dropout2(F.relu(self.fc1(x)))
        return self.fc3(F.relu(self.fc2(x))), kept

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with(x)[0]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
