"""Convolutional autoencoder: the mammography paper's baseline, trained with MSE on normal images."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..nets.conv_autoencoder import ConvAutoEncoder
from ..reconstruction import FilmReconstructionModel
from ..registry import register


@register("ae")
class ConvAutoEncoderModel(FilmReconstructionModel):
    description = ("Convolutional autoencoder (conv + max-pool to a 20x20x1 latent at 160 px). "
                   "Map: reconstruction residual; score: its mean.")
    default_config = {
        **FilmReconstructionModel.default_config,
        "channels": [16, 32, 64],
        "latent_channels": 1,
        "noise_std": 0.0,  # > 0 trains a denoising autoencoder: Gaussian noise on the input, clean target
        "batch_size": 16,
        "learning_rate": 1e-3,
    }

    smoke_config = {**FilmReconstructionModel.smoke_config, "channels": [4, 8, 8]}

    def build_network(self) -> torch.nn.Module:
        return ConvAutoEncoder(1, self.config["channels"], self.config["latent_channels"])

    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        noisy = x + self.config["noise_std"] * torch.randn_like(x) if self.config["noise_std"] > 0 else x
        return F.mse_loss(self.reconstruct(noisy), x)
