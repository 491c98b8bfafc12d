"""The mammography paper's baseline autoencoder: conv + max-pool three times to a one-channel latent at 1/8 of
the input (20 x 20 x 1 for 160 x 160), then conv + upsampling back to the input size."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from torch import nn


class ConvAutoEncoder(nn.Module):
    def __init__(self, in_channels: int = 1, channels: Sequence[int] = (16, 32, 64), latent_channels: int = 1):
        super().__init__()
        encoder, previous = [], in_channels
        for width in channels:
            encoder += [Convolution(2, previous, width, kernel_size=3, act="RELU", norm="BATCH"), nn.MaxPool2d(2)]
            previous = width
        # A one-channel bottleneck: the narrow latent is what makes the model fail on what it has not seen.
        encoder.append(Convolution(2, previous, latent_channels, kernel_size=3, act="RELU", norm="BATCH"))
        self.encoder = nn.Sequential(*encoder)

        decoder, previous = [], latent_channels
        for width in reversed(channels):
            decoder += [nn.Upsample(scale_factor=2, mode="nearest"),
                        Convolution(2, previous, width, kernel_size=3, act="RELU", norm="BATCH")]
            previous = width
        decoder += [Convolution(2, previous, in_channels, kernel_size=3, conv_only=True), nn.Sigmoid()]
        self.decoder = nn.Sequential(*decoder)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))
