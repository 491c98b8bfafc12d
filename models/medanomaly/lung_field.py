"""Lung-field masks for chest films, offline.

The pneumonia paper cut its patches inside a lung mask from a pretrained segmentation U-Net; no such weights can be
downloaded here, so the default is a classical segmenter (thresholding, morphology, the largest dark component in
each half of the thorax). A trained network can replace it: `LungFieldSegmenter(checkpoint=path)` loads a
TorchScript file or a state-dict of a MONAI UNet from a local path (see `load_segmentation_network`).

Every function takes a 2D film in any intensity range and returns a bool mask on the film's own grid."""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from monai.networks.nets import UNet
from scipy import ndimage
from skimage import exposure, filters, measure, morphology, transform

from .errors import CheckpointError, UnsupportedImageError
from .preprocess import to_unit_range

SMOOTHING_SIGMA = 5.0
DEPTH_FRACTION = 0.12  # of the deepest basins' depth
EDGE_GROWTH = 4  # pixels at the working size
WORKING_SIZE = 256  # the classical steps run on a 256-pixel film: structuring elements are sized for it

# Architecture assumed for a state-dict checkpoint (a TorchScript file carries its own).
DEFAULT_UNET = {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "channels": (16, 32, 64, 128, 256),
                "strides": (2, 2, 2, 2), "num_res_units": 2}


def _check_film(film: np.ndarray) -> np.ndarray:
    film = np.asarray(film, dtype=np.float32)
    if film.ndim != 2 or min(film.shape) < 32:
        raise UnsupportedImageError(f"lung segmentation needs a 2D film of at least 32x32 pixels, got {film.shape}")
    if not np.all(np.isfinite(film)):
        raise UnsupportedImageError("film contains NaN or Inf pixels")
    return film


def _working_film(film: np.ndarray) -> np.ndarray:
    """Film at WORKING_SIZE^2 (squashed: the mask goes back onto the same grid), [0, 1], locally equalised so that
    under- and over-exposed films threshold alike."""
    unit, _ = to_unit_range(film, 0.5, 99.5)
    small = transform.resize(unit, (WORKING_SIZE, WORKING_SIZE), anti_aliasing=True, preserve_range=True)
    return exposure.equalize_hist(small).astype(np.float32)


def _back_to_grid(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if mask.shape == tuple(shape):
        return mask.astype(bool)
    return transform.resize(mask.astype(np.float32), shape, order=1, anti_aliasing=False) >= 0.5


def _drop_edge_strips(candidates: np.ndarray) -> np.ndarray:
    """Remove basins at the film's edge (collimator shadows, the dark frame of a scanned film): a lung is walled in
    by the chest wall, so its centre lies well inside the film and it keeps clear of the edge. A light opening
    first detaches a lung from an edge strip that touches it through a thin neck."""
    labels = measure.label(ndimage.binary_opening(candidates, morphology.disk(3)))
    keep = np.zeros(candidates.shape, dtype=bool)
    margin, clearance = WORKING_SIZE / 10, 3
    for region in measure.regionprops(labels):
        row, col = region.centroid
        top, left, bottom, right = region.bbox
        central = min(col, WORKING_SIZE - col) >= margin and min(row, WORKING_SIZE - row) >= margin
        clear = min(top, left) >= clearance and max(bottom, right) <= WORKING_SIZE - clearance
        if central and clear:
            keep |= labels == region.label
    return keep


def _largest_per_side(candidates: np.ndarray, min_fraction: float = 0.01) -> np.ndarray:
    """The largest candidate whose centre lies in the left half, and the largest in the right half.

    A component that spans the midline (both lungs joined over the mediastinum) is cut at the midline first."""
    middle = WORKING_SIZE // 2
    candidates = candidates.copy()
    mask = np.zeros(candidates.shape, dtype=bool)
    for side in (slice(0, middle), slice(middle, None)):
        half = np.zeros(candidates.shape, dtype=bool)
        half[:, side] = candidates[:, side]
        labels = measure.label(half)
        regions = [r for r in measure.regionprops(labels) if r.area >= min_fraction * candidates.size]
        # Lungs are tall: among sizeable regions prefer the largest, but not a flat band along the diaphragm.
        regions = [r for r in regions if (r.bbox[2] - r.bbox[0]) >= 0.15 * WORKING_SIZE] or regions
        if regions:
            best = max(regions, key=lambda r: r.area)
            mask |= labels == best.label
    return mask


def _smooth_lungs(mask: np.ndarray) -> np.ndarray:
    """Each lung as its convex hull, grown by a few pixels: the blurred basin stops short of the lung's edge
    (the ribs and the chest wall rim it), and the hull takes in the vessels and hilar shadows inside the field."""
    out = np.zeros(mask.shape, dtype=bool)
    labels = measure.label(mask)
    for region in measure.regionprops(labels):
        out |= morphology.convex_hull_image(labels == region.label)
    return ndimage.binary_dilation(out, morphology.disk(EDGE_GROWTH))


def _basin_depth(smooth: np.ndarray) -> np.ndarray:
    """How far each pixel lies below the level at which it would drain to the film's border (grey-level hole
    filling by morphological reconstruction). The lungs are basins walled in by the brighter chest wall, mediastinum
    and diaphragm; the air outside the body drains to the border and gets depth ~0."""
    seed = smooth.copy()
    seed[1:-1, 1:-1] = smooth.max()
    filled = morphology.reconstruction(seed, smooth, method="erosion")
    return filled - smooth


def classical_lung_mask(film: np.ndarray) -> np.ndarray:
    """Lung field by thresholding and morphology: the dark (air-filled) basins inside the thorax, the largest one
    in each half of the film, closed and hole-filled. Returns a bool mask on the film's grid."""
    film = _check_film(film)
    work = _working_film(film)
    # A wide blur merges ribs and vessels into the lung's mean density, so a lung becomes one dark basin.
    smooth = filters.gaussian(work, sigma=SMOOTHING_SIGMA)
    depth = _basin_depth(smooth)
    if depth.max() <= 0:
        return np.zeros(film.shape, dtype=bool)
    # A low cut keeps the whole basin (the lung's edge lies just below the rim), not only its deepest part.
    dark = depth > DEPTH_FRACTION * np.percentile(depth, 99)
    lungs = _smooth_lungs(_largest_per_side(_drop_edge_strips(dark)))
    return _back_to_grid(lungs, film.shape)


def load_segmentation_network(checkpoint: str | Path, unet_config: dict | None = None) -> torch.nn.Module:
    """A lung-segmentation network from a local file: TorchScript (torch.jit.save) or a state-dict of
    `monai.networks.nets.UNet(**unet_config)` (DEFAULT_UNET when not given). It must map a (N, 1, 256, 256) film
    in [0, 1] to lung logits (N, 1, ...) or two-class logits (N, 2, ...)."""
    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"lung segmentation checkpoint not found: {path}")
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except (RuntimeError, ValueError):
        pass  # not TorchScript: try a state-dict
    network = UNet(**{**DEFAULT_UNET, **(unet_config or {})})
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        network.load_state_dict(state)
    except Exception as error:  # noqa: BLE001 - every failure means the same thing to the user
        raise CheckpointError(f"{path} is neither TorchScript nor a state-dict of UNet({unet_config or DEFAULT_UNET}): "
                              f"{error}") from error
    return network.eval()


