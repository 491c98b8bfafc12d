"""The uncertainty-aware VAE for brain MRI slices: a Gaussian decoder that predicts a mean and a variance per pixel,
and the autoencoder baselines built on the same encoder.

Encoder (`SliceEncoder`): six 4x4 convolutions of stride 2, layer n with Nc * 2^(n-1) channels, each with batch
norm and ReLU, then one fully connected layer to a single vector. In the VAE that vector is Nz long, its first
half mu_z and its second half log sigma^2_z, so the latent z has Nz / 2 dimensions. The decoder (`SliceDecoder`)
mirrors it: a fully connected layer back to the last feature map, then six 4x4 transposed convolutions of stride 2,
ending in two channels: mu_x and log sigma^2_x per pixel. The autoencoder baselines (`SliceAutoEncoder`) use the
same encoder with an Nz / 2 code (the size of the VAE's z, no variance half) and the same decoder with one channel.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn

DEPTH = 6  # stride-2 layers: the input side must be a multiple of 2^6 = 64


def _widths(base_channels: int) -> list[int]:
    return [base_channels * 2 ** n for n in range(DEPTH)]


def _check_side(image_size: int) -> int:
    if image_size % 2 ** DEPTH:
        raise ValueError(f"image_size must be a multiple of {2 ** DEPTH} (six stride-2 layers), got {image_size}")
    return image_size // 2 ** DEPTH


class SliceEncoder(nn.Module):
    """(N, C, S, S) -> (N, out_features)."""

    def __init__(self, in_channels: int, base_channels: int, out_features: int, image_size: int):
        super().__init__()
        self.side = _check_side(image_size)
        layers, previous = [], in_channels
        for width in _widths(base_channels):
            layers.append(Convolution(2, previous, width, strides=2, kernel_size=4, padding=1, act="RELU",
                                      norm="BATCH"))
            previous = width
        self.convolutions = nn.Sequential(*layers)
        self.to_vector = nn.Linear(previous * self.side ** 2, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != x.shape[-2] or x.shape[-1] != self.side * 2 ** DEPTH:
            raise ValueError(f"input must be {self.side * 2 ** DEPTH}^2, got {tuple(x.shape[-2:])}")
        return self.to_vector(self.convolutions(x).flatten(1))


class SliceDecoder(nn.Module):
    """(N, in_features) -> (N, out_channels, S, S): the encoder mirrored."""

    def __init__(self, in_features: int, base_channels: int, out_channels: int, image_size: int):
        super().__init__()
        self.side = _check_side(image_size)
        widths = _widths(base_channels)
        self.from_vector = nn.Linear(in_features, widths[-1] * self.side ** 2)
        self.start = nn.Sequential(nn.BatchNorm2d(widths[-1]), nn.ReLU())
        layers, previous = [], widths[-1]
        for width in reversed(widths[:-1]):
            layers.append(Convolution(2, previous, width, strides=2, kernel_size=4, padding=1, output_padding=0,
                                      is_transposed=True, act="RELU", norm="BATCH"))
            previous = width
        layers.append(Convolution(2, previous, out_channels, strides=2, kernel_size=4, padding=1, output_padding=0,
                                  is_transposed=True, conv_only=True))
        self.transposed = nn.Sequential(*layers)
        self.width = widths[-1]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        features = self.from_vector(z).view(len(z), self.width, self.side, self.side)
        return self.transposed(self.start(features))


class UncertaintyVAE(nn.Module):
    def __init__(self, in_channels: int = 1, base_channels: int = 16, latent_size: int = 128,
                 min_log_variance: float = -9.0, image_size: int = 128):
        super().__init__()
        if latent_size < 2 or latent_size % 2:
            raise ValueError(f"latent_size (Nz) must be even: half mu_z, half log sigma^2_z; got {latent_size}")
        self.latent_size = latent_size
        # A soft floor on log sigma^2_x: without it the likelihood rewards a variance shrinking to 0 on pixels the
        # decoder gets exactly right, and the loss diverges.
        self.min_log_variance = float(min_log_variance)
        self.encoder = SliceEncoder(in_channels, base_channels, latent_size, image_size)
        self.decoder = SliceDecoder(latent_size // 2, base_channels, 2 * in_channels, image_size)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's one Nz-long vector split into (mu_z, log sigma^2_z), each (N, Nz / 2)."""
        mu, log_var = self.encoder(x).chunk(2, dim=1)
        return mu, log_var

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, raw_log_var = self.decoder(z).chunk(2, dim=1)
        log_var = self.min_log_variance + F.softplus(raw_log_var - self.min_log_variance)
        return mean, log_var

    def sample(self, mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
        return mu + torch.randn_like(mu) * torch.exp(0.5 * log_var)

    def forward(self, x: torch.Tensor, sample: bool | None = None):
        """-> (mu_x, log sigma^2_x, mu_z, log sigma^2_z). The latent is sampled in training mode (or when
        `sample` is True) and is the posterior mean otherwise."""
        mu_z, log_var_z = self.encode(x)
        draw = self.training if sample is None else sample
        z = self.sample(mu_z, log_var_z) if draw else mu_z
        mean, log_var = self.decode(z)
        return mean, log_var, mu_z, log_var_z


class SliceAutoEncoder(nn.Module):
    """The AE / DAE baselines: the VAE's encoder to a code of `code_size`, the VAE's decoder to one channel."""

    def __init__(self, in_channels: int = 1, base_channels: int = 16, code_size: int = 64, image_size: int = 128):
        super().__init__()
        self.encoder = SliceEncoder(in_channels, base_channels, code_size, image_size)
        self.decoder = SliceDecoder(code_size, base_channels, in_channels, image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))
