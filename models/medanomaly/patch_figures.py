"""Figures of the pneumonia paper for the U-Net patch autoencoder: the SAD histogram of normal vs pneumonia patches,
patches whose SAD lies in a range drawn as boxes on the film, and lung-field masks over films."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; servers and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from .preprocess import ResizeInfo  # noqa: E402


def _save(figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def save_sad_histogram(path, sad_by_group: dict, bins: int = 60, title: str = "Patch SAD") -> Path:
    """Overlaid density histograms of patch SAD, one per group (e.g. {"normal": ..., "pneumonia": ...})."""
    values = [np.asarray(v, dtype=float) for v in sad_by_group.values() if len(v)]
    if not values:
        raise ValueError("save_sad_histogram needs at least one non-empty group")
    edges = np.linspace(min(v.min() for v in values), max(v.max() for v in values), bins + 1)
    figure, axis = plt.subplots(figsize=(6, 4), dpi=100)
    for name, sad in sad_by_group.items():
        if len(sad):
            axis.hist(sad, bins=edges, density=True, histtype="stepfilled", alpha=0.45, label=f"{name} (n={len(sad)})")
    axis.set_xlabel("SAD (mean |input - output| per patch)")
    axis.set_ylabel("density")
    axis.set_title(title, fontsize=10)
    axis.legend()
    return _save(figure, path)


def boxes_on_film(corners, patch_size: int, info: ResizeInfo) -> list[tuple[float, float, float, float]]:
    """Patch squares given on the preprocessed square, as (row, col, height, width) boxes on the film's grid."""
    scale_r = info.original_shape[0] / info.resized_shape[0]
    scale_c = info.original_shape[1] / info.resized_shape[1]
    return [((r - info.offset[0]) * scale_r, (c - info.offset[1]) * scale_c, patch_size * scale_r, patch_size * scale_c)
            for r, c in corners]


def save_patch_boxes(path, film: np.ndarray, corners, sad, patch_size: int, info: ResizeInfo, low: float,
                     high: float, lung: np.ndarray | None = None, title: str = "") -> Path:
    """The film with a box around every patch whose SAD lies in [low, high] (the paper's patch-range figure);
    the lung field's outline in cyan when given (on the film's grid)."""
    sad = np.asarray(sad, dtype=float)
    chosen = [k for k in range(len(sad)) if low <= sad[k] <= high]
    figure, axis = plt.subplots(figsize=(5, 5), dpi=100)
    axis.imshow(film, cmap="gray")
    if lung is not None and lung.any():
        axis.contour(lung, levels=[0.5], colors="cyan", linewidths=0.8)
    for (row, col, height, width) in boxes_on_film([corners[k] for k in chosen], patch_size, info):
        axis.add_patch(Rectangle((col, row), width, height, fill=False, edgecolor="red", linewidth=0.8))
    axis.set_title(title or f"{len(chosen)} patches with SAD in [{low:.3f}, {high:.3f}]", fontsize=9)
    axis.axis("off")
    return _save(figure, path)


def save_lung_overlay(path, film: np.ndarray, lung: np.ndarray, title: str = "") -> Path:
    """The lung field over the film: a translucent fill and its outline."""
    figure, axis = plt.subplots(figsize=(4, 4), dpi=100)
    axis.imshow(film, cmap="gray")
    axis.imshow(np.ma.masked_where(~lung, lung), cmap="autumn", alpha=0.3, vmin=0, vmax=1)
    if lung.any():
        axis.contour(lung, levels=[0.5], colors="red", linewidths=1.0)
    axis.set_title(title, fontsize=8)
    axis.axis("off")
    return _save(figure, path)
