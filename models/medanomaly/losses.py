"""Training losses and likelihood terms shared by the methods, so that no method imports another method's maths.

- `gaussian_kl`: KL(q(z|x) || N(0, I)) of a diagonal Gaussian latent (VAEs), via `torch.distributions`;
- `gaussian_terms`: the per-pixel parts of a Gaussian decoder's negative log-likelihood (uncertainty VAE);
- `intensity_dice_loss`: the pneumonia paper's Dice loss on intensities (U-Net patch autoencoder)."""
from __future__ import annotations

import math

import torch
from torch.distributions import Normal, kl_divergence


def gaussian_kl(mu: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over the latent dimensions, one value per sample."""
    posterior = Normal(mu, torch.exp(0.5 * log_var))
    prior = Normal(torch.zeros_like(mu), torch.ones_like(mu))
    return kl_divergence(posterior, prior).flatten(1).sum(dim=1)


def gaussian_terms(x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> dict:
    """The per-pixel parts of -log N(x; mean, exp(log_var)): U (aleatoric), E (normalised error), L = U + E,
    and the squared error."""
    squared = (x - mean).square()
    aleatoric = 0.5 * (math.log(2 * math.pi) + log_var)
    normalised_error = squared * torch.exp(-log_var) / 2
    return {"L": aleatoric + normalised_error, "U": aleatoric, "E": normalised_error, "squared": squared}


def intensity_dice_loss(output: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The paper's Dice loss on intensities, per sample and averaged over the batch:
    -ln(2 sum(I J) / (sum|I| + sum|J|)). It is 0 for a perfect reconstruction of a non-black patch."""
    dims = tuple(range(1, output.ndim))
    overlap = (output * target).sum(dims)
    total = output.abs().sum(dims) + target.abs().sum(dims)
    return -torch.log((2 * overlap + eps) / (total + eps)).mean()
