"""PaDiM-style anomaly maps: a Gaussian per feature-map position (Defard et al., ICPR 2021) on the frozen encoder of
`feature_models`.

Fit: at every position of the feature grid, the mean and covariance of the normal training films' patch features
(`feature_dim` channels drawn at random, seeded, from the concatenated stages; covariance + `covariance_ridge` * I),
accumulated film by film in float64; the inverse covariances are stored in half precision. Map: the Mahalanobis
distance of each patch to its position's Gaussian. Score: the map's mean inside the film (`image_score`).

A Gaussian per position assumes that a position means the same anatomy on every film: that holds for whole chest
films resized to one square (`padim-chest`), not for tiles that move with the breast; mammograms and brain slices
have the PatchCore models."""
from __future__ import annotations

import torch

from ..registry import register
from .feature_models import FeatureAnomalyModel, FeatureStatistics, WholeFilmInput

PADIM_DEFAULTS = {
    "feature_dim": 100,  # channels kept (of 152): 28 x 28 positions x 100^2 x 2 bytes = 16 MB
    "covariance_ridge": 0.01,
}


class PaDiMModel(FeatureAnomalyModel):
    default_config = {**FeatureAnomalyModel.default_config, **PADIM_DEFAULTS}

    def build_statistics(self) -> FeatureStatistics:
        total = sum(self.encoder.out_channels)
        dim = min(int(self.config["feature_dim"]), total)
        generator = torch.Generator().manual_seed(int(self.config["seed"]))
        channels = torch.sort(torch.randperm(total, generator=generator)[:dim]).values
        return FeatureStatistics(channels=channels, mean=torch.zeros(0, dim),
                                 inverse_covariance=torch.zeros(0, dim, dim, dtype=torch.float16))

    def fit_features(self, batches) -> dict:
        channels = self.network.channels
        count, total, outer, grid = 0, None, None, None
        for embedding, _ in batches:  # every position is learnt: films are aligned as whole squares
            features = embedding[:, channels.to(embedding.device)].flatten(2).permute(2, 0, 1).double().cpu()
            if grid is None:
                grid = tuple(embedding.shape[-2:])
                total = torch.zeros(features.shape[0], features.shape[2], dtype=torch.float64)
                outer = torch.zeros(features.shape[0], features.shape[2], features.shape[2], dtype=torch.float64)
            elif tuple(embedding.shape[-2:]) != grid:
                raise ValueError(f"{self.name}: training squares of different sizes give feature grids {grid} "
                                 f"and {tuple(embedding.shape[-2:])}")
            total += features.sum(dim=1)  # (P, d)
            outer += torch.einsum("pnd,pne->pde", features, features)
            count += features.shape[1]
        if count < 2:
            raise ValueError(f"{self.name}: a Gaussian per position needs at least 2 training films, got {count}")
        mean = total / count
        covariance = (outer - count * torch.einsum("pd,pe->pde", mean, mean)) / (count - 1)
        covariance += float(self.config["covariance_ridge"]) * torch.eye(mean.shape[1], dtype=torch.float64)
        inverse = torch.linalg.inv(covariance)
        self.network.mean = mean.float().to(self.device)
        self.network.inverse_covariance = inverse.to(torch.float16).to(self.device)
        return {"images": count, "positions": int(mean.shape[0]), "feature_dim": int(mean.shape[1])}

    @torch.no_grad()
    def patch_distances(self, embedding: torch.Tensor) -> torch.Tensor:
        mean, inverse = self.network.mean, self.network.inverse_covariance
        if len(mean) == 0:
            raise RuntimeError(f"{self.name}: the Gaussians are not fitted; fit the model first")
        batch, _, height, width = embedding.shape
        if height * width != len(mean):
            raise ValueError(f"{self.name}: the feature grid {height}x{width} differs from the fitted one "
                             f"({len(mean)} positions): use the image_size the model was fitted with")
        features = embedding[:, self.network.channels].flatten(2).permute(2, 0, 1).float()  # (P, N, d)
        delta = features - mean[:, None]
        squared = torch.einsum("pnd,pde,pne->np", delta, inverse.float(), delta).clamp_min(0)
        return squared.sqrt().reshape(batch, height, width)


@register("padim-chest")
class PaDiMChest(WholeFilmInput, PaDiMModel):
    description = ("PaDiM on a frozen ImageNet EfficientNet-Lite0: a Gaussian per position of the feature map of "
                   "whole chest films. Map: Mahalanobis distance, smoothed; score: its mean. Fitted on normal "
                   "films by statistics (minutes on a CPU).")
    default_config = {**PaDiMModel.default_config, **WholeFilmInput.input_defaults}
    preprocessing_keys = PaDiMModel.preprocessing_keys + WholeFilmInput.input_keys + ("feature_dim",)
    smoke_config = {"image_size": 64, "feature_dim": 16}
