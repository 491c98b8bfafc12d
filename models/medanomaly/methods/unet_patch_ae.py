"""U-Net patch autoencoder for chest films (the pneumonia paper).

Training: 32x32 patches cut at stride 20 from 256x256 normal films, only those wholly inside the lung field,
reconstructed by a U-Net with skip connections (32 px down to an 8 px bottleneck) under the paper's Dice loss on
intensities, -ln(2 sum(I J) / (sum|I| + sum|J|)), with Adam. `architecture="maxpool_nearest"` is the paper's U-Net
(max-pooling down, pixel-replication up, from MONAI BasicUNet's blocks); the default "unet" is MONAI's UNet (strided
convolutions down, transposed convolutions up, residual units), kept so that existing checkpoints still load.

Test time: the whole film is scanned at stride 20 (the last row and column of patches aligned with the border, so
every pixel is covered). A patch's SAD is mean |input - output|; the map paints each patch's SAD over its square,
averages overlaps and is resized back onto the film's grid. The image score is one of four figures (mean or max
SAD over the lung patches or over all patches, `score` in the config); all four are in `meta["sad_scores"]`.

A property of the paper's loss worth knowing: on intensities (not binary masks) the Dice of a patch with itself is
sum(J^2) / sum(J) < 1, and the loss is lowest when the output pushes pixels brighter than about half the Dice to 1
and the others to 0. The autoencoder thus learns a contrast-stretched copy, not the patch itself; `loss="l1"`
trains for an exact copy instead, for comparison.

Patch count: a 256x256 film at stride 20 gives 13 x 13 = 169 patches (corners 0, 20, ..., 220 and 224 on each
axis). The paper quotes 420 for a 256^2 film; 420 is not a square number, so no square grid at one stride gives it
(20 x 21 would be stride ~12 on one axis and ~11 on the other, or stride 20 over a ~412 x 432 film)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..base import AnomalyModel, SliceScores, slices_of
from ..inferers.patches import extract_patches, grid_corners, stitch_patch_values
from ..losses import intensity_dice_loss
from ..lung_field import LungFieldSegmenter
from ..modalities import CHEST, CHEST_FILM_MODALITIES
from ..nets.patch_unet import MaxPoolNearestUNet, PatchUNetAutoEncoder
from ..preprocess import ResizeInfo, resize_keep_aspect, to_tensor_batch, to_unit_range, undo_resize
from ..registry import register

SCORE_NAMES = ("lung_mean", "lung_max", "all_mean", "all_max")
ARCHITECTURES = ("unet", "maxpool_nearest")


@dataclass
class PatchScan:
    """One film scanned patch by patch, everything on the preprocessed square (image_size^2)."""

    square: np.ndarray  # the film in [0, 1], resized and padded
    info: ResizeInfo  # how to go back to the film's grid
    lung: np.ndarray  # lung field on the square (bool)
    corners: list  # top-left (row, col) of every patch
    sad: np.ndarray  # (N,) mean |input - output| per patch
    in_lung: np.ndarray  # (N,) patch wholly inside the lung field
    in_film: np.ndarray  # (N,) patch centre inside the film (not in the padding)

    def scores(self) -> dict:
        """Mean and max SAD over the lung patches and over all patches of the film. With no lung patch (the lung
        field was not found) the lung figures fall back to all patches."""
        every = self.sad[self.in_film] if self.in_film.any() else self.sad
        lung = self.sad[self.in_lung] if self.in_lung.any() else every
        return {"lung_mean": float(lung.mean()), "lung_max": float(lung.max()),
                "all_mean": float(every.mean()), "all_max": float(every.max())}


@register("unet-patch-ae")
class UNetPatchAutoEncoderModel(AnomalyModel):
    description = ("U-Net patch autoencoder (pneumonia paper): 32 px lung patches, Dice loss on intensities; "
                   "map: per-patch SAD over the whole film at stride 20; score: SAD over the lung patches.")
    kind = "reconstruction"
    modalities = CHEST_FILM_MODALITIES
    body_parts = CHEST
    default_config = {
        "image_size": 256,
        "clip_percentiles": [0.5, 99.5],
        "patch_size": 32,
        "stride": 20,
        "channels": [16, 32, 64],  # two stride-2 levels: 32 -> 16 -> 8 px bottleneck
        "num_res_units": 1,  # "unet" only
        "architecture": "unet",  # or "maxpool_nearest": the paper's max-pool / nearest-upsampling U-Net
        "lung_patch_fraction": 1.0,  # a training (and 'lung') patch lies wholly inside the lung field
        "lung_checkpoint": None,  # local TorchScript / MONAI UNet state-dict for lung segmentation; None: classical
        "score": "lung_mean",  # one of lung_mean, lung_max, all_mean, all_max
        "loss": "dice",  # "dice": the paper's -ln Dice on intensities; "l1": mean |output - input|
        "dice_eps": 1e-6,
        "batch_size": 64,
        "train_patches_per_visit": 16,  # lung patches drawn at random from a film each time training visits it
        "learning_rate": 1e-3,
        "epochs": 10,
        "predict_batch_size": 256,
    }
    preprocessing_keys = ("image_size", "clip_percentiles", "patch_size", "lung_patch_fraction", "lung_checkpoint")
    inference_keys = ("score", "stride")
    smoke_config = {"image_size": 64, "patch_size": 16, "stride": 16, "channels": [4, 8, 16],
                    "lung_patch_fraction": 0.5, "epochs": 1, "batch_size": 16}

    def __init__(self, **config):
        super().__init__(**config)
        if self.config["score"] not in SCORE_NAMES:
            raise ValueError(f"{self.name}: score must be one of {SCORE_NAMES}, got {self.config['score']!r}")
        if self.config["architecture"] not in ARCHITECTURES:
            raise ValueError(f"{self.name}: architecture must be one of {ARCHITECTURES}, "
                             f"got {self.config['architecture']!r}")
        if self.config["loss"] not in ("dice", "l1"):
            raise ValueError(f"{self.name}: loss must be 'dice' or 'l1', got {self.config['loss']!r}")
        if int(self.config["patch_size"]) % (2 ** (len(self.config["channels"]) - 1)):
            raise ValueError(f"{self.name}: patch_size must be divisible by the U-Net's total downsampling")
        self.segmenter = LungFieldSegmenter(self.config["lung_checkpoint"])

    def build_network(self) -> torch.nn.Module:
        if self.config["architecture"] == "maxpool_nearest":
            return MaxPoolNearestUNet(self.config["channels"])
        return PatchUNetAutoEncoder(self.config["channels"], int(self.config["num_res_units"]))

    # ----- preprocessing -----
    def preprocess(self, film: np.ndarray) -> tuple[np.ndarray, ResizeInfo, np.ndarray]:
        """The film in [0, 1] on the image_size^2 square, and its lung field on the same square. The lung field
        is found on the film itself, then resized like the film."""
        low, high = self.config["clip_percentiles"]
        unit, _ = to_unit_range(film, low, high)
        size = int(self.config["image_size"])
        square, info = resize_keep_aspect(unit, size)
        lung_square, _ = resize_keep_aspect(self.segmenter(film).astype(np.float32), size, pad_value=0.0)
        return square, info, lung_square >= 0.5

    def lung_patches(self, square: np.ndarray, lung: np.ndarray, stride: int | None = None):
        """Patches of the square lying inside the lung field (fraction >= lung_patch_fraction)."""
        return extract_patches(square, int(self.config["patch_size"]), int(stride or self.config["stride"]),
                               foreground=lung, min_foreground_fraction=float(self.config["lung_patch_fraction"]))

    def training_samples(self, item, rng=None) -> list[tuple[np.ndarray, ...]]:
        """Every lung patch of the film; with `rng` (a training visit), `samples_per_visit()` of them at random."""
        samples = []
        for film in slices_of(item.image.array):
            square, _, lung = self.preprocess(film)
            samples += [(patch[None],) for patch in self.lung_patches(square, lung).arrays]
        if rng is not None and len(samples) > self.samples_per_visit():
            samples = [samples[k] for k in np.sort(rng.choice(len(samples), self.samples_per_visit(), replace=False))]
        return samples

    def samples_per_visit(self) -> int:
        return max(1, min(int(self.config["train_patches_per_visit"]), int(self.config["batch_size"])))

    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        output = self.network(x)
        if self.config["loss"] == "l1":
            return (output - x).abs().mean()
        return intensity_dice_loss(output, x, float(self.config["dice_eps"]))

    # ----- scanning -----
    @torch.no_grad()
    def reconstruct(self, patches: np.ndarray) -> np.ndarray:
        """The network's output (N, p, p) for patches (N, p, p) in [0, 1]."""
        self.network.eval()
        batch_size = int(self.config["predict_batch_size"])
        out = [self.network(to_tensor_batch(patches[start:start + batch_size], self.device))[:, 0].cpu().numpy()
               for start in range(0, len(patches), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, *np.shape(patches)[1:]), dtype=np.float32)

    def patch_sad(self, patches: np.ndarray) -> np.ndarray:
        """(N,) mean |input - output| of each patch (N, p, p)."""
        if len(patches) == 0:
            return np.zeros(0, dtype=np.float32)
        return np.abs(self.reconstruct(patches) - np.asarray(patches, dtype=np.float32)).mean(axis=(1, 2))

    def scan(self, film: np.ndarray) -> PatchScan:
        """Every patch of the film at stride `stride`, its SAD, and whether it lies in the lung field / the film."""
        self.network.eval()
        square, info, lung = self.preprocess(film)
        size, stride = int(self.config["patch_size"]), int(self.config["stride"])
        corners = grid_corners(square.shape, size, stride)
        patches = np.stack([square[r:r + size, c:c + size] for r, c in corners])
        fraction = np.array([lung[r:r + size, c:c + size].mean() for r, c in corners])
        valid = np.zeros(square.shape, dtype=bool)
        valid[info.valid_region()] = True
        in_film = np.array([valid[r + size // 2, c + size // 2] for r, c in corners])
        return PatchScan(square=square, info=info, lung=lung, corners=corners, sad=self.patch_sad(patches),
                         in_lung=fraction >= float(self.config["lung_patch_fraction"]) - 1e-9, in_film=in_film)

    def sad_map(self, scan: PatchScan) -> np.ndarray:
        """Each patch's SAD painted over its square, overlaps averaged, back on the film's grid."""
        painted = stitch_patch_values(scan.sad, scan.corners, int(self.config["patch_size"]), scan.square.shape)
        return undo_resize(painted, scan.info)

    def score_slices(self, slices: list[np.ndarray]) -> SliceScores:
        scans = [self.scan(film) for film in slices]
        figures = [scan.scores() for scan in scans]
        scores = np.array([f[self.config["score"]] for f in figures])
        lung_maps = [undo_resize(scan.lung.astype(np.float32), scan.info) >= 0.5 for scan in scans]
        top = int(np.argmax(scores))
        meta = {
            "sad_scores": figures[top],  # the four figures of the film (of the volume's top slice)
            "score_name": self.config["score"],
            "patches": len(scans[top].corners),
            "lung_patches": int(scans[top].in_lung.sum()),
            "lung_field_found": bool(scans[top].in_lung.any()),
            "lung_segmenter": self.segmenter.method,
        }
        if len(slices) > 1:
            meta["slice_sad_scores"] = figures
        return SliceScores(scores=scores, maps=[self.sad_map(scan) for scan in scans],
                           extras={"lung_field": [m.astype(np.float32) for m in lung_maps]}, meta=meta)
