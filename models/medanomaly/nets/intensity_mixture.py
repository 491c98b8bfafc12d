"""The modified Gaussian mixture of the uncertainty-aware VAE paper's baseline: Gaussians over one voxel's intensity
plus a uniform outlier component, whose posterior is the anomaly map."""
from __future__ import annotations

import math

import torch
from torch import nn


class IntensityMixture(nn.Module):
    """p(x) = (1 - lambda) sum_k pi_k N(x; m_k, s_k^2) + lambda U(x; low, high), over one voxel's intensity.

    The parameters are buffers so that they travel in the checkpoint's state_dict like any network's weights."""

    def __init__(self, components: int, uniform_weight: float):
        super().__init__()
        self.register_buffer("weights", torch.full((components,), 1.0 / components))
        self.register_buffer("means", torch.zeros(components))
        self.register_buffer("variances", torch.ones(components))
        self.register_buffer("uniform_weight", torch.tensor(float(uniform_weight)))
        self.register_buffer("low", torch.tensor(0.0))
        self.register_buffer("high", torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior probability of the uniform (outlier) component for every voxel of x, in [0, 1].

        Intensities outside [low, high] are clipped to it: the outlier density stays 1 / (high - low) there
        while the Gaussians vanish, so extreme values get a posterior near 1 rather than an undefined one."""
        x = x.clamp(float(self.low), float(self.high)).unsqueeze(-1)
        log_gauss = (-0.5 * (x - self.means).square() / self.variances
                     - 0.5 * torch.log(2 * math.pi * self.variances) + torch.log(self.weights))
        log_normal = torch.log1p(-self.uniform_weight) + torch.logsumexp(log_gauss, dim=-1)
        log_outlier = torch.log(self.uniform_weight) - torch.log(self.high - self.low)
        return torch.sigmoid(log_outlier - log_normal)


def fit_with_outliers(voxels: torch.Tensor, weights: torch.Tensor, means: torch.Tensor, variances: torch.Tensor,
                      uniform_weight: float, low: float, high: float, iterations: int = 200,
                      tolerance: float = 1e-7) -> dict:
    """EM for the mixture of `IntensityMixture` with the uniform component inside it.

    E step: responsibilities of the K Gaussians *and* the uniform; M step: the Gaussians' weights, means and
    variances from their responsibilities, the uniform's weight lambda held fixed (a hyper-parameter, searched
    outside) and its support fixed to [low, high]. Voxels the uniform explains better thus stop pulling the
    Gaussians, unlike a Gaussian fit with a uniform added afterwards. Starts from the given parameters (e.g. a plain
    Gaussian mixture's). Returns the parameters, the mean log-likelihood and the iterations run."""
    x = voxels.double().reshape(-1, 1)
    weights, means, variances = weights.double().clone(), means.double().clone(), variances.double().clone()
    log_outlier = math.log(uniform_weight) - math.log(high - low)
    floor = 1e-6 * float(x.var())  # no component may collapse onto one intensity
    previous = -math.inf
    for iteration in range(1, iterations + 1):
        log_gauss = (-0.5 * (x - means).square() / variances - 0.5 * torch.log(2 * math.pi * variances)
                     + torch.log(weights) + math.log1p(-uniform_weight))
        log_all = torch.cat([log_gauss, torch.full_like(x, log_outlier)], dim=1)
        log_total = torch.logsumexp(log_all, dim=1, keepdim=True)
        responsibility = torch.exp(log_gauss - log_total)  # (N, K): the uniform's share is what is left
        mass = responsibility.sum(dim=0).clamp_min(1e-12)
        weights = mass / mass.sum()
        means = (responsibility * x).sum(dim=0) / mass
        variances = (responsibility * (x - means).square()).sum(dim=0) / mass + floor
        log_likelihood = float(log_total.mean())
        if abs(log_likelihood - previous) < tolerance:
            break
        previous = log_likelihood
    return {"weights": weights.float(), "means": means.float(), "variances": variances.float(),
            "log_likelihood": log_likelihood, "iterations": iteration}
