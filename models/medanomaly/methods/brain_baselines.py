"""Baselines of the uncertainty-aware VAE paper: autoencoder, denoising autoencoder, and a modified Gaussian
mixture model of voxel intensities.

Names: "dae" is the conv autoencoder ("ae") trained as a denoising autoencoder (Gaussian noise sigma 0.5 on the
input, clean target) and scored by the squared error, on films like "ae". "brain-ae" and "brain-dae" are the same
two networks with the brain preprocessing of `medanomaly.brain` (brain mask, median normalisation, 128^2): use
those on MRI. "gmm" is brain-only.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.mixture import GaussianMixture
from torch import nn

from ..brain import BrainSliceModel
from ..nets.intensity_mixture import IntensityMixture
from ..registry import register
from ..training import gather_lists
from .autoencoder import ConvAutoEncoderModel


@register("dae")
class DenoisingAutoEncoderModel(ConvAutoEncoderModel):
    description = ("Denoising convolutional autoencoder (Gaussian noise sigma 0.5 on the input, clean target). "
                   "Map: squared reconstruction error; score: its mean.")
    default_config = {**ConvAutoEncoderModel.default_config, "noise_std": 0.5, "residual": "squared"}


class BrainAutoEncoderModel(BrainSliceModel, ConvAutoEncoderModel):
    """The conv autoencoder on brain slices. Median-normalised intensities exceed 1, so the network's final
    sigmoid (meant for films scaled to [0, 1]) is dropped: the output is linear."""

    # Percentile clipping is the films' intensity step; brain slices use the median normalisation instead.
    default_config = {**{key: value for key, value in ConvAutoEncoderModel.default_config.items()
                         if key != "clip_percentiles"},
                      **BrainSliceModel.default_config, "residual": "squared", "epochs": 30}
    preprocessing_keys = BrainSliceModel.preprocessing_keys
    default_map = "squared"
    smoke_config = {**BrainSliceModel.smoke_config, "channels": [4, 8, 8]}

    def build_network(self) -> torch.nn.Module:
        network = super().build_network()
        if isinstance(network.decoder[-1], nn.Sigmoid):
            network.decoder[-1] = nn.Identity()
        return network

    def training_loss(self, x: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
        return super().training_loss(x)  # the autoencoder's (denoising) loss over the whole square

    def map_name(self) -> str:
        return self.config["residual"]  # "squared" (the paper's baseline) or "abs"

    @torch.no_grad()
    def square_maps(self, x: torch.Tensor, brain: torch.Tensor) -> dict:
        return {self.map_name(): self.residual(x, self.reconstruct(x))[:, 0].cpu().numpy()}


@register("brain-ae")
class BrainAE(BrainAutoEncoderModel):
    description = ("Convolutional autoencoder on brain MRI slices (brain-masked, median-normalised, 128^2). "
                   "Map: squared reconstruction error inside the brain; score: its mean.")


@register("brain-dae")
class BrainDAE(BrainAutoEncoderModel):
    description = ("Denoising convolutional autoencoder (noise sigma 0.5) on brain MRI slices. Map: squared "
                   "reconstruction error inside the brain; score: its mean.")
    default_config = {**BrainAutoEncoderModel.default_config, "noise_std": 0.5}


@register("gmm")
class IntensityMixtureModel(BrainSliceModel):
    description = ("Modified Gaussian mixture of brain voxel intensities (median-normalised): Nz Gaussians plus "
                   "a uniform outlier component of weight lambda. Map: posterior of the uniform component, in "
                   "[0, 1]; score: its mean inside the brain.")
    kind = "density"
    fitting = "statistics"
    default_config = {
        **BrainSliceModel.default_config,
        "components": 4,  # Nz Gaussians
        "uniform_weight": 0.05,  # lambda
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
        """EM on the intensities of brain voxels of the normal training slices (sklearn GaussianMixture), then
        the uniform component's range."""
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
        state = {"weights": mixture.weights_, "means": mixture.means_[:, 0],
                 "variances": mixture.covariances_.reshape(components),
                 "low": low - margin, "high": high + margin}
        with torch.no_grad():
            for name, value in state.items():
                getattr(self.network, name).copy_(torch.as_tensor(np.asarray(value), dtype=torch.float32))
        return {"loss": float(-mixture.score(voxels.reshape(-1, 1))), "voxels": int(voxels.size),
                "converged": bool(mixture.converged_)}

    @torch.no_grad()
    def square_maps(self, x: torch.Tensor, brain: torch.Tensor) -> dict:
        return {"posterior": self.network(x)[:, 0].cpu().numpy()}
