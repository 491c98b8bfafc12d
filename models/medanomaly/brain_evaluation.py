"""Brain anomaly maps scored against tumour masks, pixel by pixel inside the brain: shared by the uncertainty-VAE
reproduction (`medanomaly.reproduce.uncertainty_vae`) and benchmarks/bench_vae.py.

The maps of a brain model (`BrainSliceModel`) come back on each slice's grid, 0 outside the brain; the figures
count only brain pixels (the case's `roi`), so the background never inflates an AUROC.
"""
from __future__ import annotations

import time

import numpy as np

from . import metrics
from .brain import background_level, derive_brain_mask, scale_by_percentiles
from .preprocess import normalise_by_median

# The rows of the paper's tables for the uncertainty VAE: our map name -> the paper's row.
VAE_ROWS = {"squared": "VAE squared error", "L": "VAE-L", "U": "VAE-U", "E": "VAE-E"}


def raw_intensity_map(slice_2d: np.ndarray, intensity: str = "median", percentiles=(1.0, 50.0)) -> np.ndarray:
    """The no-model baseline: the brain-scaled intensity itself (tumour is bright on FLAIR), 0 outside the brain."""
    brain = derive_brain_mask(slice_2d)
    if not brain.any():
        return np.zeros(slice_2d.shape, np.float32)
    if intensity == "percentile":
        return scale_by_percentiles(slice_2d, brain, percentiles)
    shifted = slice_2d - background_level(slice_2d, brain)
    brain &= shifted > 0
    return normalise_by_median(shifted, brain) if brain.any() else np.zeros(slice_2d.shape, np.float32)


def pixel_figures(masks, maps, rois) -> dict:
    """Pixel AUROC, AUPRC and the best Dice over thresholds, inside the rois (brain masks)."""
    dice, threshold = metrics.best_dice(masks, maps, roi=rois)
    return {"auroc": metrics.pixel_auroc(masks, maps, roi=rois), "auprc": metrics.pixel_auprc(masks, maps, roi=rois),
            "dice": dice, "dice_threshold": threshold}


def brain_maps(model, images) -> tuple[dict, float]:
    """{map name: one map per image} with the model's main map and every extra map, and seconds per image."""
    started = time.perf_counter()
    results = [model.predict(image) for image in images]
    seconds = (time.perf_counter() - started) / max(len(images), 1)
    maps = {model.map_name(): [result.map for result in results]}
    for name in results[0].extras if results else ():
        maps[name] = [result.extras[name] for result in results]
    return maps, seconds


def pixel_labels_and_values(masks, maps, rois) -> tuple[np.ndarray, np.ndarray]:
    """Brain pixels of every slice, flattened: (tumour 0/1, map value), e.g. for ROC curves."""
    labels = np.concatenate([(np.asarray(m) > 0)[np.asarray(r) > 0] for m, r in zip(masks, rois)])
    values = np.concatenate([np.asarray(v)[np.asarray(r) > 0] for v, r in zip(maps, rois)])
    return labels.astype(np.uint8), values.astype(np.float32)


def card_figures(model, report_cases) -> dict:
    """The model card's brain figures: pixel sensitivity and specificity inside the brain at the calibrated pixel
    threshold (Youden's J on the calibration cases) over the report slices, and the seconds one whole volume of the
    first report case takes (every axial slice, maps back on the volume's grid)."""
    from .base import as_items
    from .io import read_image

    items = as_items(report_cases)
    threshold = model.thresholds.get("pixel")
    figures = {"pixel_threshold_method": (model.calibration.get("pixel") or {}).get("method")}
    if threshold is not None:
        labels, values = pixel_labels_and_values([np.zeros(item.image.shape) if item.mask is None else item.mask
                                                  for item in items],
                                                 [model.predict(item.image).map for item in items],
                                                 [item.roi for item in items])
        called = values >= float(threshold)
        figures["pixel_sensitivity_at_threshold"] = float(called[labels > 0].mean()) if labels.any() else None
        figures["pixel_specificity_at_threshold"] = float((~called[labels == 0]).mean())
    volume = read_image(report_cases[0].image)
    started = time.perf_counter()
    model.predict(volume)
    figures["seconds_per_volume"] = round(time.perf_counter() - started, 2)
    figures["volume_shape"] = "x".join(str(n) for n in volume.shape)
    return figures
