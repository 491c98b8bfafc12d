"""Image- and pixel-level anomaly metrics.

Convention everywhere: a higher value means "more anomalous", and a case or pixel is called positive
(abnormal) when its value >= threshold. Labels and masks are truthy for abnormal / lesion.
Curve metrics use scikit-learn. Where a metric is undefined because only one class is present (e.g. no
abnormal case in the set), it is NaN rather than an exception or warning, so that a summary of a partial
benchmark still completes; NaN is a Python float and `json.dumps` writes it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

__all__ = [
    "YoudenResult",
    "best_dice",
    "dice",
    "dice_at_threshold",
    "image_auprc",
    "image_auroc",
    "normal_percentile_threshold",
    "pixel_auprc",
    "pixel_auroc",
    "summarize",
    "youden_threshold",
]


# ---------------------------------------------------------------------------------------------- helpers


def _labels_scores(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinite values")
    return y, s


def _both_classes(y: np.ndarray) -> bool:
    return bool(y.any()) and not bool(y.all())


def _as_list(arrays) -> list:
    """One array, or a list of arrays (one per case), as a list."""
    if arrays is None:
        return []
    if isinstance(arrays, np.ndarray):
        return [arrays]
    return list(arrays)


def _pool_pixels(masks, maps, roi=None) -> tuple[np.ndarray, np.ndarray]:
    """Flatten (mask, map[, roi]) of every case into one label vector and one value vector.

    Cases whose mask or map is None are skipped (no pixel ground truth). Pixels outside a given roi are dropped.
    """
    mask_list, map_list = _as_list(masks), _as_list(maps)
    roi_list = _as_list(roi) if roi is not None else [None] * len(mask_list)
    if not (len(mask_list) == len(map_list) == len(roi_list)):
        raise ValueError(f"{len(mask_list)} masks, {len(map_list)} maps and {len(roi_list)} rois: counts differ")
    labels, values = [], []
    for index, (mask, amap, region) in enumerate(zip(mask_list, map_list, roi_list)):
        if mask is None or amap is None:
            continue
        mask, amap = np.asarray(mask), np.asarray(amap)
        if mask.shape != amap.shape:
            raise ValueError(f"case {index}: mask shape {mask.shape} differs from map shape {amap.shape}")
        if region is not None:
            region = np.asarray(region).astype(bool)
            if region.shape != mask.shape:
                raise ValueError(f"case {index}: roi shape {region.shape} differs from mask shape {mask.shape}")
            mask, amap = mask[region], amap[region]
        labels.append((mask > 0).ravel())
        values.append(amap.ravel())
    if not labels:
        return np.zeros(0, dtype=bool), np.zeros(0, dtype=np.float64)
    values = np.concatenate(values)
    if not np.all(np.isfinite(values)):
        raise ValueError("anomaly maps contain NaN or infinite values")
    return np.concatenate(labels), values


def _subsample(y: np.ndarray, v: np.ndarray, max_pixels: int | None, seed: int):
    """The same uniform random subset of pixels on every call with the same seed (for curve metrics)."""
    if max_pixels is None or y.size <= max_pixels:
        return y, v
    keep = np.sort(np.random.default_rng(seed).choice(y.size, size=int(max_pixels), replace=False))
    return y[keep], v[keep]


# ---------------------------------------------------------------------------------------------- image level


def image_auroc(labels, scores) -> float:
    """Area under the ROC curve of image scores (positive when score >= threshold); NaN with one class only."""
    y, s = _labels_scores(labels, scores)
    return float(roc_auc_score(y, s)) if _both_classes(y) else math.nan


def image_auprc(labels, scores) -> float:
    """Average precision (area under precision-recall, abnormal = positive, positive when score >= threshold).

    NaN with one class only: with no abnormal case recall is undefined, and with only abnormal cases AP would
    be a meaningless 1.0.
    """
    y, s = _labels_scores(labels, scores)
    return float(average_precision_score(y, s)) if _both_classes(y) else math.nan


@dataclass(frozen=True)
class YoudenResult:
    """Threshold maximising J = sensitivity + specificity - 1, with positive when value >= threshold."""

    threshold: float
    j: float
    sensitivity: float
    specificity: float

    def as_dict(self) -> dict:
        return {"threshold": self.threshold, "j": self.j, "sensitivity": self.sensitivity,
                "specificity": self.specificity}


def youden_threshold(labels, values) -> YoudenResult:
    """Youden's J optimum over the ROC curve's thresholds (sklearn roc_curve, whose rule is value >= threshold).

    The leading infinite threshold (call nothing positive) is dropped, so the threshold is always one of the
    observed values. Ties in J go to the highest threshold (fewest positives). Raises ValueError when labels
    hold only one class, since no threshold separates anything then.
    """
    y, v = _labels_scores(labels, values)
    if not _both_classes(y):
        raise ValueError("Youden's threshold needs both normal and abnormal cases")
    fpr, tpr, thresholds = roc_curve(y, v, drop_intermediate=False)
    finite = np.isfinite(thresholds)
    fpr, tpr, thresholds = fpr[finite], tpr[finite], thresholds[finite]
    j = tpr - fpr
    best = int(np.argmax(j))  # thresholds decrease along the curve: the first maximum is the highest threshold
    return YoudenResult(
        threshold=float(thresholds[best]),
        j=float(j[best]),
        sensitivity=float(tpr[best]),
        specificity=float(1.0 - fpr[best]),
    )


def normal_percentile_threshold(values, fpr: float = 0.05) -> float:
    """The (1 - fpr) quantile of normal cases' values (linear interpolation).

    With positive when value >= threshold, about a fraction `fpr` of normal cases is called abnormal.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("no normal values to take a percentile of")
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must be within [0, 1], got {fpr}")
    if not np.all(np.isfinite(v)):
        raise ValueError("values contain NaN or infinite values")
    return float(np.quantile(v, 1.0 - fpr))


