"""Patch scanning and stitching: a grid of patch corners covering an image, the patches kept by a foreground rule,
and per-patch maps or values put back on the image with overlaps averaged."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from monai.data.utils import dense_patch_slices
from monai.inferers import AvgMerger


@dataclass
class Patches:
    """Patches cut on a grid: `arrays` (N, p, p) and each patch's top-left corner (row, col)."""

    arrays: np.ndarray
    corners: list[tuple[int, int]]
    patch_size: int
    image_shape: tuple[int, int]


def grid_corners(shape: tuple[int, int], patch_size: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners of a grid at `stride` that covers the whole image (the last row and column of patches
    are aligned with the border, as MONAI's sliding-window inference does)."""
    if min(shape) < patch_size:
        raise ValueError(f"image {shape} is smaller than the patch size {patch_size}")
    slices = dense_patch_slices(shape, (patch_size, patch_size), (stride, stride))
    return sorted({(rows.start, cols.start) for rows, cols in slices})


def extract_patches(array: np.ndarray, patch_size: int, stride: int, foreground: np.ndarray | None = None,
                    min_foreground_fraction: float = 0.0) -> Patches:
    """Cut patch_size^2 patches at `stride`, keeping those whose foreground fraction is >= the minimum
    (1.0 means wholly inside the foreground, e.g. the lung field)."""
    corners = grid_corners(array.shape, patch_size, stride)
    if foreground is not None and min_foreground_fraction > 0:
        fraction = [float(foreground[r:r + patch_size, c:c + patch_size].mean()) for r, c in corners]
        corners = [corner for corner, value in zip(corners, fraction) if value >= min_foreground_fraction - 1e-9]
    arrays = np.stack([array[r:r + patch_size, c:c + patch_size] for r, c in corners]) if corners else \
        np.zeros((0, patch_size, patch_size), dtype=array.dtype)
    return Patches(arrays.astype(np.float32), corners, patch_size, tuple(array.shape))


def stitch_patches(patch_maps: np.ndarray, corners: list[tuple[int, int]], image_shape: tuple[int, int],
                   fill_value: float = 0.0) -> np.ndarray:
    """Put per-patch maps (N, p, p) back on the image, averaging where patches overlap (MONAI's `AvgMerger`).
    Pixels no patch covers get `fill_value`."""
    patch_maps = np.asarray(patch_maps, dtype=np.float64)
    if len(patch_maps) == 0:
        return np.full(image_shape, fill_value, dtype=np.float32)
    if patch_maps.ndim != 3:
        raise ValueError("stitch_patches takes per-patch maps (N, p, p); per-patch values need stitch_patch_values")
    merger = AvgMerger(merged_shape=(1, 1, *image_shape), value_dtype=torch.float64, count_dtype=torch.int32)
    for value, corner in zip(patch_maps, corners):
        merger.aggregate(torch.as_tensor(value)[None, None], corner)
    merged = merger.finalize()[0, 0].numpy()  # 0 / 0 where no patch lies
    return np.where(np.isnan(merged), fill_value, merged).astype(np.float32)


def stitch_patch_values(values: np.ndarray, corners: list[tuple[int, int]], patch_size: int,
                        image_shape: tuple[int, int], fill_value: float = 0.0) -> np.ndarray:
    """Paint one value per patch over its square (e.g. a patch's SAD) and average where patches overlap."""
    tiles = np.broadcast_to(np.asarray(values, dtype=np.float32)[:, None, None], (len(values), patch_size, patch_size))
    return stitch_patches(tiles, corners, image_shape, fill_value)
