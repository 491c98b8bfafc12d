"""Thresholds from validation data, recorded with the method that set them.

- Validation with abnormal images: the threshold maximising Youden's J (sensitivity + specificity - 1) on
  image scores, and on pixel values where lesion masks exist.
- Validation with normal images only: a fixed false-positive rate, i.e. a high percentile of normal scores
  and of normal map values.
Statistics of the normal maps travel with the thresholds, so every client shows the heatmap on one scale."""
from __future__ import annotations

import numpy as np

from .metrics import normal_percentile_threshold, youden_threshold

MAX_PIXELS = 2_000_000  # enough for a stable pixel threshold, small enough to keep calibration fast


def _region(item, shape) -> np.ndarray:
    roi = getattr(item, "roi", None)
    return np.ones(shape, dtype=bool) if roi is None else np.asarray(roi) > 0


def _sample_pixels(results, items, rng):
    """Pixel values and pixel labels: lesion pixels of masked abnormal images, all pixels of normal images.
    Abnormal images without a mask say nothing about which pixels are abnormal, so they are left out."""
    usable = [(r, i) for r, i in zip(results, items) if not i.is_abnormal or getattr(i, "mask", None) is not None]
    per_image = max(1, MAX_PIXELS // max(1, len(usable)))
    values, labels = [], []
    for result, item in usable:
        region = _region(item, result.map.shape)
        pixel_labels = (np.asarray(item.mask) > 0) if item.is_abnormal else np.zeros(result.map.shape, dtype=bool)
        chosen = np.flatnonzero(region.ravel())
        if chosen.size > per_image:
            chosen = rng.choice(chosen, per_image, replace=False)
        values.append(result.map.ravel()[chosen])
        labels.append(pixel_labels.ravel()[chosen])
    if not values:
        return np.zeros(0), np.zeros(0, dtype=bool)
    return np.concatenate(values), np.concatenate(labels)


def calibrate_thresholds(results, items, fpr: float, pixel_fpr: float, seed: int = 0):
    """-> (thresholds, calibration record, normal statistics) from predictions on validation items."""
    if not results:
        raise ValueError("calibration needs at least one validation image")
    scores = np.array([r.score for r in results], dtype=float)
    labels = np.array([bool(i.is_abnormal) for i in items])
    n_abnormal, n_normal = int(labels.sum()), int((~labels).sum())
    if n_normal == 0:
        raise ValueError("calibration needs normal images among the validation images")

    if n_abnormal > 0:
        youden = youden_threshold(labels.astype(int), scores)
        image = {"method": "youden", "threshold": youden.threshold, "j": youden.j,
                 "sensitivity": youden.sensitivity, "specificity": youden.specificity}
    else:
        image = {"method": "normal-percentile", "threshold": normal_percentile_threshold(scores, fpr), "fpr": fpr}

    rng = np.random.default_rng(seed)
    pixel_values, pixel_labels = _sample_pixels(results, items, rng)
    if pixel_labels.any():
        youden = youden_threshold(pixel_labels.astype(int), pixel_values)
        pixel = {"method": "youden", "threshold": youden.threshold, "j": youden.j,
                 "sensitivity": youden.sensitivity, "specificity": youden.specificity}
    else:
        pixel = {"method": "normal-percentile", "threshold": normal_percentile_threshold(pixel_values, pixel_fpr),
                 "fpr": pixel_fpr}

    normal_pixels = pixel_values[~pixel_labels]
    stats = {
        "normal_score_mean": float(scores[~labels].mean()),
        "normal_score_std": float(scores[~labels].std()),
        "map_display_range": [float(np.percentile(normal_pixels, 1)), float(np.percentile(normal_pixels, 99.9))],
    }
    thresholds = {"image": float(image["threshold"]), "pixel": float(pixel["threshold"])}
    method = "youden" if image["method"] == "youden" else "normal-percentile"
    calibration = {"method": method, "image": image, "pixel": pixel, "n_normal": n_normal, "n_abnormal": n_abnormal}
    return thresholds, calibration, stats
