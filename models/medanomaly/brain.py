"""Brain MRI preprocessing shared by the brain models: brain mask, intensity scaling, crop to the brain, 128^2.

Each axial slice is
1. masked to the brain: the given mask, or one derived from the pixels (see `derive_brain_mask`);
2. scaled inside the brain, by config `intensity`:
   - "median" (the default of the first brain models): shifted so that intensities are positive (the background
     level is subtracted: BraTS volumes are z-scored inside the brain, with a constant background just below the
     brain's minimum), then divided by the median inside the brain (`preprocess.normalise_by_median`);
   - "percentile": (x - p_low) / (p_high - p_low) with the `intensity_percentiles` (1, 50) inside the brain, so
     the darkest brain tissue (CSF) goes to 0 and the median tissue to 1 whatever the scanner's offset and gain:
     a raw IXI T1 (zero background, arbitrary units) and a z-scored BraTS T1c land on one scale. The median, not
     a high percentile, anchors the top so that a bright tumour in the slice does not compress everything else;
   0 outside the brain;
3. cropped to the brain's bounding box (plus a margin) when `crop_to_brain`, so that the brain fills the square
   whatever the field of view (IXI 240 x 180 mm, BraTS 240 x 240 mm);
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
    "intensity": "median",  # "median" or "percentile" (module docstring, step 2)
    "intensity_percentiles": [1.0, 50.0],  # p_low, p_high of the "percentile" scaling
    "crop_to_brain": False,  # step 3
}
INTENSITY_MODES = ("median", "percentile")
CROP_MARGIN = 0.04  # share of the slice's longer side kept around the brain's bounding box
# What a brain checkpoint written before these keys existed was preprocessed with.
LEGACY_PREPROCESSING = {"intensity": "median", "intensity_percentiles": [1.0, 50.0], "crop_to_brain": False}


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


def strip_skull_t1(volume: np.ndarray, erosion: int = 3) -> np.ndarray:
    """A crude brain mask of a T1 head volume (D, H, W) that was not skull-stripped (e.g. IXI), by morphology.

    Tissue is what lies above 0.6 x Otsu's threshold of the head's intensities (grey and white matter, scalp fat;
    CSF and bone are darker); eroding by `erosion` voxels cuts the thin links between the brain and the scalp,
    the largest component is the brain, dilating it back (inside the tissue) restores its edge, and a closing
    plus a hole fill per axial slice brings back the ventricles and sulci. Good to a few millimetres: a small
    piece of orbit or temporal muscle can remain."""
    from skimage.filters import threshold_otsu

    volume = np.asarray(volume, dtype=np.float32)
    head = volume > threshold_otsu(volume)
    tissue = volume > 0.6 * threshold_otsu(volume[head])
    structure = ndimage.generate_binary_structure(3, 1)
    core = ndimage.binary_erosion(tissue, structure, iterations=erosion)
    labels, count = ndimage.label(core)
    if count == 0:
        raise ValueError("no brain found: the volume has no tissue left after erosion")
    sizes = ndimage.sum(core, labels, index=np.arange(1, count + 1))
    brain = ndimage.binary_dilation(labels == int(np.argmax(sizes)) + 1, structure, iterations=erosion) & tissue
    brain = ndimage.binary_closing(brain, iterations=3)
    return np.stack([ndimage.binary_fill_holes(axial) for axial in brain])


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

    square: np.ndarray  # (S, S) float32, scaled inside the brain, 0 outside it
    square_mask: np.ndarray  # (S, S) bool
    mask: np.ndarray  # (H, W) bool: the brain on the slice's own grid
    info: ResizeInfo
    brain_fraction: float
    box: tuple = (slice(None), slice(None))  # the part of the slice that was resized into the square

    def to_grid(self, square_map: np.ndarray) -> np.ndarray:
        """A map computed on the square, back on the slice's own grid, 0 outside the brain."""
        on_grid = np.zeros(self.mask.shape, dtype=np.float32)
        on_grid[self.box] = undo_resize(square_map, self.info)
        return np.where(self.mask, on_grid, 0.0).astype(np.float32)


def scale_by_percentiles(array: np.ndarray, mask: np.ndarray, percentiles=(1.0, 50.0)) -> np.ndarray:
    """(x - p_low) / (p_high - p_low) with the percentiles taken inside `mask`; 0 outside it."""
    low, high = np.percentile(array[mask], [float(percentiles[0]), float(percentiles[1])])
    spread = float(high - low)
    if spread <= 0:
        spread = float(np.ptp(array[mask])) or 1.0  # a flat slice: keep it finite, its contrast is 0 anyway
    return np.where(mask, (array - low) / spread, 0.0).astype(np.float32)


