"""One checkpoint file per model: weights, config, preprocessing, thresholds, statistics, training state.

Written atomically (temporary file in the same folder, fsync, rename) so a crash never leaves a half-written
model where the server would load it. Loaded with `weights_only=True`: a checkpoint is data, never code."""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import torch

from .atomic import atomic_destination
from .errors import CheckpointError

FORMAT = "medanomaly-checkpoint"
FORMAT_VERSION = 1


def weights_digest(state_dict: dict) -> str:
    """sha256 of the weights alone, so that the version changes exactly when the weights do."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        digest.update(key.encode())
        value = state_dict[key]
        if torch.is_tensor(value):
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a whole file, read in 1 MiB blocks (weights files, shipped checkpoints)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_torch_save(payload: dict, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_destination(path) as temporary, open(temporary, "wb") as handle:
        handle.write(buffer.getvalue())
        handle.flush()
        os.fsync(handle.fileno())  # on disk before the rename, so a power cut cannot publish an empty file
    return path


def read_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and torch errors all mean the same to a user
        raise CheckpointError(f"checkpoint {path} cannot be read: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a MedAnomaly checkpoint")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer MedAnomaly (format {payload['format_version']})")
    return payload
