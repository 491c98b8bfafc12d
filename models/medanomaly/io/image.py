"""The in-memory medical image: pixels plus the geometry needed to write a map back onto the same grid."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import SimpleITK as sitk


@dataclass
class MedicalImage:
    """Pixels in numpy index order plus SimpleITK-ordered geometry.

    `array` is float32, (H, W) for a film or (D, H, W) for a volume (a single-slice volume is (1, H, W)).
    `spacing`, `origin` are in SimpleITK (x, y[, z]) order and `direction` is the flattened direction matrix,
    so that `to_sitk()` writes a map that overlays the source exactly in Slicer.
    `meta` carries what the reader learnt: modality, body_part, photometric, source path, notes.
    """

    array: np.ndarray
    spacing: tuple = None
    origin: tuple = None
    direction: tuple = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        ndim = self.array.ndim
        if self.spacing is None:
            self.spacing = (1.0,) * ndim
        if self.origin is None:
            self.origin = (0.0,) * ndim
        if self.direction is None:
            self.direction = tuple(np.eye(ndim).ravel().tolist())
        self.spacing = tuple(float(v) for v in self.spacing)
        self.origin = tuple(float(v) for v in self.origin)
        self.direction = tuple(float(v) for v in self.direction)

    @property
    def is_volume(self) -> bool:
        return self.array.ndim == 3

    @property
    def shape(self) -> tuple:
        return tuple(self.array.shape)

    def with_array(self, array: np.ndarray, **meta_updates) -> "MedicalImage":
        """A new image on the same grid (same geometry) holding other pixels, e.g. an anomaly map."""
        if tuple(array.shape) != self.shape:
            raise ValueError(f"array shape {array.shape} does not match image grid {self.shape}")
        return replace(self, array=array, meta={**self.meta, **meta_updates})

    def to_sitk(self, array: np.ndarray | None = None) -> sitk.Image:
        """SimpleITK image with this geometry; `array` (same shape) replaces the pixels when given."""
        pixels = self.array if array is None else array
        image = sitk.GetImageFromArray(np.ascontiguousarray(pixels))
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image, meta: dict | None = None) -> "MedicalImage":
        return cls(
            array=sitk.GetArrayFromImage(image).astype(np.float32, copy=False),
            spacing=image.GetSpacing(),
            origin=image.GetOrigin(),
            direction=image.GetDirection(),
            meta=dict(meta or {}),
        )

    def same_geometry(self, other: "MedicalImage", atol: float = 1e-5) -> bool:
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=atol)
            and np.allclose(self.origin, other.origin, atol=atol)
            and np.allclose(self.direction, other.direction, atol=atol)
        )