def brain_box(brain: np.ndarray, margin: float = CROP_MARGIN) -> tuple[slice, slice]:
    """The bounding box of the brain on one slice, widened by `margin` of the slice's longer side."""
    rows, cols = np.flatnonzero(brain.any(axis=1)), np.flatnonzero(brain.any(axis=0))
    pad = int(round(margin * max(brain.shape)))
    return (slice(max(rows[0] - pad, 0), min(rows[-1] + 1 + pad, brain.shape[0])),
            slice(max(cols[0] - pad, 0), min(cols[-1] + 1 + pad, brain.shape[1])))


def prepare_brain_slice(slice_2d: np.ndarray, size: int, mask: np.ndarray | None = None, intensity: str = "median",
                        percentiles=(1.0, 50.0), crop: bool = False) -> BrainSlice:
    """Steps 1-4 of the module docstring for one (H, W) slice; `mask` is the brain when known."""
    if intensity not in INTENSITY_MODES:
        raise ValueError(f"intensity must be one of {INTENSITY_MODES}, got {intensity!r}")
    slice_2d = np.asarray(slice_2d, dtype=np.float32)
    brain = derive_brain_mask(slice_2d) if mask is None else np.asarray(mask) > 0
    if brain.shape != slice_2d.shape:
        raise ValueError(f"brain mask {brain.shape} does not match the slice {slice_2d.shape}")
    if brain.any() and intensity == "median":
        shifted = slice_2d - background_level(slice_2d, brain)
        # A brain pixel exactly at the background level would make a zero: keep the mask to positive pixels.
        brain = brain & (shifted > 0)
    if not brain.any():
        normalised = np.zeros_like(slice_2d)
    elif intensity == "median":
        normalised = normalise_by_median(shifted, brain)
    else:
        normalised = scale_by_percentiles(slice_2d, brain, percentiles)
    box = brain_box(brain) if crop and brain.any() else (slice(None), slice(None))
    square, info = resize_keep_aspect(normalised[box], size, pad_value=0.0)
    square_mask, _ = resize_keep_aspect(brain[box].astype(np.float32), size, pad_value=0.0)
    return BrainSlice(square, square_mask > 0.5, brain, info, float(brain.mean()), box)


class BrainSliceModel(AnomalyModel):
    """Base of the brain models: brain preprocessing, training slices with their brain masks, per-pixel maps put
    back on each slice's grid and zeroed outside the brain, slice score = mean of the map inside the brain.

    A subclass fills `build_network`, `training_loss(x, brain)` and `square_maps(x, brain) -> {name: (N, S, S)}`
    and names its default map in `default_map` (or config "anomaly_map")."""

    default_config = dict(BRAIN_DEFAULTS)
    preprocessing_keys = ("image_size", "intensity", "intensity_percentiles", "crop_to_brain")
    default_map = "squared"
    modalities = VOLUME_MODALITIES
    body_parts = BRAIN
    smoke_config = {"image_size": 32, "epochs": 1, "batch_size": 4}

    def __init__(self, **config):
        super().__init__(**config)
        if self.config["intensity"] not in INTENSITY_MODES:
            raise ValueError(f"intensity must be one of {INTENSITY_MODES}, got {self.config['intensity']!r}")

    def prepare(self, slice_2d: np.ndarray, mask: np.ndarray | None = None) -> BrainSlice:
        return prepare_brain_slice(slice_2d, int(self.config["image_size"]), mask, self.config["intensity"],
                                   self.config["intensity_percentiles"], bool(self.config["crop_to_brain"]))

    def _load_payload(self, payload: dict) -> None:
        """A checkpoint saved before the intensity and crop keys existed keeps the preprocessing it was trained
        with (median scaling, no crop), whatever the class's defaults are now."""
        super()._load_payload(payload)
        self.config.update({key: value for key, value in LEGACY_PREPROCESSING.items()
                            if key not in payload.get("config", {})})

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
            on_grid[name] = [p.to_grid(square) for square, p in zip(squares, prepared)]
        main = self.map_name()
        maps = on_grid[main]
        scores = np.array([float(m[p.mask].mean()) if p.mask.any() else 0.0 for m, p in zip(maps, prepared)])
        extras = {name: value for name, value in on_grid.items() if name != main}
        return SliceScores(scores=scores, maps=maps, extras=extras,
                           meta={"anomaly_map": main, "brain_fraction": [p.brain_fraction for p in prepared]})
