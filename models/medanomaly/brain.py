"""Brain MRI preprocessing shared by the brain models: brain mask, positive shift, median normalisation, 128^2.

Each axial slice is
1. masked to the brain: the given mask, or one derived from the pixels (see `derive_brain_mask`);
2. shifted so that intensities are positive: the background level is subtracted. BraTS volumes are z-scored
   inside the brain (negative values there, a constant background just below the brain's minimum), so dividing
   them by a median would flip or blow up contrast; after subtracting the background every brain pixel is > 0.
   For an ordinary scan with a zero background the shift is 0 and this is the plain median normalisation;
3. divided by the median intensity inside the brain (`preprocess.normalise_by_median`), 0 outside it;
4. resized keeping the aspect ratio to image_size^2 (128 by default), padded with 0 (the background).

Slices are normalised one by one so that a manifest slice, a film and a slice of a whole volume get exactly
the same treatment at training and at prediction time.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .base import AnomalyModel, SliceScores, slices_of
from .modalities import BRAIN, VOLUME_MODALITIES
from .preprocess import ResizeInfo, foreground_mask, normalise_by_median, resize_keep_aspect, to_tensor_batch, undo_resize

# A slice whose minimum value covers at least this share of its pixels has a constant background
# (BraTS after skull stripping, a zero-filled scan): the brain is then everything above it.
CONSTANT_BACKGROUND_FRACTION = 0.05
BRAIN_DEFAULTS = {
    "image_size": 128,
    "min_brain_fraction": 0.05,  # training slices need at least this share of brain pixels
}


def derive_brain_mask(slice_2d: np.ndarray) -> np.ndarray:
    """The brain (or head) of one slice without a given mask.

    With a constant background (skull-stripped BraTS, zero-filled scans) it is every pixel above the background
    value, holes filled. Otherwise a foreground mask by Otsu's threshold: on a scan that was not skull-stripped
    (e.g. IXI) that is the head, not only the brain."""
    low = float(slice_2d.min())
    at_low = slice_2d <= low
    if at_low.mean() >= CONSTANT_BACKGROUND_FRACTION:
        return ndimage.binary_fill_holes(~at_low)
    return foreground_mask(slice_2d)


def background_level(slice_2d: np.ndarray, brain: np.ndarray) -> float:
    """The intensity subtracted before the median division: 0 when the brain is already positive (an ordinary
    scan is left alone), else the background's value (the lowest value outside the brain, or inside it when
    lower), so that every brain pixel becomes positive."""
    outside = slice_2d[~brain]
    level = float(outside.min()) if outside.size else float(slice_2d.min())
    inside_min = float(slice_2d[brain].min()) if brain.any() else level
    if inside_min > 0:
        return 0.0  # already positive inside the brain: plain median normalisation
    return min(level, inside_min)


@dataclass
class BrainSlice:
    """One slice ready for a network: the normalised square, its brain mask, and how to go back."""

    square: np.ndarray  # (S, S) float32, median-normalised, 0 outside the brain
    square_mask: np.ndarray  # (S, S) bool
    mask: np.ndarray  # (H, W) bool: the brain on the slice's own grid
    info: ResizeInfo
    brain_fraction: float


def prepare_brain_slice(slice_2d: np.ndarray, size: int, mask: np.ndarray | None = None) -> BrainSlice:
    """Steps 1-4 of the module docstring for one (H, W) slice; `mask` is the brain when known."""
    slice_2d = np.asarray(slice_2d, dtype=np.float32)
    brain = derive_brain_mask(slice_2d) if mask is None else np.asarray(mask) > 0
    if brain.shape != slice_2d.shape:
        raise ValueError(f"brain mask {brain.shape} does not match the slice {slice_2d.shape}")
    if brain.any():
        shifted = slice_2d - background_level(slice_2d, brain)
        # A brain pixel exactly at the background level would make a zero: keep the mask to positive pixels.
        brain = brain & (shifted > 0)
    if brain.any():
        normalised = normalise_by_median(shifted, brain)
    else:
        normalised = np.zeros_like(slice_2d)
    square, info = resize_keep_aspect(normalised, size, pad_value=0.0)
    square_mask, _ = resize_keep_aspect(brain.astype(np.float32), size, pad_value=0.0)
    return BrainSlice(square, square_mask > 0.5, brain, info, float(brain.mean()))


class BrainSliceModel(AnomalyModel):
    """Base of the brain models: brain preprocessing, training slices with their brain masks, per-pixel maps put
    back on each slice's grid and zeroed outside the brain, slice score = mean of the map inside the brain.

    A subclass fills `build_network`, `training_loss(x, brain)` and `square_maps(x, brain) -> {name: (N, S, S)}`
    and names its default map in `default_map` (or config "anomaly_map")."""

    default_config = dict(BRAIN_DEFAULTS)
    preprocessing_keys = ("image_size",)
    default_map = "squared"
    modalities = VOLUME_MODALITIES
    body_parts = BRAIN
    smoke_config = {"image_size": 32, "epochs": 1, "batch_size": 4}

    def prepare(self, slice_2d: np.ndarray, mask: np.ndarray | None = None) -> BrainSlice:
        return prepare_brain_slice(slice_2d, int(self.config["image_size"]), mask)

    def training_samples(self, item, rng=None) -> list[tuple[np.ndarray, ...]]:
        """(normalised slice, brain mask) per slice with enough brain: the mask lets a loss ignore background.
        A training visit of a volume keeps one of them at random (see `AnomalyModel.training_samples`)."""
        roi = getattr(item, "roi", None)
        masks = slices_of(np.asarray(roi)) if roi is not None else None
        samples = []
        for index, slice_2d in enumerate(slices_of(item.image.array)):
            prepared = self.prepare(slice_2d, None if masks is None else masks[index])
            if prepared.brain_fraction >= float(self.config["min_brain_fraction"]):
                samples.append((prepared.square[None], prepared.square_mask[None].astype(np.float32)))
        return samples

    def map_name(self) -> str:
        return self.config.get("anomaly_map", self.default_map)

    def square_maps(self, x, brain) -> dict:
        raise NotImplementedError

    def score_slices(self, slices: list[np.ndarray]) -> SliceScores:
        prepared = [self.prepare(s) for s in slices]
        batch_size = int(self.config["predict_batch_size"])
        collected: dict[str, list] = {}
        for start in range(0, len(prepared), batch_size):
            chunk = prepared[start:start + batch_size]
            x = to_tensor_batch([p.square for p in chunk], self.device)
            brain = to_tensor_batch([p.square_mask.astype(np.float32) for p in chunk], self.device)
            for name, maps in self.square_maps(x, brain).items():
                collected.setdefault(name, []).append(np.asarray(maps, dtype=np.float32))
        on_grid = {}
        for name, chunks in collected.items():
            squares = np.concatenate(chunks)
            # Maps are only meaningful inside the brain: background pixels get 0 (also after interpolation).
            on_grid[name] = [np.where(p.mask, undo_resize(square, p.info), 0.0).astype(np.float32)
                             for square, p in zip(squares, prepared)]
        main = self.map_name()
        maps = on_grid[main]
        scores = np.array([float(m[p.mask].mean()) if p.mask.any() else 0.0 for m, p in zip(maps, prepared)])
        extras = {name: value for name, value in on_grid.items() if name != main}
        return SliceScores(scores=scores, maps=maps, extras=extras,
                           meta={"anomaly_map": main, "brain_fraction": [p.brain_fraction for p in prepared]})
