"""PatchCore-style anomaly maps: the distance of each patch's features to its nearest neighbour in a memory bank of
normal patches, the bank reduced by greedy coreset subsampling (Roth et al., CVPR 2022) on the frozen encoder of
`feature_models`.

Fit: the patches of the training normals (at most `coreset_candidates`, drawn evenly per image with a seeded
generator) are reduced to `coreset_size` by the greedy k-centre rule on a random projection to `projection_dim`
dimensions (each new member is the candidate farthest from the bank so far), and stored in half precision.
Map: nearest-neighbour Euclidean distance per patch. Score: the map's mean (films) or maximum (mammograms) in
the image (`image_score`).

Names, one per kind of image, because what a model reads (modality, body part, smallest image) is declared on its
class: `patchcore-chest` (whole chest film), `patchcore-mammo` (breast tiles of a mammogram at full resolution),
`patchcore-brain` (brain MRI slice by slice inside the brain)."""
from __future__ import annotations

import math

import numpy as np
import torch

from ..brain import BrainSliceModel
from ..modalities import BRAIN, BREAST, VOLUME_MODALITIES
from ..registry import register
from .feature_models import (BrainFeatureInput, FeatureAnomalyModel, FeatureStatistics, TissueTileInput,
                             WholeFilmInput)

PATCHCORE_DEFAULTS = {
    "coreset_size": 10000,  # memory bank rows (10000 x 152 features x 2 bytes = 3 MB)
    "coreset_candidates": 100000,  # training patches the coreset is chosen from
    "projection_dim": 64,  # random projection for the coreset search (distances are kept up to ~10 %)
    "search_chunk": 4096,  # bank rows per distance block at prediction
}


def greedy_coreset(vectors: torch.Tensor, size: int, projection_dim: int, seed: int) -> torch.Tensor:
    """Indices of `size` rows of `vectors` chosen by the greedy k-centre rule (first row drawn at random)."""
    count = len(vectors)
    if size >= count:
        return torch.arange(count)
    generator = torch.Generator().manual_seed(seed)
    points = vectors.float()
    if projection_dim and points.shape[1] > projection_dim:
        projection = torch.randn(points.shape[1], projection_dim, generator=generator) / math.sqrt(projection_dim)
        points = points @ projection.to(points.device)
    squared_norms = (points * points).sum(dim=1)
    chosen = torch.empty(size, dtype=torch.long)
    chosen[0] = int(torch.randint(count, (1,), generator=generator))
    nearest = torch.full((count,), float("inf"), device=points.device)
    for step in range(size):
        if step:
            chosen[step] = int(torch.argmax(nearest))
        centre = points[chosen[step]]
        distance = squared_norms - 2 * (points @ centre) + squared_norms[chosen[step]]
        torch.minimum(nearest, distance, out=nearest)
    return chosen


