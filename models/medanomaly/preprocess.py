"""Preprocessing steps from the papers, each a small function over numpy arrays in numpy (row, col) order.

Geometric steps return what is needed to undo them, so every map comes back on the input's own grid."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from monai.transforms import Resize, ScaleIntensityRange
from scipy import ndimage
from skimage.filters import threshold_otsu


def to_unit_range(array: np.ndarray, low_percentile: float = 0.5, high_percentile: float = 99.5,
                  mask: np.ndarray | None = None) -> tuple[np.ndarray, tuple[float, float]]:
    """Clip to the given percentiles (of the pixels inside `mask` when given) and scale to [0, 1].

    Percentiles rather than min/max so that a burnt-in label or a dead pixel does not squash the film. The
    percentiles are taken here (MONAI's ScaleIntensityRangePercentiles takes no mask and does not report them);
    MONAI's ScaleIntensityRange does the clipping and scaling."""
    values = array[mask > 0] if mask is not None and np.any(mask) else array
    low, high = (float(v) for v in np.percentile(values, [low_percentile, high_percentile]))
    if high <= low:  # a constant image: keep it constant rather than dividing by zero
        return np.zeros_like(array, dtype=np.float32), (low, high)
    scale = ScaleIntensityRange(a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True, dtype=np.float32)
    return np.asarray(scale(np.asarray(array, dtype=np.float32))), (low, high)


@dataclass(frozen=True)
class ResizeInfo:
    """How an image was fitted into a square: enough to put a map back on the original grid."""

    original_shape: tuple[int, int]
    resized_shape: tuple[int, int]
    offset: tuple[int, int]  # where the resized image starts inside the padded square

    def valid_region(self) -> tuple[slice, slice]:
        (row, col), (height, width) = self.offset, self.resized_shape
        return slice(row, row + height), slice(col, col + width)


def resize_keep_aspect(array: np.ndarray, size: int, pad_value: float | None = None) -> tuple[np.ndarray, ResizeInfo]:
    """Resize the longest side to `size` keeping the aspect ratio, then pad to size x size.

    The padding is the image minimum by default (the chest X-ray VAE paper), i.e. background, not a fake
    bright or dark border that a reconstruction model would have to learn."""
    fill = float(array.min()) if pad_value is None else float(pad_value)
    resized = Resize(spatial_size=size, size_mode="longest", mode="area")(array[None].astype(np.float32))
    resized = np.asarray(resized)[0]
    height, width = resized.shape
    offset = ((size - height) // 2, (size - width) // 2)
    square = np.full((size, size), fill, dtype=np.float32)
    square[offset[0]:offset[0] + height, offset[1]:offset[1] + width] = resized
    return square, ResizeInfo(tuple(array.shape), (height, width), offset)


def undo_resize(square_map: np.ndarray, info: ResizeInfo) -> np.ndarray:
    """Crop the padding off a map computed on the square and resize it back to the original grid."""
    cropped = square_map[info.valid_region()]
    restored = Resize(spatial_size=info.original_shape, mode="bilinear")(cropped[None].astype(np.float32))
    return np.asarray(restored)[0].astype(np.float32)


def normalise_by_median(array: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Divide by the median intensity inside `mask` (brain MRI): scanner gain drops out, tissue contrast stays.
    Pixels outside the mask are set to 0."""
    inside = mask > 0
    if not np.any(inside):
        raise ValueError("normalise_by_median needs a non-empty mask")
    median = float(np.median(array[inside]))
    if median == 0:
        raise ValueError("the median inside the mask is 0; intensities must be positive inside the mask")
    return np.where(inside, array / median, 0.0).astype(np.float32)


def foreground_mask(array: np.ndarray, min_size_fraction: float = 0.01) -> np.ndarray:
    """Tissue mask by Otsu's threshold, holes filled, specks smaller than `min_size_fraction` of the image removed.

    For mammograms this is the breast; the film background and scanner labels are small or dark."""
    if float(array.max()) == float(array.min()):
        return np.zeros(array.shape, dtype=bool)
    mask = array > threshold_otsu(array)
    mask = ndimage.binary_fill_holes(mask)
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = ndimage.sum(mask, labels, index=np.arange(1, count + 1))
    keep = np.flatnonzero(sizes >= min_size_fraction * mask.size) + 1
    return np.isin(labels, keep)


def to_tensor_batch(arrays: list[np.ndarray] | np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, H, W) arrays -> (N, 1, H, W) float tensor on `device`."""
    return torch.as_tensor(np.stack(arrays) if isinstance(arrays, list) else arrays, dtype=torch.float32,
                           device=device).unsqueeze(1)
