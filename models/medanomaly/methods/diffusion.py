"""Diffusion-model anomaly maps for mammograms (DDPM trained on normal images; partial-noise reconstruction).

Paper protocol: draw a start step t uniformly in [nlr, T - 1] (nlr, the "noise level reconstruction", is the
smallest start step), noise the image to x_t with q(x_t | x_0) in one shot, run the DDPM reverse process back
to 0 one step at a time, clip to [0, 1]; repeat `repeats` times with fresh noise and average the residuals
|x - x_hat|. The map is the mean residual, its per-pixel spread across repeats is extras["residual_std"], and
the score is the residual's MAE (the spread of per-repeat scores goes in meta).

Fast path (`fast=True`): every repeat starts at the fixed step t0 (default: the middle of [nlr, T]) and DDIM
goes back in `ddim_steps` network evaluations instead of about (nlr + T) / 2.

Modes: "whole" resizes the film to image_size^2 (160 in the paper). "patch" cuts patch_size^2 patches holding
>= 40 % breast tissue (Otsu foreground), resizes each to image_size^2, reconstructs all patches of a film in
batches and stitches the residuals back onto the film at full resolution; the score aggregates patch MAEs
("max" or "mean", the other in meta).

Default patch size: the paper cut 320 px patches from 2294 x 1914 px films. Scaled by the film height
(both films hold a whole breast in the cranio-caudal extent), 320 x 1024 / 2294 = 143 px on a 1024 px
mini-MIAS film (200 um pixels): 144 px (28.8 mm), a multiple of 16.

Randomness: start steps and noise come from a generator seeded with `seed` on every call, so a film always gets
the same map, and all films of a run are reconstructed from the same start steps and noise draws (common
random numbers: score differences between films come from the films, not from the draws).

Images are mapped to [-1, 1] inside the diffusion (the schedulers clip x0 predictions to that range).

Network sizes: the defaults (channels 32/64/64, no attention, one res block, 1.06 M parameters) suit a CPU.
Recommended on a GPU (not validated here): image_size 160, channels [64, 128, 256], attention_levels
[False, True, True], num_res_blocks 2, num_head_channels 64, batch_size 32, learning_rate 1e-4, about 100k
training steps; then the paper protocol (sampler "ddpm", repeats 10) is affordable for research, and the fast
path for routine use."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import DiffusionModelUNet
from monai.transforms import Resize

from ..base import SliceScores, slices_of
from ..errors import UnsupportedImageError
from ..inferers.diffusion import ddim_reverse, ddpm_reverse, make_schedulers, noise_to_step
from ..inferers.patches import extract_patches, grid_corners, stitch_patches
from ..modalities import BREAST
from ..preprocess import foreground_mask, to_unit_range, undo_resize
from ..reconstruction import FilmReconstructionModel
from ..registry import register

MODES = ("whole", "patch")
PATCH_SCORES = ("max", "mean")
SAMPLERS = ("ddpm", "ddim")


@register("ddpm")
class DiffusionAnomalyModel(FilmReconstructionModel):
    description = ("DDPM trained on normal films; residual of partial-noise reconstructions averaged over repeats "
                   "(paper protocol: random start step in [nlr, T], DDPM back to 0; fast path: fixed t0, DDIM). "
                   "Whole-film or breast-patch mode. Map: mean |x - x_hat|; score: its MAE.")
    kind = "reconstruction"
    version = "1"
    body_parts = BREAST
    uncertainty_map = "residual_std"  # the spread of the residual across repeats
    default_config = {
        **FilmReconstructionModel.default_config,
        "mode": "whole",  # "whole": film resized to image_size; "patch": tissue patches at full resolution
        "patch_size": 144,  # the paper's 320 px at 2294 px film height, scaled to 1024 px films
        "patch_stride": None,  # None: patch_size (a grid without gaps, the last patches aligned to the border)
        "train_patch_stride": None,  # None: patch_size // 2 (overlapping patches give more training samples)
        "max_train_patches_per_image": None,  # None: all; else evenly spread over the film's tissue patches
        "train_patches_per_visit": 4,  # patch mode: of those, drawn at random each time training visits a film
        "min_tissue_fraction": 0.4,
        "patch_score": "max",  # image score from patch MAEs: "max" or "mean" (the other is in meta)
        # DiffusionModelUNet: small enough for a CPU (see the model card in the docs for the GPU configuration)
        "channels": [32, 64, 64],
        "attention_levels": [False, False, False],
        "num_res_blocks": 1,
        "norm_num_groups": 16,
        "num_head_channels": 32,
        "num_train_timesteps": 1000,  # T
        "nlr": 200,  # smallest start step of the paper protocol
        "repeats": 10,  # reconstructions per image in the paper protocol
        "sampler": "ddpm",  # reverse process of the paper protocol: "ddpm" (one step at a time) or "ddim"
        "fast": False,
        "t0": None,  # fast-path start step; None: the middle of [nlr, T]
        "ddim_steps": 10,  # DDIM evaluations: the fast path, and the paper protocol with sampler "ddim"
        "fast_repeats": 2,  # reconstructions per image on the fast path
        "learning_rate": 1e-4,
        "batch_size": 16,
        "epochs": 10,
    }
    preprocessing_keys = ("image_size", "clip_percentiles", "mode", "patch_size", "patch_stride",
                          "min_tissue_fraction")
    inference_keys = ("nlr", "repeats", "fast", "t0", "ddim_steps", "fast_repeats", "sampler", "patch_score")
    smoke_config = {**FilmReconstructionModel.smoke_config, "channels": [8, 8, 8], "norm_num_groups": 8,
                    "num_head_channels": 8, "num_train_timesteps": 20, "nlr": 10, "fast": True, "fast_repeats": 1,
                    "ddim_steps": 2}

    def __init__(self, **config):
        super().__init__(**config)
        self.check_config()
        self.ddpm_scheduler, self.ddim_scheduler = make_schedulers(int(self.config["num_train_timesteps"]))

    def build_network(self) -> torch.nn.Module:
        c = self.config
        return DiffusionModelUNet(spatial_dims=2, in_channels=1, out_channels=1, channels=tuple(c["channels"]),
                                  attention_levels=tuple(c["attention_levels"]), num_res_blocks=c["num_res_blocks"],
                                  norm_num_groups=c["norm_num_groups"], num_head_channels=c["num_head_channels"])

    def check_config(self) -> None:
        """Refuse settings that cannot run, naming the key (also checked per request)."""
        c, steps = self.config, int(self.config["num_train_timesteps"])
        choices = {"mode": MODES, "patch_score": PATCH_SCORES, "sampler": SAMPLERS}
        for key, allowed in choices.items():
            if c[key] not in allowed:
                raise ValueError(f"ddpm: {key} must be one of {allowed}, got {c[key]!r}")
        if not 0 <= int(c["nlr"]) <= steps:
            raise ValueError(f"ddpm: nlr must be within [0, {steps}], got {c['nlr']}")
        if c["t0"] is not None and not 0 <= int(c["t0"]) < steps:
            raise ValueError(f"ddpm: t0 must be within [0, {steps - 1}], got {c['t0']}")
        for key in ("repeats", "fast_repeats", "ddim_steps"):
            if int(c[key]) < 1:
                raise ValueError(f"ddpm: {key} must be at least 1, got {c[key]}")
        if int(c["ddim_steps"]) > steps:
            raise ValueError(f"ddpm: ddim_steps must be at most {steps}, got {c['ddim_steps']}")
        if not 0 <= float(c["min_tissue_fraction"]) <= 1:
            raise ValueError(f"ddpm: min_tissue_fraction must be within [0, 1], got {c['min_tissue_fraction']}")

    # ----- training: epsilon prediction at a uniform random step -----
    def training_samples(self, item, rng=None) -> list[tuple[np.ndarray, ...]]:
        """Whole mode: the film. Patch mode: its tissue patches (evenly spread down to max_train_patches_per_image);
        with `rng` (a training visit), `samples_per_visit()` of them at random, the others never resized."""
        if self.config["mode"] == "whole":
            return super().training_samples(item, rng)
        samples = []
        for slice_2d in slices_of(item.image.array):
            unit = self.unit_film(slice_2d)
            stride = self.config["train_patch_stride"] or max(1, int(self.config["patch_size"]) // 2)
            patches = self.tissue_patches(unit, int(stride)).arrays
            limit = self.config["max_train_patches_per_image"]
            if limit is not None and len(patches) > int(limit):
                patches = patches[np.linspace(0, len(patches) - 1, int(limit)).round().astype(int)]
            if rng is not None and len(patches) > self.samples_per_visit():
                patches = patches[np.sort(rng.choice(len(patches), self.samples_per_visit(), replace=False))]
            samples += [(square[None],) for square in self.resize_patches(patches)]
        return samples

    def samples_per_visit(self) -> int:
        if self.config["mode"] == "whole":
            return 1
        return max(1, min(int(self.config["train_patches_per_visit"]), int(self.config["batch_size"])))

    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        x = x * 2 - 1
        timesteps = torch.randint(0, int(self.config["num_train_timesteps"]), (len(x),), device=x.device)
        noise = torch.randn_like(x)
        noisy = self.ddpm_scheduler.add_noise(x, noise, timesteps)
        return F.mse_loss(self.network(noisy, timesteps), noise)

    # ----- reconstruction -----
    @property
    def fast_start_step(self) -> int:
        c, steps = self.config, int(self.config["num_train_timesteps"])
        t0 = (int(c["nlr"]) + steps) // 2 if c["t0"] is None else int(c["t0"])
        return min(t0, steps - 1)

    @property
    def repeat_count(self) -> int:
        return int(self.config["fast_repeats"] if self.config["fast"] else self.config["repeats"])

    def start_steps(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """Fast path: t0 for all. Paper: uniform in [nlr, T - 1] (step index T - 1 is the noisiest)."""
        steps = int(self.config["num_train_timesteps"])
        if self.config["fast"]:
            return torch.full((count,), self.fast_start_step, dtype=torch.long, device=self.device)
        low = min(int(self.config["nlr"]), steps - 1)
        return torch.randint(low, steps, (count,), generator=generator, device=self.device)

    @torch.no_grad()
    def reconstruct_squares(self, squares: np.ndarray, generator: torch.Generator):
        """(N, S, S) squares in [0, 1] -> reconstructions (R, N, S, S) in [0, 1], start steps (R, N) and the
        number of network evaluations. All repeats of all squares go through the network in batches."""
        repeats, count = self.repeat_count, len(squares)
        x0 = torch.as_tensor(np.asarray(squares), dtype=torch.float32, device=self.device)[:, None] * 2 - 1
        x0 = x0.repeat(repeats, 1, 1, 1)  # repeat-major: sample r * N + n is repeat r of square n
        starts = self.start_steps(len(x0), generator)
        # Similar start steps in one batch keep the batches of the step-by-step DDPM loop full.
        order = torch.argsort(starts, descending=True)
        out = torch.empty_like(x0)
        evaluations, batch = 0, int(self.config["predict_batch_size"])
        for begin in range(0, len(order), batch):
            chosen = order[begin:begin + batch]
            x_t = noise_to_step(self.ddpm_scheduler, x0[chosen], starts[chosen], generator)
            if self.config["fast"] or self.config["sampler"] == "ddim":
                x_hat, used = ddim_reverse(self.network, self.ddim_scheduler, x_t, starts[chosen],
                                           int(self.config["ddim_steps"]))
            else:
                x_hat, used = ddpm_reverse(self.network, self.ddpm_scheduler, x_t, starts[chosen], generator)
            out[chosen] = x_hat
            evaluations += used
        reconstructions = ((out[:, 0] + 1) / 2).clamp(0, 1).reshape(repeats, count, *out.shape[-2:])
        return reconstructions.cpu().numpy(), starts.reshape(repeats, count).cpu().numpy(), evaluations

    # ----- preprocessing for patch mode -----
    def unit_film(self, slice_2d: np.ndarray) -> np.ndarray:
        low, high = self.config["clip_percentiles"]
        return to_unit_range(slice_2d, low, high)[0]

    def tissue_patches(self, unit: np.ndarray, stride: int):
        """Patches with at least min_tissue_fraction breast tissue; if none qualifies, the one with the most
        tissue (a small or faint breast still gets a map; meta says so)."""
        size = int(self.config["patch_size"])
        if min(unit.shape) < size:
            raise UnsupportedImageError(f"image {unit.shape} is smaller than patch_size {size}; use mode 'whole' "
                                        "or a smaller patch_size")
        tissue = foreground_mask(unit)
        patches = extract_patches(unit, size, stride, tissue, float(self.config["min_tissue_fraction"]))
        patches.fallback = False
        patches.tissue = tissue
        if len(patches.corners) == 0:
            corners = grid_corners(unit.shape, size, stride)
            best = max(corners, key=lambda rc: tissue[rc[0]:rc[0] + size, rc[1]:rc[1] + size].mean())
            patches = extract_patches(unit, size, stride)
            keep = patches.corners.index(best)
            patches.arrays, patches.corners = patches.arrays[keep:keep + 1], [best]
            patches.fallback, patches.tissue = True, tissue
        return patches

    def resize_patches(self, arrays: np.ndarray, size: int | None = None, mode: str = "area") -> np.ndarray:
        """Resize (N, p, p) patches to (N, size, size) in one call (MONAI treats N as channels)."""
        size = int(self.config["image_size"]) if size is None else size
        if len(arrays) == 0:
            return np.zeros((0, size, size), dtype=np.float32)
        return np.asarray(Resize(spatial_size=(size, size), mode=mode)(np.asarray(arrays, dtype=np.float32)))

    # ----- scoring -----
    def score_slices(self, slices: list[np.ndarray]) -> SliceScores:
        self.check_config()
        generator = torch.Generator(device=self.device).manual_seed(int(self.config["seed"]))
        score_one = self.score_patches if self.config["mode"] == "patch" else self.score_whole
        outputs = [score_one(s, generator) for s in slices]
        metas = [meta for *_, meta in outputs]
        common = {"mode": self.config["mode"], "fast": bool(self.config["fast"]), "repeats": self.repeat_count,
                  "sampler": "ddim" if self.config["fast"] else self.config["sampler"],
                  "start_step": self.fast_start_step if self.config["fast"] else None,
                  "network_evaluations": int(sum(m["network_evaluations"] for m in metas))}
        meta = {**metas[0], **common} if len(metas) == 1 else {**common, "per_slice": metas}
        return SliceScores(scores=np.array([score for score, *_ in outputs]),
                           maps=[residual for _, residual, *_ in outputs],
                           extras={"residual_std": [o[2] for o in outputs], "reconstruction": [o[3] for o in outputs]},
                           meta=meta)

    def score_whole(self, slice_2d: np.ndarray, generator: torch.Generator):
        square, info = self.preprocess(slice_2d)
        recon, starts, evaluations = self.reconstruct_squares(square[None], generator)
        residuals = np.abs(square[None, None] - recon)[:, 0]  # (R, S, S)
        region = info.valid_region()
        repeat_scores = residuals[:, region[0], region[1]].mean(axis=(1, 2))
        mean_residual = residuals.mean(axis=0)
        meta = {"score_std": float(repeat_scores.std()), "repeat_scores": repeat_scores.tolist(),
                "start_steps": starts[:, 0].tolist(), "network_evaluations": evaluations}
        return (float(mean_residual[region].mean()), undo_resize(mean_residual, info),
                undo_resize(residuals.std(axis=0), info), undo_resize(recon[:, 0].mean(axis=0), info), meta)

    def score_patches(self, slice_2d: np.ndarray, generator: torch.Generator):
        unit = self.unit_film(slice_2d)
        size = int(self.config["patch_size"])
        patches = self.tissue_patches(unit, int(self.config["patch_stride"] or size))
        squares = self.resize_patches(patches.arrays)
        recon, starts, evaluations = self.reconstruct_squares(squares, generator)
        residuals = np.abs(squares[None] - recon)  # (R, N, S, S)
        repeat_patch_scores = residuals.mean(axis=(2, 3))  # (R, N)
        patch_scores = residuals.mean(axis=(0, 2, 3))
        aggregate = {"max": np.max, "mean": np.mean}
        chosen = self.config["patch_score"]
        repeat_scores = aggregate[chosen](repeat_patch_scores, axis=1)
        back = lambda maps: stitch_patches(self.resize_patches(maps, size, "bilinear"), patches.corners,  # noqa: E731
                                           unit.shape)
        meta = {"score_max": float(patch_scores.max()), "score_mean": float(patch_scores.mean()),
                "patch_score": chosen, "score_std": float(repeat_scores.std()),
                "repeat_scores": repeat_scores.tolist(), "patch_scores": patch_scores.tolist(),
                "patch_corners": [list(map(int, c)) for c in patches.corners], "patch_size": size,
                "n_patches": len(patches.corners), "tissue_rule_fallback": patches.fallback,
                "start_steps": starts.tolist(), "network_evaluations": evaluations}
        return (float(meta[f"score_{chosen}"]), back(residuals.mean(axis=0)), back(residuals.std(axis=0)),
                back(recon.mean(axis=0)), meta)
