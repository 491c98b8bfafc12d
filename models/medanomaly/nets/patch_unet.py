"""The pneumonia paper's patch autoencoder: a U-Net with skip connections from a 32 px patch down to an 8 px
bottleneck and back, ending in a sigmoid so that the output is an intensity in [0, 1] like the input."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import UNet
from torch import nn


class PatchUNetAutoEncoder(nn.Module):
    """MONAI UNet with two stride-2 levels (32 -> 16 -> 8 px) for `channels` of length 3."""

    def __init__(self, channels: Sequence[int] = (16, 32, 64), num_res_units: int = 1):
        super().__init__()
        strides = (2,) * (len(channels) - 1)
        self.unet = UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=tuple(channels), strides=strides,
                         num_res_units=num_res_units, norm="BATCH")
        self.bottleneck_scale = 2 ** len(strides)  # input size / bottleneck size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.unet(x))
