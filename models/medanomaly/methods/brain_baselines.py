"""Baselines of the uncertainty-aware VAE paper: autoencoder, denoising autoencoder, and a modified Gaussian
mixture model of voxel intensities.

Names: "dae" is the conv autoencoder ("ae") trained as a denoising autoencoder (Gaussian noise sigma 0.5 on the
input, clean target) and scored by the squared error, on films like "ae". "brain-ae" and "brain-dae" are the
paper's baselines on MRI: the VAE's own encoder and decoder with a deterministic code, the same brain
preprocessing (`medanomaly.brain`). "gmm" is brain-only.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.mixture import GaussianMixture

from ..brain import BrainSliceModel
from ..nets.intensity_mixture import IntensityMixture, fit_with_outliers
from ..nets.uncertainty_vae import SliceAutoEncoder
from ..registry import register
from ..training import gather_lists
from .autoencoder import ConvAutoEncoderModel


@register("dae")
class DenoisingAutoEncoderModel(ConvAutoEncoderModel):
    description = ("Denoising convolutional autoencoder (Gaussian noise sigma 0.5 on the input, clean target). "
                   "Map: squared reconstruction error; score: its mean.")
    default_config = {**ConvAutoEncoderModel.default_config, "noise_std": 0.5, "residual": "squared"}


class BrainAutoEncoderModel(BrainSliceModel):
    """The AE / DAE baselines of the uncertainty-aware VAE: the VAE's encoder and decoder (`nets.uncertainty_vae`)
    with a deterministic code of Nz / 2 (the size of the VAE's z) and one output channel, the same brain
    preprocessing, and a squared error over brain pixels as the loss. `noise_std` > 0 makes it denoising."""

    version = "2"  # 2: the VAE's encoder and decoder (was the film autoencoder), brain crop, percentile scaling
    default_config = {
        **BrainSliceModel.default_config,
        "intensity": "percentile",
        "crop_to_brain": True,
        "base_channels": 16,  # Nc, as the VAE's
        "latent_size": 128,  # Nz, as the VAE's: the code has Nz / 2 numbers, the size of the VAE's z
        "noise_std": 0.0,  # > 0: Gaussian noise on the input's brain pixels, clean target
        "learning_rate": 1e-3,
        "weight_decay": 1e-4,
        "batch_size": 8,
        "epochs": 30,
    }
    default_map = "squared"
    smoke_config = {**BrainSliceModel.smoke_config, "image_size": 64, "base_channels": 4, "latent_size": 8}

    def build_network(self) -> torch.nn.Module:
        latent = int(self.config["latent_size"])
        if latent < 2 or latent % 2:
            raise ValueError(f"latent_size (Nz) must be even, got {latent}")
        return SliceAutoEncoder(1, int(self.config["base_channels"]), latent // 2, int(self.config["image_size"]))

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.network.parameters(), lr=self.config["learning_rate"],
                                weight_decay=self.config["weight_decay"])

    def training_loss(self, x: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
        """Squared error summed over brain pixels, averaged over the batch (the VAE's likelihood counts the same
        pixels); the denoising variant corrupts the brain pixels of the input only."""
        noise_std = float(self.config["noise_std"])
        noisy = x + noise_std * torch.randn_like(x) * brain if noise_std > 0 else x
        return ((self.network(noisy) - x).square() * brain).flatten(1).sum(dim=1).mean()

    @torch.no_grad()
    def square_maps(self, x: torch.Tensor, brain: torch.Tensor) -> dict:
        return {"squared": (x - self.network(x)).square()[:, 0].cpu().numpy()}


@register("brain-ae")
class BrainAE(BrainAutoEncoderModel):
    description = ("Autoencoder baseline of the uncertainty-aware VAE on brain MRI slices (the VAE's encoder and "
                   "decoder, deterministic code; cropped to the brain, 128^2). Map: squared reconstruction error "
                   "inside the brain; score: its mean.")


@register("brain-dae")
class BrainDAE(BrainAutoEncoderModel):
    description = ("Denoising autoencoder baseline (noise sigma 0.5 on the brain pixels) of the uncertainty-aware "
                   "VAE, brain MRI slices. Map: squared reconstruction error inside the brain; score: its mean.")
    default_config = {**BrainAutoEncoderModel.default_config, "noise_std": 0.5}


@register("gmm")
class IntensityMixtureModel(BrainSliceModel):
    description = ("Modified Gaussian mixture of brain voxel intensities (scaled inside the brain): Nz Gaussians "
                   "plus a uniform outlier component of weight lambda, fitted together by EM. Map: posterior of the "
                   "uniform component, in [0, 1]; score: its mean inside the brain.")
    kind = "density"
    fitting = "statistics"
    version = "2"  # 2: the uniform component inside EM, brain crop, percentile scaling
    default_config = {
        **BrainSliceModel.default_config,
        "intensity": "percentile",
        "crop_to_brain": True,
        "components": 4,  # Nz Gaussians
        "uniform_weight": 0.01,  # lambda, fixed during EM; the paper searches {1e-1, 1e-2, 1e-3, 1e-4}
        "em_iterations": 200,
        "range_margin": 0.5,  # the uniform spans the training range widened by this share of it on each side
        "max_fit_voxels": 200_000,  # voxels drawn (uniformly, seeded) for the EM fit
        "epochs": 1,
    }
    default_map = "posterior"
    smoke_config = {"image_size": 32, "components": 2, "max_fit_voxels": 5000}

    def build_network(self) -> torch.nn.Module:
        weight = float(self.config["uniform_weight"])
        if not 0 < weight < 1:
            raise ValueError(f"uniform_weight must be in (0, 1), got {weight}")
        return IntensityMixture(int(self.config["components"]), weight)

    def fit_statistics(self, items: list) -> dict:
        """EM on the intensities of brain voxels of the normal training slices: a plain Gaussian mixture
        (sklearn) starts it, then EM with the uniform component inside (`fit_with_outliers`)."""
        # Under torchrun each rank reads its share of the items; the voxels of all shares are fitted once.
        voxels = gather_lists([square[mask > 0] for item in items for square, mask in self.training_samples(item)])
        voxels = np.concatenate(voxels) if voxels else np.zeros(0, dtype=np.float32)
        components = int(self.config["components"])
        if voxels.size < 10 * components:
            raise ValueError(f"{self.name}: only {voxels.size} brain voxels in the training images")
        rng = np.random.default_rng(int(self.config["seed"]))
        if voxels.size > int(self.config["max_fit_voxels"]):
            voxels = rng.choice(voxels, int(self.config["max_fit_voxels"]), replace=False)

        mixture = GaussianMixture(components, covariance_type="full", random_state=int(self.config["seed"]))
        mixture.fit(voxels.reshape(-1, 1).astype(np.float64))
        low, high = float(voxels.min()), float(voxels.max())
        margin = float(self.config["range_margin"]) * (high - low)
        low, high = low - margin, high + margin
        fitted = fit_with_outliers(torch.as_tensor(voxels), torch.as_tensor(mixture.weights_),
                                   torch.as_tensor(mixture.means_[:, 0]),
                                   torch.as_tensor(mixture.covariances_.reshape(components)),
                                   float(self.config["uniform_weight"]), low, high, int(self.config["em_iterations"]))
        state = {"weights": fitted["weights"], "means": fitted["means"], "variances": fitted["variances"],
                 "low": low, "high": high}
        with torch.no_grad():
            for name, value in state.items():
                getattr(self.network, name).copy_(torch.as_tensor(np.asarray(value), dtype=torch.float32))
        return {"loss": -fitted["log_likelihood"], "voxels": int(voxels.size),
                "converged": bool(mixture.converged_), "em_iterations": fitted["iterations"]}

    @torch.no_grad()
    def square_maps(self, x: torch.Tensor, brain: torch.Tensor) -> dict:
        return {"posterior": self.network(x)[:, 0].cpu().numpy()}