def _sensitivity_specificity(y: np.ndarray, s: np.ndarray, threshold: float) -> dict:
    predicted = s >= threshold
    sensitivity = float(predicted[y].mean()) if y.any() else math.nan
    specificity = float((~predicted[~y]).mean()) if (~y).any() else math.nan
    return {"threshold": float(threshold), "sensitivity": sensitivity, "specificity": specificity}


# ---------------------------------------------------------------------------------------------- pixel level


def pixel_auroc(masks, maps, roi=None, max_pixels: int | None = 2_000_000, seed: int = 0) -> float:
    """ROC AUC over the pixels of all cases pooled (lesion = mask > 0; positive when map value >= threshold).

    `masks`, `maps` (and `roi`) are lists of (H, W) or (D, H, W) arrays, one per case, or single arrays;
    pixels outside `roi` are ignored, and cases with a None mask or map are skipped. Above `max_pixels` a
    uniform random subset (fixed by `seed`) is used. NaN when the pooled pixels hold one class only.
    """
    y, v = _subsample(*_pool_pixels(masks, maps, roi), max_pixels, seed)
    return float(roc_auc_score(y, v)) if _both_classes(y) else math.nan


def pixel_auprc(masks, maps, roi=None, max_pixels: int | None = 2_000_000, seed: int = 0) -> float:
    """Average precision over pooled pixels; same inputs, subsampling and NaN rule as `pixel_auroc`."""
    y, v = _subsample(*_pool_pixels(masks, maps, roi), max_pixels, seed)
    return float(average_precision_score(y, v)) if _both_classes(y) else math.nan


def dice(pred_mask, true_mask) -> float:
    """Dice = 2|A and B| / (|A| + |B|) of two binary masks (truthy = lesion); 1.0 when both are empty."""
    pred, true = np.asarray(pred_mask).astype(bool), np.asarray(true_mask).astype(bool)
    if pred.shape != true.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {true.shape}")
    total = int(pred.sum()) + int(true.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(pred, true).sum()) / total


def dice_at_threshold(masks, maps, threshold: float, roi=None) -> float:
    """Dice of (map >= threshold) against the masks, pooled over the pixels of all cases (inside roi).

    1.0 when neither the masks nor the prediction have a positive pixel.
    """
    y, v = _pool_pixels(masks, maps, roi)
    predicted = v >= threshold
    total = int(y.sum()) + int(predicted.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(y, predicted).sum()) / total


