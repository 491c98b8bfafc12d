"""The uncertainty-aware VAE for brain MRI slices: a Gaussian decoder that predicts a mean and a variance per pixel.

Encoder: six 4x4 convolutions of stride 2, layer n with Nc * 2^(n-1) channels, each with batch norm and ReLU,
then a 3x3 convolution of stride 1 to 2 * Nz channels: half mu_z, half log sigma^2_z. For a 128^2 input the latent
is 2 x 2 x Nz. The decoder mirrors it (3x3 convolution, then six 4x4 transposed convolutions of stride 2) and
ends in two channels: mu_x and log sigma^2_x per pixel.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn

DEPTH = 6  # stride-2 layers: the input side must be a multiple of 2^6 = 64


class UncertaintyVAE(nn.Module):
    def __init__(self, in_channels: int = 1, base_channels: int = 16, latent_channels: int = 64,
                 min_log_variance: float = -9.0):
        super().__init__()
        self.latent_channels = latent_channels
        # A soft floor on log sigma^2_x: without it the likelihood rewards a variance shrinking to 0 on pixels the
        # decoder gets exactly right, and the loss diverges.
        self.min_log_variance = float(min_log_variance)
        widths = [base_channels * 2 ** n for n in range(DEPTH)]

        encoder, previous = [], in_channels
        for width in widths:
            encoder.append(Convolution(2, previous, width, strides=2, kernel_size=4, padding=1,
                                       act="RELU", norm="BATCH"))
            previous = width
        encoder.append(Convolution(2, previous, 2 * latent_channels, strides=1, kernel_size=3, conv_only=True))
        self.encoder = nn.Sequential(*encoder)

        decoder = [Convolution(2, latent_channels, widths[-1], strides=1, kernel_size=3, act="RELU", norm="BATCH")]
        previous = widths[-1]
        for width in reversed(widths[:-1]):
            decoder.append(Convolution(2, previous, width, strides=2, kernel_size=4, padding=1, output_padding=0,
                                       is_transposed=True, act="RELU", norm="BATCH"))
            previous = width
        decoder.append(Convolution(2, previous, 2 * in_channels, strides=2, kernel_size=4, padding=1,
                                   output_padding=0, is_transposed=True, conv_only=True))
        self.decoder = nn.Sequential(*decoder)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[-1] % 2 ** DEPTH or x.shape[-2] % 2 ** DEPTH:
            raise ValueError(f"input side must be a multiple of {2 ** DEPTH}, got {tuple(x.shape[-2:])}")
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
