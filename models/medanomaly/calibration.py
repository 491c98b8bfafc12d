"""Thresholds from validation data, recorded with the method that set them.

- Validation with abnormal images: the threshold maximising Youden's J (sensitivity + specificity - 1) on
  image scores, and on pixel values where lesion masks exist.
- Validation with normal images only: a fixed false-positive rate, i.e. a high percentile of normal scores
  and of normal map values.
Statistics of the normal maps travel with the thresholds, so every client shows the heatmap on one scale.

`Calibration` holds all three (thresholds, the record of how they were set, normal statistics) and applies them to
a prediction: the mask, whether the image is anomalous, and a normalised score that puts every model's image
threshold at 0.5."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

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
    calibration = {"method": image["method"], "image": image, "pixel": pixel, "n_normal": n_normal, "n_abnormal": n_abnormal}
    return thresholds, calibration, stats


UNCALIBRATED = "uncalibrated"


@dataclass
class Calibration:
    """A model's thresholds, how they were set, and the statistics of its normal maps.

    `thresholds` {"image", "pixel"} (None until calibrated), `record` {"method", "image", "pixel", "n_normal",
    "n_abnormal", "source"}, `stats` {"normal_score_mean", "normal_score_std", "map_display_range", and whatever a
    model adds}. The checkpoint stores `to_dict()` under the same keys as before, so older checkpoints load."""

    thresholds: dict = field(default_factory=lambda: {"image": None, "pixel": None})
    record: dict = field(default_factory=lambda: {"method": UNCALIBRATED})
    stats: dict = field(default_factory=dict)

    @classmethod
    def from_validation(cls, results, items, fpr: float, pixel_fpr: float, seed: int = 0,
                        source: str = "validation") -> Calibration:
        """Thresholds from predictions on validation items (see the module docstring for the rules)."""
        thresholds, record, stats = calibrate_thresholds(results, items, fpr=fpr, pixel_fpr=pixel_fpr, seed=seed)
        return cls(thresholds, {**record, "source": source}, stats)

    @property
    def image_threshold(self) -> float | None:
        return self.thresholds.get("image")

    @property
    def pixel_threshold(self) -> float | None:
        return self.thresholds.get("pixel")

    @property
    def method(self) -> str:
        return self.record.get("method", UNCALIBRATED)

    def mask(self, anomaly_map: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """uint8 mask, 1 where the map reaches the pixel threshold (or `threshold`); all 0 when uncalibrated."""
        threshold = self.pixel_threshold if threshold is None else float(threshold)
        if threshold is None:
            return np.zeros(np.shape(anomaly_map), dtype=np.uint8)
        return (np.asarray(anomaly_map) >= threshold).astype(np.uint8)

    def is_anomalous(self, score: float) -> bool | None:
        return None if self.image_threshold is None else bool(score >= self.image_threshold)

    def normalised_score(self, score: float) -> float | None:
        """The score on a scale shared by all models: sigmoid((score - image threshold) / spread), so the
        threshold maps to 0.5 and the order of scores is kept. The spread is the standard deviation of the
        normal validation scores (a normal image one spread below the threshold gets 0.27); None when
        uncalibrated."""
        threshold = self.image_threshold
        if threshold is None:
            return None
        spread = float(self.stats.get("normal_score_std") or 0.0)
        if not spread > 0:
            spread = abs(threshold) or 1.0
        z = (float(score) - threshold) / spread
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0

    def apply(self, score: float, anomaly_map: np.ndarray, threshold: float | None = None) -> tuple[np.ndarray, dict]:
        """-> (mask, the result's meta about thresholds) for one prediction. `threshold` overrides the pixel
        threshold for this call only."""
        meta = {
            "image_threshold": self.image_threshold,
            "pixel_threshold": self.pixel_threshold if threshold is None else float(threshold),
            "threshold_source": "request" if threshold is not None else self.method,
            "calibration": self.record,
            "is_anomalous": self.is_anomalous(score),
            "normalised_score": self.normalised_score(score),
            "display_range": self.stats.get("map_display_range"),
        }
        return self.mask(anomaly_map, threshold), meta

    def to_dict(self) -> dict:
        return {"thresholds": dict(self.thresholds), "calibration": dict(self.record), "stats": dict(self.stats)}

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        """From `to_dict()` or a checkpoint payload; missing parts mean "uncalibrated"."""
        thresholds = {"image": None, "pixel": None, **dict(data.get("thresholds") or {})}
        return cls(thresholds, dict(data.get("calibration") or {"method": UNCALIBRATED}), dict(data.get("stats") or {}))