def best_dice(masks, maps, roi=None) -> tuple[float, float]:
    """Highest pooled Dice over all thresholds, exactly, and the threshold reaching it: (dice, threshold).

    Pixels are sorted by decreasing value; for each distinct value t, calling pixels with value >= t lesion
    gives predicted positives = rank of t's last pixel and true positives = cumulative lesion count there,
    so Dice(t) = 2 TP / (P + predicted positives) for every t at once. Ties go to the highest threshold.
    With no lesion pixel at all, the best is 1.0 by predicting nothing: the threshold is then just above the
    largest value. With no pixel at all: (nan, nan).
    """
    y, v = _pool_pixels(masks, maps, roi)
    if y.size == 0:
        return math.nan, math.nan
    positives = int(y.sum())
    if positives == 0:
        return 1.0, float(np.nextafter(v.max(), np.inf))
    order = np.argsort(-v, kind="stable")
    sorted_values = v[order]
    true_positives = np.cumsum(y[order], dtype=np.int64)
    # The last index of each run of equal values: predicting ">= that value" includes the whole run.
    run_ends = np.flatnonzero(np.append(sorted_values[1:] != sorted_values[:-1], True))
    predicted_positives = run_ends + 1
    scores = 2.0 * true_positives[run_ends] / (positives + predicted_positives)
    best = int(np.argmax(scores))
    return float(scores[best]), float(sorted_values[run_ends[best]])


# ---------------------------------------------------------------------------------------------- summary


def summarize(labels, scores, masks=None, maps=None, roi=None, threshold=None, pixel_threshold=None) -> dict:
    """All metrics of one evaluation as a JSON-ready dict of plain floats/ints (NaN where undefined).

    Image level: image_auroc, image_auprc, n_normal, n_abnormal, youden {threshold, j, sensitivity,
    specificity} and, when `threshold` is given, at_threshold {threshold, sensitivity, specificity}.
    Pixel level, when `masks` and `maps` are given (one entry per case, None where unknown): pixel_auroc,
    pixel_auprc, best_dice, best_dice_threshold and, when `pixel_threshold` is given, dice_at_threshold.
    When there is one mask entry per case, a normal case without a mask counts as all pixels normal and an
    abnormal case without a mask (lesion not outlined) is left out of the pixel metrics; masks/maps of another
    length are taken as the caller's own selection of cases with pixel ground truth.
    """
    y, s = _labels_scores(labels, scores)
    result = {
        "n_normal": int((~y).sum()),
        "n_abnormal": int(y.sum()),
        "image_auroc": image_auroc(y, s),
        "image_auprc": image_auprc(y, s),
    }
    if _both_classes(y):
        result["youden"] = youden_threshold(y, s).as_dict()
    else:
        result["youden"] = {"threshold": math.nan, "j": math.nan, "sensitivity": math.nan, "specificity": math.nan}
    if threshold is not None:
        result["at_threshold"] = _sensitivity_specificity(y, s, float(threshold))

    if masks is not None and maps is not None:
        mask_list, map_list = _as_list(masks), _as_list(maps)
        if len(mask_list) != len(map_list):
            raise ValueError(f"{len(mask_list)} masks but {len(map_list)} maps")
        if len(mask_list) == len(y):  # one entry per case: a missing mask of a normal case means no lesion
            filled = [
                np.zeros(np.shape(amap), dtype=np.uint8) if mask is None and amap is not None and not abnormal
                else mask
                for mask, amap, abnormal in zip(mask_list, map_list, y)
            ]
        else:  # the caller already kept only the cases with pixel ground truth
            filled = mask_list
        result["pixel_auroc"] = pixel_auroc(filled, map_list, roi)
        result["pixel_auprc"] = pixel_auprc(filled, map_list, roi)
        result["best_dice"], result["best_dice_threshold"] = best_dice(filled, map_list, roi)
        if pixel_threshold is not None:
            result["dice_at_threshold"] = dice_at_threshold(filled, map_list, float(pixel_threshold), roi)
            result["pixel_threshold"] = float(pixel_threshold)
    return result
