"""The chest X-ray VAE paper's fully connected VAE: the 100^2 film flattened to 10,000 inputs (MONAI VarFullyConnectedNet).

Same interface as `PaddedVarAutoEncoder` (encode -> (mu, log sigma^2), decode_logits -> Bernoulli logits per pixel), so
the VLB model scores either network the same way."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import VarFullyConnectedNet
from torch import nn


class DenseVarAutoEncoder(nn.Module):
    """Encoder 10,000 -> hidden... -> (mu, log sigma^2) of the latent; decoder latent -> mirrored hidden -> 10,000."""

    def __init__(self, image_size: int = 100, latent_size: int = 256, hidden: Sequence[int] = (512,)):
        super().__init__()
        if not hidden:
            raise ValueError("the dense VAE needs at least one hidden layer (dense_hidden)")
        self.image_size = int(image_size)
        pixels = self.image_size * self.image_size
        hidden = [int(width) for width in hidden]
        # MONAI's decoder starts with latent -> hidden[-1] itself, so its own decode layers are the rest, mirrored.
        self.vae = VarFullyConnectedNet(pixels, pixels, int(latent_size), encode_channels=hidden,
                                        decode_channels=hidden[::-1][1:], act="RELU")

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 1, S, S) -> (mu_z, log sigma^2_z), each (N, latent_size)."""
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"expected {self.image_size}^2 inputs, got {tuple(x.shape[-2:])}")
        return self.vae.encode_forward(x.flatten(1))

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits of every pixel (before the sigmoid), (N, 1, image_size, image_size)."""
        logits = self.vae.decode_forward(z, use_sigmoid=False)
        return logits.view(-1, 1, self.image_size, self.image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction (posterior mean of the latent), in [0, 1]."""
        mu, _ = self.encode(x)
        return torch.sigmoid(self.decode_logits(mu))
