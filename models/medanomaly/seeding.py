"""Seeded randomness that leaves the caller's random streams alone.

Weight initialisation and dropout draw from torch's global generator (`torch.nn.init` takes no generator), so a
model seeds it for the block that needs it, inside `torch.random.fork_rng`: the caller's global state is restored
afterwards. Draws a method makes itself (noise, start steps, pixel samples) use local generators instead:
`torch.Generator().manual_seed(seed)` or `numpy.random.default_rng(seed)`."""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def seeded(seed: int, devices: list[int] | None = None):
    """Within the block torch's global generators (CPU and the CUDA `devices`, by default every one) start from
    `seed`; after it they are back where the caller left them."""
    if devices is None:
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield
