"""Partial diffusion for reconstruction: noise an image to step t in one shot, then run the reverse process back.

Two reverse processes:
- `ddpm_reverse`: the mammography paper's protocol, MONAI's `DDPMScheduler.step` once per step from each
  sample's own start step down to 0 (t network evaluations per sample);
- `ddim_reverse`: the fast path, deterministic DDIM (eta = 0) in K steps from each sample's start step.

MONAI's `DDIMScheduler.step` derives the previous step from one uniform stride, T // num_inference_steps, which
cannot express "K steps from an arbitrary t0" (e.g. 10 steps from 600). `PartialDDIMScheduler` keeps MONAI's
schedule (alphas, final alpha, clipping) and takes the previous step explicitly, per sample.

Images here are in [-1, 1] (the schedulers clip predicted x0 to that range)."""
from __future__ import annotations

import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler


class PartialDDIMScheduler(DDIMScheduler):
    """DDIM with eta = 0 between any two steps, each sample with its own steps (formula 12 of Song et al.)."""

    def step_to(self, model_output: torch.Tensor, timestep: torch.Tensor, prev_timestep: torch.Tensor,
                sample: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x_prev and the predicted x0 from epsilon predictions; `timestep`/`prev_timestep` are (B,) tensors,
        prev_timestep < 0 meaning the clean image (alpha product 1 with `set_alpha_to_one`)."""
        alphas = self.alphas_cumprod.to(device=sample.device, dtype=sample.dtype)
        final = self.final_alpha_cumprod.to(device=sample.device, dtype=sample.dtype)
        shape = (-1,) + (1,) * (sample.ndim - 1)
        alpha_t = alphas[timestep].reshape(shape)
        alpha_prev = torch.where(prev_timestep >= 0, alphas[prev_timestep.clamp(min=0)], final).reshape(shape)
        pred_original = (sample - (1 - alpha_t).sqrt() * model_output) / alpha_t.sqrt()
        if self.clip_sample:
            pred_original = pred_original.clamp(*self.clip_sample_values)
        return alpha_prev.sqrt() * pred_original + (1 - alpha_prev).sqrt() * model_output, pred_original


def make_schedulers(num_train_timesteps: int = 1000) -> tuple[DDPMScheduler, PartialDDIMScheduler]:
    """The training/paper scheduler and the fast-path scheduler on one and the same linear beta schedule."""
    ddpm = DDPMScheduler(num_train_timesteps=num_train_timesteps, schedule="linear_beta", prediction_type="epsilon",
                         clip_sample=True)
    ddim = PartialDDIMScheduler(num_train_timesteps=num_train_timesteps, schedule="linear_beta",
                                prediction_type="epsilon", clip_sample=True, set_alpha_to_one=True)
    return ddpm, ddim


def noise_to_step(scheduler: DDPMScheduler, x0: torch.Tensor, timesteps: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw of q(x_t | x_0) = N(sqrt(abar_t) x0, (1 - abar_t) I), each sample at its own step."""
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return scheduler.add_noise(x0, noise, timesteps.to(x0.device))


@torch.no_grad()
def ddpm_reverse(network, scheduler: DDPMScheduler, x_t: torch.Tensor, start_steps: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
    """Ancestral DDPM sampling from each sample's start step down to 0 (stride one, as `DDPMScheduler.step`
    requires). A sample waits until the loop reaches its start step, so only started samples cost a network
    evaluation. Returns (x0 estimate, network evaluations = sum of (start + 1))."""
    x = x_t.clone()
    start_steps = start_steps.to(x.device)
    evaluations = 0
    for step in range(int(start_steps.max()), -1, -1):
        active = start_steps >= step
        count = int(active.sum())
        timesteps = torch.full((count,), step, device=x.device, dtype=torch.long)
        epsilon = network(x[active], timesteps)
        x[active], _ = scheduler.step(epsilon, step, x[active], generator=generator)
        evaluations += count
    return x, evaluations


def ddim_timesteps(start_steps: torch.Tensor, steps: int) -> torch.Tensor:
    """(B, steps + 1) integer steps from each start down to -1 (the clean image): `steps` evaluations each."""
    fractions = torch.linspace(1.0, 0.0, steps + 1, device=start_steps.device)[:-1]
    points = (start_steps[:, None].float() * fractions[None]).round().long()
    clean = torch.full((len(start_steps), 1), -1, dtype=torch.long, device=start_steps.device)
    return torch.cat([points, clean], dim=1)


@torch.no_grad()
def ddim_reverse(network, scheduler: PartialDDIMScheduler, x_t: torch.Tensor, start_steps: torch.Tensor,
                 steps: int) -> tuple[torch.Tensor, int]:
    """Deterministic DDIM from each sample's start step to the clean image in `steps` network evaluations.
    Returns (x0 estimate, network evaluations = steps per sample)."""
    schedule = ddim_timesteps(start_steps.to(x_t.device), int(steps))
    x = x_t
    for index in range(int(steps)):
        timestep, previous = schedule[:, index], schedule[:, index + 1]
        x, _ = scheduler.step_to(network(x, timestep), timestep, previous, x)
    return x, int(steps) * len(x_t)
