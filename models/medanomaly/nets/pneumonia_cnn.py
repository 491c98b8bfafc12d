"""The pneumonia paper's supervised baseline: three 3x3 conv layers, each followed by max-pooling, then batch
norm, a fully connected layer, dropout 0.5 and the output layer."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import nn


class SmallPneumoniaCNN(nn.Module):
    """(N, C, S, S) -> (N, num_classes) logits. The last conv layer is `features.conv3` (Grad-CAM's target)."""

    def __init__(self, image_size: int = 224, in_channels: int = 1, channels: Sequence[int] = (16, 32, 64),
                 hidden: int = 64, num_classes: int = 2, dropout: float = 0.5):
        super().__init__()
        layers, previous = OrderedDict(), in_channels
        for k, width in enumerate(channels, start=1):
            layers[f"conv{k}"] = Convolution(2, previous, width, kernel_size=3, act="RELU", norm=None)
            layers[f"pool{k}"] = nn.MaxPool2d(2)
            previous = width
        self.features = nn.Sequential(layers)
        side = image_size // 2 ** len(channels)
        self.head = nn.Sequential(nn.BatchNorm2d(previous), nn.Flatten(), nn.Linear(previous * side * side, hidden),
                                  nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
