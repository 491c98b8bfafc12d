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


class MaxPoolNearestUNet(nn.Module):
    """The paper's U-Net shape: two 3x3 convs per level, 2x2 max-pooling down, pixel replication (nearest-neighbour)
    upsampling, skip connections by concatenation, sigmoid output.

    Built from the blocks of MONAI's `BasicUNet` (`TwoConv`, `Down` = max-pool + two convs, `UpCat` with
    `upsample="nontrainable"`). `BasicUNet` itself always has four pooling levels (a 32 px patch would shrink to a
    2 px bottleneck) and does not expose the interpolation mode (it upsamples bilinearly), so its blocks are
    stacked here at the depth `channels` asks for (3 entries: 32 -> 16 -> 8 px) with `interp_mode="nearest"`.
    Batch norm, not BasicUNet's instance norm: instance norm after the first conv would discard each patch's mean
    brightness and contrast, which an autoencoder of intensities must keep."""

    def __init__(self, channels: Sequence[int] = (16, 32, 64), norm: str = "batch"):
        super().__init__()
        from monai.networks.nets.basic_unet import Down, TwoConv, UpCat

        act = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True})
        channels = tuple(int(c) for c in channels)
        self.first = TwoConv(2, 1, channels[0], act, norm, True)
        self.downs = nn.ModuleList(Down(2, channels[k], channels[k + 1], act, norm, True)
                                   for k in range(len(channels) - 1))
        self.ups = nn.ModuleList(
            UpCat(2, channels[k + 1], channels[k], channels[k], act, norm, True, upsample="nontrainable",
                  interp_mode="nearest", align_corners=None, halves=k > 0)
            for k in reversed(range(len(channels) - 1)))
        self.last = nn.Conv2d(channels[0], 1, kernel_size=1)
        self.bottleneck_scale = 2 ** (len(channels) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.first(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        out = skips.pop()
        for up in self.ups:
            out = up(out, skips.pop())
        return torch.sigmoid(self.last(out))
