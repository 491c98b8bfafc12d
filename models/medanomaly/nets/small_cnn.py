"""The supervised CNN of the chest X-ray VAE paper: Conv32-Conv32-MaxPool-Dropout0.25-FC128-Dropout0.5-Softmax."""
from __future__ import annotations

import torch
from monai.networks.blocks import Convolution
from torch import nn


class SmallChestCNN(nn.Module):
    """(N, C, S, S) -> (N, K) logits (the softmax is in the loss). Valid 3x3 convolutions as in Keras' default,
    so a 100x100 input gives 32 x 48 x 48 features before the dense layer."""

    def __init__(self, num_classes: int = 2, in_channels: int = 1, image_size: int = 100, filters: int = 32,
                 hidden: int = 128):
        super().__init__()
        self.features = nn.Sequential(
            Convolution(2, in_channels, filters, kernel_size=3, padding=0, act="RELU", norm=None),
            Convolution(2, filters, filters, kernel_size=3, padding=0, act="RELU", norm=None),
        )
        pooled = (image_size - 4) // 2
        self.classifier = nn.Sequential(
            nn.MaxPool2d(2), nn.Dropout(0.25), nn.Flatten(),
            nn.Linear(filters * pooled * pooled, hidden), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