class PatchCoreModel(FeatureAnomalyModel):
    default_config = {**FeatureAnomalyModel.default_config, **PATCHCORE_DEFAULTS}

    def build_statistics(self) -> FeatureStatistics:
        dim = sum(self.encoder.out_channels)
        return FeatureStatistics(bank=torch.zeros(0, dim, dtype=torch.float16))

    def fit_features(self, batches) -> dict:
        generator = torch.Generator().manual_seed(int(self.config["seed"]))
        budget = int(self.config["coreset_candidates"])
        candidates, seen, images = [], 0, 0
        for embedding, valid in batches:
            vectors = embedding.permute(0, 2, 3, 1)[valid].cpu()  # (patches, D)
            seen += len(vectors)
            images += len(embedding)
            candidates.append(vectors)
            pooled = sum(len(c) for c in candidates)
            if pooled > 2 * budget:  # keep memory bounded: thin the pool to the budget, uniformly at random
                pool = torch.cat(candidates)
                candidates = [pool[torch.randperm(len(pool), generator=generator)[:budget]]]
        if not candidates or not sum(len(c) for c in candidates):
            raise ValueError(f"{self.name}: the training images gave no patches")
        pool = torch.cat(candidates)
        if len(pool) > budget:
            pool = pool[torch.randperm(len(pool), generator=generator)[:budget]]
        chosen = greedy_coreset(pool, int(self.config["coreset_size"]), int(self.config["projection_dim"]),
                                int(self.config["seed"]))
        self.network.bank = pool[chosen].to(torch.float16).to(self.device)
        return {"images": images, "patches_seen": seen, "candidates": len(pool), "memory_bank": len(chosen)}

    @torch.no_grad()
    def patch_distances(self, embedding: torch.Tensor) -> torch.Tensor:
        bank = self.network.bank
        if len(bank) == 0:
            raise RuntimeError(f"{self.name}: the memory bank is empty; fit the model first")
        batch, dim, height, width = embedding.shape
        queries = embedding.permute(0, 2, 3, 1).reshape(-1, dim).float()
        nearest = torch.full((len(queries),), float("inf"), device=queries.device)
        chunk = int(self.config["search_chunk"])
        for start in range(0, len(bank), chunk):
            block = bank[start:start + chunk].float()
            distances = torch.cdist(queries, block, compute_mode="use_mm_for_euclid_dist")
            nearest = torch.minimum(nearest, distances.min(dim=1).values)
        return nearest.reshape(batch, height, width)


@register("patchcore-chest")
class PatchCoreChest(WholeFilmInput, PatchCoreModel):
    description = ("PatchCore on a frozen ImageNet EfficientNet-Lite0: nearest-neighbour distance of each patch's "
                   "features to a coreset of normal patches, whole chest film. Map: that distance, smoothed; "
                   "score: its mean. Fitted on normal films by statistics (minutes on a CPU).")
    default_config = {**PatchCoreModel.default_config, **WholeFilmInput.input_defaults}
    preprocessing_keys = PatchCoreModel.preprocessing_keys + WholeFilmInput.input_keys
    smoke_config = {"image_size": 64, "coreset_size": 64, "coreset_candidates": 2000}


@register("patchcore-mammo")
class PatchCoreMammo(TissueTileInput, PatchCoreModel):
    description = ("PatchCore on a frozen ImageNet EfficientNet-Lite0 over 256^2 breast-tissue tiles of a "
                   "mammogram at full resolution, maps stitched back on the film. Map: nearest-neighbour distance "
                   "to normal patches, 0 outside the breast; score: its mean over the breast.")
    modalities = ("MG",)
    body_parts = BREAST
    min_image_size = 256
    # Chosen on the validation women (benchmarks/bench_features.py --mias-variants): the map's mean ranked them
    # best of max, quantiles, top tiles and mean; tiles side by side at scoring as in training.
    default_config = {**PatchCoreModel.default_config, **TissueTileInput.input_defaults, "image_score": "mean",
                      "patch_stride": 256}
    preprocessing_keys = PatchCoreModel.preprocessing_keys + TissueTileInput.input_keys
    smoke_config = {"patch_size": 256, "image_size": 64, "coreset_size": 64, "coreset_candidates": 2000}


@register("patchcore-brain")
class PatchCoreBrain(BrainFeatureInput, BrainSliceModel, PatchCoreModel):
    description = ("PatchCore on a frozen ImageNet EfficientNet-Lite0, brain MRI slice by slice: slices masked to "
                   "the brain and median-normalised; only brain patches are learnt. Map: nearest-neighbour "
                   "distance, 0 outside the brain; score: its mean inside the brain.")
    modalities = VOLUME_MODALITIES
    body_parts = BRAIN
    min_image_size = 32
    default_config = {**PatchCoreModel.default_config, **BrainSliceModel.default_config,
                      **BrainFeatureInput.input_defaults, "encoder_stages": [2, 3]}
    preprocessing_keys = PatchCoreModel.preprocessing_keys + BrainFeatureInput.input_keys
    smoke_config = {"image_size": 64, "coreset_size": 64, "coreset_candidates": 2000}