class LungFieldSegmenter:
    """Lung-field masks for films: classical by default, a trained network when `checkpoint` is given.

    Masks are remembered (bit-packed, keyed by a hash of the film's pixels, least recently used dropped beyond
    `cache_mb`): training visits each film once per epoch, and segmenting it again every time would cost more than
    the training step itself."""

    def __init__(self, checkpoint: str | Path | None = None, unet_config: dict | None = None, cache_mb: float = 32.0):
        self.checkpoint = None if checkpoint in (None, "") else str(checkpoint)
        self.network = load_segmentation_network(self.checkpoint, unet_config) if self.checkpoint else None
        self.cache_bytes = int(cache_mb * 2**20)
        self._cache: OrderedDict = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()

    @property
    def method(self) -> str:
        return "network" if self.network is not None else "classical"

    def __call__(self, film: np.ndarray) -> np.ndarray:
        film = _check_film(film)
        key = (film.shape, hashlib.sha1(np.ascontiguousarray(film).tobytes()).digest())
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return np.unpackbits(self._cache[key], count=film.size).reshape(film.shape).astype(bool)
        mask = classical_lung_mask(film) if self.network is None else self._network_mask(film)
        self._remember(key, np.packbits(mask))
        return mask

    def __getstate__(self) -> dict:  # copies (worker processes, deepcopy) start with an empty cache and own lock
        return {**self.__dict__, "_cache": OrderedDict(), "_cached_bytes": 0, "_lock": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _remember(self, key, packed: np.ndarray) -> None:
        if packed.nbytes > self.cache_bytes:
            return
        with self._lock:
            if key not in self._cache:
                self._cache[key] = packed
                self._cached_bytes += packed.nbytes
            while self._cached_bytes > self.cache_bytes:
                _, dropped = self._cache.popitem(last=False)
                self._cached_bytes -= dropped.nbytes

    @torch.no_grad()
    def _network_mask(self, film: np.ndarray) -> np.ndarray:
        unit, _ = to_unit_range(film, 0.5, 99.5)
        small = transform.resize(unit, (WORKING_SIZE, WORKING_SIZE), anti_aliasing=True, preserve_range=True)
        logits = self.network(torch.as_tensor(small, dtype=torch.float32)[None, None])
        if logits.shape[1] == 1:
            lungs = (logits[0, 0] > 0).cpu().numpy()
        else:
            lungs = (logits[0].argmax(0) > 0).cpu().numpy()
        lungs = transform.resize(lungs.astype(np.float32), (WORKING_SIZE, WORKING_SIZE), order=0) > 0.5
        return _back_to_grid(_largest_per_side(lungs, min_fraction=0.005), film.shape)


def lung_halves_found(mask: np.ndarray, min_fraction: float = 0.03) -> tuple[bool, bool]:
    """Whether each half of the film (left, right) holds a lung component of at least `min_fraction` of the
    half's area: a cheap automatic check that both lungs were found."""
    middle = mask.shape[1] // 2
    found = []
    for half in (mask[:, :middle], mask[:, middle:]):
        labels = measure.label(half)
        sizes = np.bincount(labels.ravel())[1:] if labels.max() else np.zeros(1)
        found.append(bool(sizes.max() >= min_fraction * half.size))
    return found[0], found[1]
