"""The one output every model returns, whatever its method."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .io.image import MedicalImage


@dataclass
class AnomalyResult:
    """score: image-level float (higher = more anomalous). map: float32 on the input's grid.
    mask: uint8, 1 where map >= the pixel threshold. extras: other named maps on the same grid
    (uncertainty, class weight maps...). meta: model name and version, thresholds and how they were set,
    timings, per-class probabilities for classifiers. `image` keeps the input's geometry for writing."""

    score: float
    map: np.ndarray
    mask: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    image: MedicalImage | None = None

    @property
    def pixel_threshold(self) -> float | None:
        return self.meta.get("pixel_threshold")

    def mask_at(self, threshold: float) -> np.ndarray:
        """The mask at another threshold, without running the model again (for a threshold slider)."""
        return (self.map >= threshold).astype(np.uint8)

    def map_image(self) -> MedicalImage:
        return self.image.with_array(self.map.astype(np.float32))

    def mask_image(self) -> MedicalImage:
        return self.image.with_array(self.mask.astype(np.uint8))

    def summary(self) -> dict:
        """JSON-serialisable summary: what the server returns beside the label and the CLI prints."""
        return {"score": float(self.score), **self.meta}
