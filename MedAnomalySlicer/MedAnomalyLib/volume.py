"""Volumes as Slicer holds them (numpy array in K,J,I order + IJK-to-RAS matrix) and their files.

Files are read and written with SimpleITK, which Slicer bundles: NRRD, NIfTI, MHA, and films (PNG, JPEG, DICOM).
ITK works in LPS; Slicer's nodes in RAS, hence the flip of the first two world axes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import VolumeFormatError

# RAS <-> LPS flips the first two world axes.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Volume:
    """`array` indexed [k, j, i] (slicer.util.arrayFromVolume order); `ijk_to_ras` a 4x4 matrix.

    A 2D film is a single-slice volume: array shape (1, rows, columns).
    """

    array: np.ndarray
    ijk_to_ras: np.ndarray

    def __post_init__(self):
        self.array = np.asarray(self.array)
        if self.array.ndim == 2:
            self.array = self.array[np.newaxis]
        if self.array.ndim != 3:
            raise VolumeFormatError(f"a volume needs 2 or 3 axes, got shape {self.array.shape}")
        self.ijk_to_ras = np.asarray(self.ijk_to_ras, dtype=float).reshape(4, 4)

    @classmethod
    def from_slicer_array(cls, array: np.ndarray, ijk_to_ras) -> "Volume":
        """From slicer.util.arrayFromVolume: a colour film (a vector volume, [k, j, i, rgb]) becomes grey, since
        the models score one channel."""
        array = np.asarray(array)
        if array.ndim == 4:
            if array.shape[-1] not in (1, 3, 4):
                raise VolumeFormatError(f"a vector volume with {array.shape[-1]} components cannot be scored")
            array = array[..., :3].astype(np.float32).mean(axis=-1)
        return cls(array, ijk_to_ras)

    @classmethod
    def film(cls, pixels: np.ndarray, spacing=(1.0, 1.0)) -> "Volume":
        """A 2D film the way Slicer loads it: one slice, LPS-aligned axes (RAS diagonal -1, -1, 1)."""
        matrix = np.diag([-float(spacing[1]), -float(spacing[0]), 1.0, 1.0])
        return cls(np.asarray(pixels)[np.newaxis], matrix)

    @property
    def shape(self) -> tuple:
        return tuple(self.array.shape)

    @property
    def spacing(self) -> tuple:
        """Spacing along i, j, k (mm)."""
        return tuple(float(v) for v in np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0))

    def with_array(self, array: np.ndarray) -> "Volume":
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise VolumeFormatError(f"array shape {array.shape} does not match the volume grid {self.array.shape}")
        return Volume(array, self.ijk_to_ras.copy())

    def same_grid(self, other: "Volume", tolerance: float = 1e-4) -> bool:
        return self.shape == other.shape and bool(np.allclose(self.ijk_to_ras, other.ijk_to_ras, atol=tolerance))


def write_volume(volume: Volume, path, compress: bool = True) -> Path:
    """Write `volume` in the format its extension names (NRRD, NIfTI, MHA...), atomically: a reader never sees a
    half-written file, and a failed write leaves the old file in place."""
    path = Path(path)
    array = np.ascontiguousarray(volume.array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    ijk_to_lps = RAS_TO_LPS @ volume.ijk_to_ras
    spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
    try:
        image = sitk.GetImageFromArray(array)
    except (RuntimeError, TypeError) as error:
        raise VolumeFormatError(f"cannot write pixel type {array.dtype}: {error}") from None
    image.SetSpacing([float(v) for v in spacing])
    image.SetOrigin([float(v) for v in ijk_to_lps[:3, 3]])
    image.SetDirection([float(v) for v in (ijk_to_lps[:3, :3] / spacing).ravel()])
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.part{''.join(path.suffixes)}")
    try:
        sitk.WriteImage(image, str(partial), useCompression=compress)
        os.replace(partial, path)
    except RuntimeError as error:
        raise VolumeFormatError(f"cannot write {path.name}: {_last_line(error)}") from None
    finally:
        partial.unlink(missing_ok=True)
    return path


def read_volume(path) -> Volume:
    """Read any image SimpleITK reads as a volume in RAS. A 2D film becomes one slice; a colour film becomes grey
    (the models score one channel), as `Volume.from_slicer_array` does for a colour node."""
    path = Path(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise VolumeFormatError(f"cannot read {path.name}: {_last_line(error)}") from None
    dimension = image.GetDimension()
    if dimension not in (2, 3):
        raise VolumeFormatError(f"{path.name}: {dimension}D images are not supported")
    array = sitk.GetArrayFromImage(image)
    components = image.GetNumberOfComponentsPerPixel()
    if components != 1:
        if components not in (3, 4):
            raise VolumeFormatError(f"{path.name}: images with {components} components per pixel cannot be scored")
        array = array[..., :3].astype(np.float32).mean(axis=-1)
    if dimension == 3 and array.ndim != 3:
        raise VolumeFormatError(f"{path.name}: only scalar volumes are supported (shape {array.shape})")
    direction = np.eye(3)
    direction[:dimension, :dimension] = np.array(image.GetDirection()).reshape(dimension, dimension)
    spacing = list(image.GetSpacing()) + [1.0] * (3 - dimension)
    origin = list(image.GetOrigin()) + [0.0] * (3 - dimension)
    matrix = np.eye(4)
    matrix[:3, :3] = direction * np.array(spacing)[np.newaxis, :]
    matrix[:3, 3] = origin
    return Volume(array, RAS_TO_LPS @ matrix)


def _last_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
