"""Uncertainty-aware VAE for brain MRI: the decoder predicts mu_x and sigma^2_x per pixel, and the Gaussian
negative log-likelihood splits into an aleatoric part and a normalised error.

Per pixel:  L = U + E,  U = 1/2 log(2 pi sigma^2)  (aleatoric uncertainty),  E = (x - mu)^2 / (2 sigma^2)
(the error in units of the predicted noise), plus the plain squared error (x - mu)^2. The default anomaly map is
E: a large error where the model expected little noise. All four maps are in the result's extras.
"""
from __future__ import annotations

import torch

from ..brain import BrainSliceModel
from ..losses import gaussian_kl, gaussian_terms
from ..nets.uncertainty_vae import UncertaintyVAE
from ..registry import register

MAP_NAMES = ("E", "U", "L", "squared")


@register("vae-uncertainty")
class UncertaintyVAEModel(BrainSliceModel):
    description = ("Uncertainty-aware VAE for brain MRI slices (cropped to the brain, 128^2, intensities scaled "
                   "between the 1st percentile and the median inside the brain). The decoder predicts a mean and a "
                   "variance per pixel. Maps: E = (x-mu)^2/(2 sigma^2) (default), U = log(2 pi sigma^2)/2, "
                   "L = U + E, squared error; score: mean of the map inside the brain.")
    version = "2"  # 2: one Nz-long latent vector (mu_z and log sigma^2_z halves), brain crop, percentile scaling
    default_config = {
        **BrainSliceModel.default_config,
        "intensity": "percentile",
        "crop_to_brain": True,
        "base_channels": 16,  # Nc in {8, 16, 32}: layer n of the encoder has Nc * 2^(n-1) channels
        "latent_size": 128,  # Nz: the encoder's output vector, half mu_z and half log sigma^2_z (z is Nz / 2)
        "min_log_variance": -9.0,
        "anomaly_map": "E",  # which of E, U, L, squared is the result's map (the others go to extras)
        "learning_rate": 1e-3,
        "weight_decay": 1e-4,
        "batch_size": 8,  # small batches: a few hundred training slices still give many optimiser steps
        "epochs": 30,
    }
    inference_keys = ("anomaly_map",)
    default_map = "E"
    uncertainty_map = "U"  # aleatoric: in extras unless chosen as the map itself
    smoke_config = {**BrainSliceModel.smoke_config, "image_size": 64, "base_channels": 4, "latent_size": 8}

    def __init__(self, **config):
        super().__init__(**config)
        if self.config["anomaly_map"] not in MAP_NAMES:
            raise ValueError(f"anomaly_map must be one of {MAP_NAMES}, got {self.config['anomaly_map']!r}")

    def build_network(self) -> torch.nn.Module:
        return UncertaintyVAE(1, int(self.config["base_channels"]), int(self.config["latent_size"]),
                              float(self.config["min_log_variance"]), int(self.config["image_size"]))

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.network.parameters(), lr=self.config["learning_rate"],
                                weight_decay=self.config["weight_decay"])

    def training_loss(self, x: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
        """Negative ELBO per slice, averaged over the batch. The likelihood counts brain pixels only: the
        background is a constant 0 that would let sigma^2 collapse and dominate the loss."""
        mean, log_var, mu_z, log_var_z = self.network(x)
        nll = (gaussian_terms(x, mean, log_var)["L"] * brain).flatten(1).sum(dim=1)
        return (nll + gaussian_kl(mu_z, log_var_z)).mean()

    @torch.no_grad()
    def decoder_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mu_x and log sigma^2_x from the posterior mean of the latent (deterministic maps)."""
        mean, log_var, _, _ = self.network(x, sample=False)
        return mean, log_var

    def square_maps(self, x: torch.Tensor, brain: torch.Tensor) -> dict:
        mean, log_var = self.decoder_outputs(x)
        return {name: value[:, 0].cpu().numpy() for name, value in gaussian_terms(x, mean, log_var).items()}
