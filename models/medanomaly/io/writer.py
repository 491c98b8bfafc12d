"""Write an image, or a map on its grid, as NRRD / NIfTI / MetaImage with the source geometry.

Writes are atomic: the file is written under a temporary name in the destination folder and then renamed
over the destination, so a reader (Slicer, the server) never sees a half-written file and a failed write
leaves nothing behind. The temporary name keeps the real extension because SimpleITK picks the writer from it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..atomic import atomic_destination
from .image import MedicalImage

WRITABLE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def write_image(image: MedicalImage, path, array: np.ndarray | None = None) -> Path:
    """Write `image` (or `array`, same shape, on the image's grid) to `path`; returns the path written."""
    path = Path(path)
    suffix = _writable_suffix(path)
    pixels = image.array if array is None else _storable(np.asarray(array))
    if tuple(pixels.shape) != image.shape:
        raise ValueError(f"array shape {pixels.shape} does not match the image grid {image.shape}")
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {folder}")

    try:
        with atomic_destination(path, suffix=suffix) as temporary:
            # gzip for NRRD/MHA: maps travel to Slicer over HTTP; .nii.gz is compressed by its extension anyway
            sitk.WriteImage(image.to_sitk(pixels), str(temporary), useCompression=suffix != ".nii")
    except RuntimeError as error:  # SimpleITK reports write failures (disk full, permissions) this way
        raise OSError(f"could not write {path}: {str(error).strip().splitlines()[-1]}") from error
    return path


def _writable_suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in WRITABLE_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    raise ValueError(f"cannot write '{path.name}': use one of {', '.join(WRITABLE_SUFFIXES)}")


def _storable(array: np.ndarray) -> np.ndarray:
    """Pixel types every reader understands: masks as uint8, maps as float32."""
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.dtype.kind == "f" and array.dtype != np.float32:
        return array.astype(np.float32)
    return array
