"""Figures of the pneumonia paper for the U-Net patch autoencoder: the SAD histogram of normal vs pneumonia patches,
patches whose SAD lies in a range drawn as boxes on the film, patches beside their reconstruction with both pixel
histograms, SAD maps over films, and lung-field masks over films. Each `*_figure` returns the matplotlib figure (for
reports); each `save_*` writes it as a PNG."""
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


def sad_histogram_figure(sad_by_group: dict, bins: int = 60, title: str = "Patch SAD", thresholds=()):
    """Overlaid density histograms of patch SAD, one per group (e.g. {"normal": ..., "pneumonia": ...}); dashed
    vertical lines at `thresholds`."""
    values = [np.asarray(v, dtype=float) for v in sad_by_group.values() if len(v)]
    if not values:
        raise ValueError("a SAD histogram needs at least one non-empty group")
    edges = np.linspace(min(v.min() for v in values), max(v.max() for v in values) + 1e-12, bins + 1)
    figure, axis = plt.subplots(figsize=(6, 4), dpi=100)
    for name, sad in sad_by_group.items():
        if len(sad):
            axis.hist(sad, bins=edges, density=True, histtype="stepfilled", alpha=0.45, label=f"{name} (n={len(sad)})")
    for threshold in thresholds:
        axis.axvline(threshold, color="k", linestyle="--", linewidth=0.8)
    axis.set_xlabel("SAD (mean |input - output| per patch)")
    axis.set_ylabel("density")
    axis.set_title(title, fontsize=10)
    axis.legend(fontsize=8)
    return figure


def save_sad_histogram(path, sad_by_group: dict, bins: int = 60, title: str = "Patch SAD") -> Path:
    """`sad_histogram_figure` written as a PNG."""
    return _save(sad_histogram_figure(sad_by_group, bins, title), path)


def patch_pairs_figure(inputs, outputs, names, bins: int = 32):
    """One row per patch: the input, the network's output, and both pixel histograms (the paper's input/output
    figures). Inputs and outputs are (N, p, p) in [0, 1]."""
    rows = len(inputs)
    figure, axes = plt.subplots(rows, 3, figsize=(7.5, 2.3 * rows), dpi=100, squeeze=False)
    edges = np.linspace(0, 1, bins + 1)
    for row, (patch, output, name) in enumerate(zip(inputs, outputs, names)):
        axes[row, 0].imshow(patch, cmap="gray", vmin=0, vmax=1)
        axes[row, 0].set_title(f"{name}: input", fontsize=8)
        axes[row, 1].imshow(output, cmap="gray", vmin=0, vmax=1)
        axes[row, 1].set_title(f"output, SAD {np.abs(output - patch).mean():.3f}", fontsize=8)
        for axis in axes[row, :2]:
            axis.axis("off")
        axes[row, 2].hist(np.ravel(patch), bins=edges, alpha=0.5, label="input")
        axes[row, 2].hist(np.ravel(output), bins=edges, alpha=0.5, label="output")
        axes[row, 2].set_xlabel("pixel value", fontsize=8)
        axes[row, 2].tick_params(labelsize=7)
        axes[row, 2].legend(fontsize=7)
    return figure


def sad_maps_figure(films, maps, lungs, titles, columns: int = 4):
    """SAD maps over their films (lung outline in cyan), several films side by side on one colour scale."""
    rows = int(np.ceil(len(films) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.5 * rows), dpi=100, squeeze=False)
    high = max(float(np.percentile(m, 99.5)) for m in maps)
    for axis, film, sad, lung, title in zip(axes.ravel(), films, maps, lungs, titles):
        axis.imshow(film, cmap="gray")
        axis.imshow(sad, cmap="inferno", alpha=0.45, vmin=0, vmax=max(high, 1e-12))
        if lung is not None and lung.any():
            axis.contour(lung, levels=[0.5], colors="cyan", linewidths=0.7)
        axis.set_title(title, fontsize=8)
    for axis in axes.ravel():
        axis.axis("off")
    return figure


def boxes_on_film(corners, patch_size: int, info: ResizeInfo) -> list[tuple[float, float, float, float]]:
    """Patch squares given on the preprocessed square, as (row, col, height, width) boxes on the film's grid."""
    scale_r = info.original_shape[0] / info.resized_shape[0]
    scale_c = info.original_shape[1] / info.resized_shape[1]
    return [((r - info.offset[0]) * scale_r, (c - info.offset[1]) * scale_c, patch_size * scale_r, patch_size * scale_c)
            for r, c in corners]


def patch_boxes_figure(film: np.ndarray, corners, sad, patch_size: int, info: ResizeInfo, low: float, high: float,
                       lung: np.ndarray | None = None, title: str = "", colours=None):
    """The film with a box around every patch whose SAD lies in [low, high] (the paper's patch-range figure);
    the lung field's outline in cyan when given (on the film's grid). `colours` (one per patch) overrides red."""
    sad = np.asarray(sad, dtype=float)
    chosen = [k for k in range(len(sad)) if low <= sad[k] <= high]
    figure, axis = plt.subplots(figsize=(5, 5), dpi=100)
    axis.imshow(film, cmap="gray")
    if lung is not None and lung.any():
        axis.contour(lung, levels=[0.5], colors="cyan", linewidths=0.8)
    for k, (row, col, height, width) in zip(chosen, boxes_on_film([corners[k] for k in chosen], patch_size, info)):
        colour = colours[k] if colours is not None else "red"
        axis.add_patch(Rectangle((col, row), width, height, fill=False, edgecolor=colour, linewidth=0.8))
    axis.set_title(title or f"{len(chosen)} patches with SAD in [{low:.3f}, {high:.3f}]", fontsize=9)
    axis.axis("off")
    return figure


def save_patch_boxes(path, film: np.ndarray, corners, sad, patch_size: int, info: ResizeInfo, low: float,
                     high: float, lung: np.ndarray | None = None, title: str = "") -> Path:
    """`patch_boxes_figure` written as a PNG."""
    return _save(patch_boxes_figure(film, corners, sad, patch_size, info, low, high, lung, title), path)


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
