"""Shared base of the models whose map is a reconstruction residual |x - x_hat| on a resized film."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .base import AnomalyModel, SliceScores, slices_of
from .modalities import FILM_MODALITIES
from .preprocess import resize_keep_aspect, to_tensor_batch, to_unit_range, undo_resize


class FilmReconstructionModel(AnomalyModel):
    """Each slice: intensities to [0, 1] by percentile clipping, resized keeping the aspect ratio (padded with the
    minimum) to image_size^2, reconstructed; the residual is resized back onto the slice's grid.

    The score is the mean residual over the film (the padding excluded)."""

    default_config = {
        "image_size": 160,
        "clip_percentiles": [0.5, 99.5],
        "residual": "abs",  # "abs": |x - x_hat| (the mammography paper); "squared": (x - x_hat)^2
    }
    preprocessing_keys = ("image_size", "clip_percentiles")
    modalities = FILM_MODALITIES
    smoke_config = {"image_size": 32, "epochs": 1, "batch_size": 4}

    def preprocess(self, slice_2d: np.ndarray):
        low, high = self.config["clip_percentiles"]
        unit, _ = to_unit_range(slice_2d, low, high)
        return resize_keep_aspect(unit, int(self.config["image_size"]))

    def training_samples(self, item, rng=None) -> list[tuple[np.ndarray, ...]]:
        return [(self.preprocess(s)[0][None],) for s in slices_of(item.image.array)]  # (1, S, S): one channel

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self.reconstruct(x), x)

    def residual(self, x: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        difference = x - reconstruction
        return difference.abs() if self.config["residual"] == "abs" else difference.square()

    @torch.no_grad()
    def residual_maps(self, squares: list[np.ndarray]) -> np.ndarray:
        """Residual maps (N, S, S) for preprocessed squares, computed in batches."""
        batch_size = int(self.config["predict_batch_size"])
        out = []
        for start in range(0, len(squares), batch_size):
            x = to_tensor_batch(squares[start:start + batch_size], self.device)
            out.append(self.residual(x, self.reconstruct(x))[:, 0].cpu().numpy())
        return np.concatenate(out)

    def score_slices(self, slices: list[np.ndarray]) -> SliceScores:
        prepared = [self.preprocess(s) for s in slices]
        residuals = self.residual_maps([square for square, _ in prepared])
        scores, maps = [], []
        for residual, (_, info) in zip(residuals, prepared):
            scores.append(float(residual[info.valid_region()].mean()))
            maps.append(undo_resize(residual, info))
        return SliceScores(scores=np.array(scores), maps=maps)
