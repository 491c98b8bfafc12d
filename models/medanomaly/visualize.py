"""PNG figures: the map blended over the film with the mask and ground-truth contours, and ROC curves."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; servers and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _middle_slice(array: np.ndarray | None, index: int | None) -> np.ndarray | None:
    if array is None or array.ndim == 2:
        return array
    return array[index]


def save_overlay(path: str | Path, image: np.ndarray, anomaly_map: np.ndarray, mask: np.ndarray | None = None,
                 truth: np.ndarray | None = None, title: str = "", display_range=None, alpha: float = 0.45) -> Path:
    """Film in grey, map in 'inferno' on top, predicted mask contour in cyan, ground truth in green.
    A volume shows the slice where the map is largest."""
    index = int(np.argmax(anomaly_map.reshape(anomaly_map.shape[0], -1).max(1))) if anomaly_map.ndim == 3 else None
    image, anomaly_map = _middle_slice(image, index), _middle_slice(anomaly_map, index)
    mask, truth = _middle_slice(mask, index), _middle_slice(truth, index)
    low, high = display_range if display_range else np.percentile(anomaly_map, [1, 99.5])
    figure, axis = plt.subplots(figsize=(5, 5), dpi=100)
    axis.imshow(image, cmap="gray")
    axis.imshow(anomaly_map, cmap="inferno", alpha=alpha, vmin=low, vmax=max(high, low + 1e-12))
    if mask is not None and np.any(mask) and not np.all(mask):
        axis.contour(mask > 0, levels=[0.5], colors="cyan", linewidths=1.0)
    if truth is not None and np.any(truth):
        axis.contour(truth > 0, levels=[0.5], colors="lime", linewidths=1.2)
    axis.set_title(title, fontsize=9)
    axis.axis("off")
    return save_figure(figure, path)


def save_roc(path: str | Path, labels, scores, title: str = "ROC") -> Path:
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(labels, scores)
    figure, axis = plt.subplots(figsize=(4, 4), dpi=100)
    axis.plot(fpr, tpr, label=f"AUROC {roc_auc_score(labels, scores):.3f}")
    axis.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    axis.set_xlabel("false-positive rate")
    axis.set_ylabel("true-positive rate")
    axis.set_title(title, fontsize=9)
    axis.legend(loc="lower right")
    return save_figure(figure, path)


def save_figure(figure, path: str | Path) -> Path:
    """Write a matplotlib figure as PNG (creating the folder) and free it: servers draw many figures."""
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
