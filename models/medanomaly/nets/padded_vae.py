"""MONAI's VarAutoEncoder on a square whose side is not a multiple of its total stride (the chest VAE's 100^2).

With stride-2 layers MONAI's decoder returns a side of final_size * 2^k, which for 100 is 104: the square is
padded up to that side with its own border value (the image minimum, as the aspect-keeping resize already pads)
and the decoder's output is cropped back, so the model still sees and reproduces exactly the 100^2 film.
"""
from __future__ import annotations

from collections.abc import Sequence

import math

import torch
import torch.nn.functional as F
from monai.networks.nets import VarAutoEncoder
from torch import nn


class PaddedVarAutoEncoder(nn.Module):
    def __init__(self, image_size: int = 100, latent_size: int = 256, channels: Sequence[int] = (16, 32, 64),
                 strides: Sequence[int] = (2, 2, 2)):
        super().__init__()
        self.image_size = int(image_size)
        total_stride = math.prod(int(s) for s in strides)
        self.padded_size = math.ceil(self.image_size / total_stride) * total_stride
        self.vae = VarAutoEncoder(spatial_dims=2, in_shape=(1, self.padded_size, self.padded_size), out_channels=1,
                                  latent_size=int(latent_size), channels=tuple(channels), strides=tuple(strides))

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        extra = self.padded_size - self.image_size
        if extra == 0:
            return x
        before, after = extra // 2, extra - extra // 2
        return F.pad(x, (before, after, before, after), mode="replicate")

    def _crop(self, y: torch.Tensor) -> torch.Tensor:
        start = (self.padded_size - self.image_size) // 2
        return y[..., start:start + self.image_size, start:start + self.image_size]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (mu_z, log sigma^2_z), each (N, latent_size)."""
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"expected {self.image_size}^2 inputs, got {tuple(x.shape[-2:])}")
        return self.vae.encode_forward(self._pad(x))

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits of every pixel (before the sigmoid), (N, 1, image_size, image_size)."""
        return self._crop(self.vae.decode_forward(z, use_sigmoid=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction (posterior mean of the latent), in [0, 1]."""
        mu, _ = self.encode(x)
        return torch.sigmoid(self.decode_logits(mu))
