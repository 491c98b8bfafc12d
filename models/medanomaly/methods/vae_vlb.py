"""Variational autoencoder scored by its variational lower bound (chest X-ray).

Films are scaled to [0, 1] and resized to 100^2 keeping the aspect ratio, padded with the image minimum; no
flips or rotations. Pixels are modelled as Bernoulli given a 256-d Gaussian latent. `architecture` picks the network:
"conv" (MONAI VarAutoEncoder, the default) or "dense", the paper's fully connected VAE on the 10,000 flattened
pixels (MONAI VarFullyConnectedNet, hidden widths `dense_hidden`). The
anomaly score is -VLB = E_q[-log p(x|z)] + KL(q(z|x) || p(z)) in nats, the expectation estimated by Monte Carlo
with `vlb_samples` draws of z ~ q(z|x): a film the model finds unlikely (disease, or not a chest film at all)
scores high. The map is the per-pixel reconstruction term E_q[-log p(x_ij|z)], averaged over the same draws.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..base import SliceScores
from ..losses import gaussian_kl
from ..modalities import CHEST, CHEST_FILM_MODALITIES
from ..nets.dense_vae import DenseVarAutoEncoder
from ..nets.padded_vae import PaddedVarAutoEncoder
from ..preprocess import to_tensor_batch, undo_resize
from ..reconstruction import FilmReconstructionModel
from ..registry import register


@register("vae-vlb")
class VLBVariationalAutoEncoderModel(FilmReconstructionModel):
    description = ("Variational autoencoder (256-d latent, Bernoulli pixels) on 100^2 films. Score: -VLB "
                   "(negative ELBO, nats) by Monte Carlo over vlb_samples latent draws; map: the per-pixel "
                   "reconstruction term. Usable as an out-of-distribution screen: non-chest images score higher.")
    kind = "density"
    modalities = CHEST_FILM_MODALITIES
    body_parts = CHEST
    default_config = {
        **FilmReconstructionModel.default_config,
        "image_size": 100,
        "latent_size": 256,
        "architecture": "conv",  # "conv": convolutional encoder/decoder; "dense": the paper's fully connected VAE
        "channels": [16, 32, 64],  # conv only
        "strides": [2, 2, 2],  # conv only
        "dense_hidden": [512],  # dense only: hidden layer widths of the encoder (mirrored in the decoder)
        "vlb_samples": 3,  # Monte Carlo draws of z per film for the VLB estimate
        "batch_size": 100,
        "learning_rate": 1e-4,  # RMSProp at 1e-3 let the KL term blow up within an epoch
        "epochs": 30,
    }
    inference_keys = ("vlb_samples",)
    smoke_config = {**FilmReconstructionModel.smoke_config, "latent_size": 8, "channels": [4, 8], "strides": [2, 2],
                    "vlb_samples": 2}

    def build_network(self) -> torch.nn.Module:
        architecture = self.config["architecture"]
        if architecture == "dense":
            return DenseVarAutoEncoder(int(self.config["image_size"]), int(self.config["latent_size"]),
                                       self.config["dense_hidden"])
        if architecture != "conv":
            raise ValueError(f"{self.name}: architecture must be 'conv' or 'dense', got {architecture!r}")
        return PaddedVarAutoEncoder(int(self.config["image_size"]), int(self.config["latent_size"]),
                                    self.config["channels"], self.config["strides"])

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.RMSprop(self.network.parameters(), lr=self.config["learning_rate"])

    def reconstruction_terms(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """-log p(x_ij | z) per pixel, (N, 1, S, S)."""
        return F.binary_cross_entropy_with_logits(self.network.decode_logits(z), x, reduction="none")

    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        """-ELBO with one reparameterised draw per film (the usual VAE objective), averaged over the batch."""
        mu, log_var = self.network.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * log_var)
        nll = self.reconstruction_terms(x, z).flatten(1).sum(dim=1)
        return (nll + gaussian_kl(mu, log_var)).mean()

    @torch.no_grad()
    def negative_vlb(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """Monte Carlo -VLB per film (N,) and the mean per-pixel reconstruction term (N, S, S)."""
        samples = int(self.config["vlb_samples"])
        if samples < 1:
            raise ValueError(f"vlb_samples must be >= 1, got {samples}")
        mu, log_var = self.network.encode(x)
        pixel_terms = torch.zeros_like(x)
        for _ in range(samples):
            noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
            pixel_terms += self.reconstruction_terms(x, mu + noise * torch.exp(0.5 * log_var))
        pixel_terms /= samples
        return pixel_terms.flatten(1).sum(dim=1) + gaussian_kl(mu, log_var), pixel_terms[:, 0]

    @torch.no_grad()
    def score_squares(self, squares) -> tuple[np.ndarray, np.ndarray]:
        """-VLB (N,) and per-pixel reconstruction terms (N, S, S) of preprocessed squares, in batches.

        Draws are seeded per call so that the same film gets the same score every time it is sent."""
        batch_size = int(self.config["predict_batch_size"])
        generator = torch.Generator(device=self.device).manual_seed(int(self.config["seed"]))
        scores, maps = [], []
        for start in range(0, len(squares), batch_size):
            vlb, terms = self.negative_vlb(to_tensor_batch(list(squares[start:start + batch_size]), self.device),
                                           generator)
            scores.append(vlb.cpu().numpy())
            maps.append(terms.cpu().numpy())
        return np.concatenate(scores).astype(float), np.concatenate(maps)

    def score_slices(self, slices: list[np.ndarray]) -> SliceScores:
        prepared = [self.preprocess(s) for s in slices]
        scores, squares = self.score_squares([square for square, _ in prepared])
        maps = [undo_resize(square, info) for square, (_, info) in zip(squares, prepared)]
        return SliceScores(scores=scores, maps=maps,
                           meta={"vlb_samples": int(self.config["vlb_samples"]), "score": "negative VLB (nats)"})
