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
