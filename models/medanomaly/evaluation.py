"""Evaluate a model on a manifest: image and pixel metrics, ROC curves and overlay PNGs."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import metrics
from .base import as_items
from .visualize import save_overlay, save_roc


def evaluate(model, manifest, out_dir: str | Path | None = None, n_overlays: int = 6, progress: bool = True) -> dict:
    """Predict every case of `manifest` and summarise. Returns a JSON-serialisable dict with image_auroc,
    pixel metrics where masks exist, counts and seconds_per_image."""
    items = as_items(manifest)
    labels, scores, masks, maps, rois, seconds = [], [], [], [], [], []
    for item in tqdm(items, desc=f"evaluate {model.name}", disable=not progress):
        started = time.perf_counter()
        result = model.predict(item.image)
        seconds.append(time.perf_counter() - started)
        labels.append(int(bool(item.is_abnormal)))
        scores.append(result.score)
        if getattr(item, "mask", None) is not None or not item.is_abnormal:
            masks.append(np.zeros(result.map.shape, bool) if item.mask is None else np.asarray(item.mask) > 0)
            maps.append(result.map)
            rois.append(None if getattr(item, "roi", None) is None else np.asarray(item.roi) > 0)

    has_pixel_truth = any(m.any() for m in masks)
    summary = metrics.summarize(
        labels, scores,
        masks=masks if has_pixel_truth else None, maps=maps if has_pixel_truth else None,
        roi=rois if has_pixel_truth and any(r is not None for r in rois) else None,
        threshold=model.thresholds.get("image"), pixel_threshold=model.thresholds.get("pixel"))
    summary.update({"model": model.name, "model_version": model.model_version,
                    "seconds_per_image": float(np.mean(seconds)) if seconds else None,
                    "image_threshold": model.thresholds.get("image"), "pixel_threshold": model.thresholds.get("pixel"),
                    "calibration": model.calibration.get("method")})
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if len(set(labels)) == 2:
            save_roc(out_dir / "roc_image.png", labels, scores, f"{model.name}: image level")
        _write_overlays(model, items, labels, scores, out_dir, n_overlays)
        (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def _write_overlays(model, items, labels, scores, out_dir: Path, n_overlays: int) -> None:
    """Overlays for the most and least anomalous abnormal and normal cases: what a reader checks first."""
    order = np.argsort(scores)
    abnormal = [i for i in order[::-1] if labels[i] == 1][: max(1, n_overlays // 2)]
    normal = [i for i in order if labels[i] == 0][: max(1, n_overlays - len(abnormal))]
    for index in abnormal + normal:
        item = items[index]
        result = model.predict(item.image)
        kind = "abnormal" if labels[index] else "normal"
        save_overlay(out_dir / f"overlay_{kind}_{index:04d}.png", item.image.array, result.map, result.mask,
                     None if item.mask is None else item.mask,
                     title=f"{model.name} {kind} score={result.score:.4g}",
                     display_range=model.stats.get("map_display_range"))
