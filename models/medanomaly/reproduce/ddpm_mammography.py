"""The mammography diffusion paper on mini-MIAS: DDPM partial-noise reconstruction against a conv autoencoder.

Protocol: a DDPM (T = 1000) learns normal films (whole film at image_size^2) or their 320 px patches holding
>= 40 % breast tissue (144 px on 1024 px mini-MIAS films); a film or patch is noised to a start step t0 drawn in
[NLR, T], reconstructed, clipped to [0, 1]; |x - x_hat| averaged over repeats is the map and its mean (MAE) the
score; a Youden-index threshold decides. NLR runs over 0..400 in steps of 50. The baseline is the `ae` model on
the same films and patches. Evaluation is per patch (labelled by its overlap with the lesion circle) and per film.

Everything reuses the package: `ddpm` and `ae` models (their preprocessing, patch cutting and
`reconstruct_squares`), MONAI's schedulers through `medanomaly.inferers.diffusion`, and `medanomaly.metrics`.
Trainings are cached under `run.work` (an interrupted one resumes from its checkpoint).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata

from .. import create
from ..base import as_items
from ..data import BUILDERS, read_manifest
from ..inferers.diffusion import ddpm_reverse, noise_to_step
from ..metrics import image_auprc, image_auroc, pixel_auroc, youden_threshold
from ..preprocess import foreground_mask, undo_resize
from . import Paper, Run, cached_fit

NLRS = (0, 50, 100, 150, 200, 250, 300, 350, 400)
T = 1000


# ---------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """What a budget changes; the protocol itself (T, NLRs, patch rule, scores, Youden) does not change."""
    timesteps: int  # T (the paper: 1000; the smoke budget shortens the chain, NLRs scaled with it)
    image_size: int  # whole-film network input (the paper: 160)
    patch_image_size: int  # patch network input (the paper: 160)
    network: dict  # DiffusionModelUNet settings of the `ddpm` model
    learning_rate: float
    train_films: int | None  # None: every normal training film
    train_minutes: float | None  # None: train for `epochs` (full budget)
    epochs: int
    patch_epochs: int
    ae_minutes: float | None
    ae_epochs: int
    films_per_class: int  # per split (val, test) and class: whole-film evaluation
    patch_films_per_class: int
    nlrs: tuple
    per_nlr: tuple  # NLRs that get their own model (the paper: all)
    sweep_sampler: str  # reverse process of the NLR sweep: "ddpm" (the paper) or "ddim"
    sweep_steps: int  # DDIM steps when the sweep uses DDIM
    sweep_repeats: int
    patch_repeats: int
    compare_nlr: int
    compare_films_per_class: int
    paper_repeats: int  # repeats of the paper protocol in the fast-vs-paper comparison (the paper: 10)
    fast_steps: int
    fast_repeats: int
    panel_step: int  # start step shown in the reconstruction panels
    bootstrap: int
    predict_batch_size: int


SMALL_NET = {"channels": [8, 8, 8], "norm_num_groups": 8, "num_head_channels": 8}
CPU_NET = {"channels": [16, 32, 32], "norm_num_groups": 8, "num_head_channels": 8}
GPU_NET = {"channels": [64, 128, 256], "attention_levels": [False, True, True], "num_res_blocks": 2,
           "norm_num_groups": 32, "num_head_channels": 64}


def settings_for(run: Run) -> Settings:
    pick = run.pick
    return Settings(
        timesteps=pick(100, T, T), image_size=pick(32, 64, 160), patch_image_size=pick(32, 32, 160),
        network=pick(SMALL_NET, CPU_NET, GPU_NET), learning_rate=pick(1e-3, 1e-3, 1e-4),
        train_films=pick(6, None, None), train_minutes=pick(0.02, 1.25, None),
        epochs=pick(1, 100000, 1000), patch_epochs=pick(1, 100000, 500),
        ae_minutes=pick(0.01, 0.2, None), ae_epochs=pick(1, 100000, 200),
        films_per_class=pick(1, 6, 1000), patch_films_per_class=pick(1, 3, 1000),
        nlrs=pick((0, 20, 40), NLRS, NLRS), per_nlr=pick((20,), (100, 300), NLRS),
        sweep_sampler=pick("ddim", "ddim", "ddpm"), sweep_steps=pick(2, 5, 10),
        sweep_repeats=pick(1, 2, 10), patch_repeats=pick(1, 1, 10),
        compare_nlr=pick(20, 200, 200), compare_films_per_class=pick(1, 3, 1000), paper_repeats=pick(1, 1, 10),
        fast_steps=pick(2, 10, 10), fast_repeats=pick(1, 2, 2), panel_step=pick(10, 250, 250),
        bootstrap=pick(100, 2000, 2000), predict_batch_size=pick(16, 64, 256))


# ---------------------------------------------------------------------------------------------- data and models


def balanced(items, count: int):
    """First count/2 abnormal and the rest normal items in manifest order (a fixed, reproducible subset)."""
    abnormal = [i for i in items if i.is_abnormal][: count // 2]
    normal = [i for i in items if not i.is_abnormal][: count - len(abnormal)]
    return abnormal + normal


def train_cached(name: str, path: Path, train, val, minutes: float | None, epochs: int, log=print, **config):
    """A finished checkpoint at `path` is loaded; otherwise train (resuming an interrupted run there) and save."""
    model, _, seconds = cached_fit(path, lambda: create(name, **config), train, val, minutes=minutes, epochs=epochs)
    if seconds:
        history = model.train_state["history"]
        log(f"trained {name} {config.get('mode', '')} in {seconds:.0f} s, {model.train_state['epoch']} epochs, "
            f"last loss {history[-1]['loss'] if history else float('nan'):.4f}")
    return model


@dataclass
class Films:
    """Evaluation films of held-out women: label, split ('val' chooses the Youden threshold, 'test' is judged)."""
    items: list
    split: list

    @property
    def labels(self) -> np.ndarray:
        return np.array([int(i.is_abnormal) for i in self.items])


@dataclass
class PatchSet:
    """Tissue patches of the evaluation films, each labelled by its overlap with the lesion circles:
    1 lesion, 0 normal tissue, -1 ambiguous (touches a lesion without meeting the lesion rule; left out)."""
    squares: np.ndarray  # (N, S, S) patches resized for the network, on the film's [0, 1] scale
    raw: list  # (p, p) patches at full resolution
    film: np.ndarray  # index of the film each patch comes from
    corners: list
    labels: np.ndarray
    films: Films = field(repr=False, default=None)


def patch_lesion_labels(case, shape, corners, size: int) -> np.ndarray:
    """1 when a patch holds at least half of a lesion circle or a circle covers >= 10 % of the patch; -1 when it
    only touches one; 0 otherwise (normal films: all 0). Circles are rasterised as the manifest does."""
    from ..data import rasterize_shapes

    labels = np.zeros(len(corners), dtype=int)
    if case is None or not case.circles:
        return labels
    for circle in case.circles:
        disc = rasterize_shapes(shape, circles=[circle]).astype(bool)
        area = disc.sum()
        for k, (row, col) in enumerate(corners):
            overlap = disc[row:row + size, col:col + size].sum()
            if overlap >= min(0.5 * area, 0.1 * size * size):
                labels[k] = 1
            elif overlap > 0 and labels[k] == 0:
                labels[k] = -1
    return labels


def cut_patches(model, films: Films, size: int) -> PatchSet:
    """Tissue patches of every film on the model's own grid (stride = patch size), as the `ddpm` patch mode cuts."""
    squares, raw, film_index, corners, labels = [], [], [], [], []
    for k, item in enumerate(films.items):
        unit = model.unit_film(item.image.array)
        patches = model.tissue_patches(unit, size)
        squares.append(model.resize_patches(patches.arrays))
        raw += list(patches.arrays)
        film_index += [k] * len(patches.corners)
        corners += patches.corners
        labels.append(patch_lesion_labels(getattr(item, "case", None), unit.shape, patches.corners, size))
    return PatchSet(np.concatenate(squares), raw, np.array(film_index), corners, np.concatenate(labels), films)


# ---------------------------------------------------------------------------------------------- scoring


@torch.no_grad()
def reconstruct(model, squares: np.ndarray, **options):
    """Reconstructions (R, N, S, S) of many squares in one batched call with per-call options, the network
    evaluations and the seconds it took. The generator is seeded as `predict` seeds it."""
    model.network.eval()
    with model.options(**options):
        model.check_config()
        generator = torch.Generator(device=model.device).manual_seed(int(model.config["seed"]))
        started = time.perf_counter()
        recon, _, evaluations = model.reconstruct_squares(squares, generator)
    return recon, evaluations, time.perf_counter() - started


def diffusion_residuals(model, squares, **options):
    """Mean |x - x_hat| over repeats (N, S, S), per-image MAE scores, evaluations and seconds."""
    recon, evaluations, seconds = reconstruct(model, squares, **options)
    residual = np.abs(np.asarray(squares)[None] - recon).mean(axis=0)
    return residual, residual.mean(axis=(1, 2)), evaluations, seconds


def sweep_options(settings: Settings, nlr: int, repeats: int) -> dict:
    """The paper protocol (random start in [NLR, T]); the reverse process as the budget affords."""
    return {"fast": False, "nlr": int(nlr), "sampler": settings.sweep_sampler, "ddim_steps": settings.sweep_steps,
            "repeats": int(repeats)}


def pixel_auroc_in_breast(films: Films, residuals, infos, breasts) -> float:
    """Pixel AUROC of the maps put back on the 1024 px film, inside the breast, at 1/4 resolution."""
    masks, maps, rois = [], [], []
    for item, residual, info, breast in zip(films.items, residuals, infos, breasts):
        if item.is_abnormal and item.mask is None:
            continue
        mask = np.zeros(item.image.array.shape, bool) if item.mask is None else np.asarray(item.mask) > 0
        masks.append(mask[::4, ::4])
        maps.append(undo_resize(residual, info)[::4, ::4])
        rois.append(breast[::4, ::4])
    return pixel_auroc(masks, maps, rois) if any(m.any() for m in masks) else math.nan


def youden_on_val(labels, scores, split) -> dict:
    """Threshold by Youden's J on the 'val' films/patches, sensitivity, specificity and accuracy on 'test'."""
    labels, scores, split = np.asarray(labels), np.asarray(scores), np.asarray(split)
    val, test = split == "val", split == "test"
    try:
        threshold = youden_threshold(labels[val], scores[val]).threshold
    except ValueError:
        return {"threshold": None, "sensitivity": None, "specificity": None, "accuracy": None}
    y, called = labels[test].astype(bool), scores[test] >= threshold
    return {"threshold": threshold, "sensitivity": clean(called[y].mean()) if y.any() else None,
            "specificity": clean((~called[~y]).mean()) if (~y).any() else None,
            "accuracy": clean((called == y).mean()) if len(y) else None}


def _rank_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """AUROC as the Mann-Whitney statistic from mid-ranks (ties count half), equal to sklearn's, without its
    input validation: thousands of bootstrap resamples stay cheap."""
    ranks = rankdata(scores)
    positives = labels == 1
    count_pos, count_neg = int(positives.sum()), int((~positives).sum())
    return float((ranks[positives].sum() - count_pos * (count_pos + 1) / 2) / (count_pos * count_neg))


def paired_bootstrap_difference(labels, baseline, other, count: int, seed: int = 0):
    """AUROC(other) - AUROC(baseline) on the same cases, and its 95 % percentile interval over case resamples."""
    labels, baseline, other = np.asarray(labels), np.asarray(baseline), np.asarray(other)
    rng = np.random.default_rng(seed)
    differences = []
    for _ in range(int(count)):
        pick = rng.integers(0, len(labels), len(labels))
        if labels[pick].min() == labels[pick].max():
            continue
        differences.append(_rank_auroc(labels[pick], other[pick]) - _rank_auroc(labels[pick], baseline[pick]))
    point = image_auroc(labels, other) - image_auroc(labels, baseline)
    if not differences:
        return point, math.nan, math.nan
    low, high = np.percentile(differences, [2.5, 97.5])
    return point, float(low), float(high)


def clean(value):
    """A table cell: NaN becomes None (no figure), numpy scalars become floats."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


# ---------------------------------------------------------------------------------------------- protocol


def reproduce(run: Run) -> None:
    from .ddpm_mammography_report import write_report

    settings = settings_for(run)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[ddpm-mammography {time.perf_counter() - started:6.0f} s] {message}", flush=True)

    manifests = BUILDERS["mini_mias"](run.data, run.work / "manifests")
    train = read_manifest(manifests["train"])
    train = train[: settings.train_films] if settings.train_films else train
    val_cases, test_cases = read_manifest(manifests["val"]), read_manifest(manifests["test"])

    def held_out(per_class: int) -> Films:
        items, split = [], []
        for name, cases in (("val", val_cases), ("test", test_cases)):
            chosen = balanced([c for c in cases if not c.is_abnormal or c.circles], 2 * per_class)
            items += as_items(chosen)
            split += [name] * len(chosen)
        return Films(items, split)

    whole_films, patch_films = held_out(settings.films_per_class), held_out(settings.patch_films_per_class)
    compare_films = held_out(settings.compare_films_per_class)
    calibration = train[:2]  # thresholds of the saved models (not used here): two normal films, cheap
    log(f"mini-MIAS: {len(train)} normal training films; evaluation {len(whole_films.items)} whole / "
        f"{len(patch_films.items)} patch films of held-out women")

    base = {"learning_rate": settings.learning_rate, "seed": run.seed, "fast": True, "ddim_steps": 5,
            "nlr": settings.compare_nlr, "fast_repeats": 1, "predict_batch_size": settings.predict_batch_size,
            "device": str(run.device), "num_train_timesteps": settings.timesteps, **settings.network}
    whole_config = {**base, "mode": "whole", "image_size": settings.image_size}
    patch_config = {**base, "mode": "patch", "image_size": settings.patch_image_size}

    def train_ddpm(tag: str, config: dict, epochs: int, seed_offset: int = 0):
        return train_cached("ddpm", run.work / f"ddpm_{tag}.pt", train, calibration, settings.train_minutes,
                            epochs, log, **{**config, "seed": run.seed + seed_offset})

    whole = train_ddpm("whole", whole_config, settings.epochs)
    patch = train_ddpm("patch", patch_config, settings.patch_epochs)
    # One model per NLR, as the paper trains them: the DDPM loss does not involve the NLR, so these differ from
    # the shared model only by their training run (seeded apart).
    per_nlr = {nlr: {"whole": train_ddpm(f"whole_nlr{nlr}", whole_config, settings.epochs, 1 + nlr)}
               for nlr in settings.per_nlr}
    if run.budget == "full":
        for nlr in settings.per_nlr:
            per_nlr[nlr]["patch"] = train_ddpm(f"patch_nlr{nlr}", patch_config, settings.patch_epochs, 1 + nlr)
    ae = train_cached("ae", run.work / "ae_whole.pt", train, calibration, settings.ae_minutes, settings.ae_epochs,
                      log, image_size=settings.image_size, seed=run.seed, device=str(run.device))
    patch_size = int(patch.config["patch_size"])
    training_patches = []
    for item in as_items(train):
        arrays = patch.tissue_patches(patch.unit_film(item.image.array), patch_size).arrays
        keep = np.linspace(0, len(arrays) - 1, min(len(arrays), 6)).round().astype(int)
        training_patches += list(arrays[keep])
    ae_patch = train_cached("ae", run.work / "ae_patch.pt", training_patches, training_patches[:2],
                            settings.ae_minutes, settings.ae_epochs, log, image_size=settings.patch_image_size,
                            seed=run.seed, device=str(run.device))
    models = {"whole": whole, "patch": patch, "ae": ae, "ae_patch": ae_patch, "per_nlr": per_nlr}

    results = evaluate(run, settings, models, whole_films, patch_films, compare_films, log)
    write_report(run, settings, models, results, whole_films, patch_films, compare_films)
    log("report written")


def evaluate(run: Run, settings: Settings, models: dict, whole_films: Films, patch_films: Films,
             compare_films: Films, log) -> dict:
    whole, patch = models["whole"], models["patch"]
    prepared = [whole.preprocess(item.image.array) for item in whole_films.items]
    squares = np.stack([square for square, _ in prepared])
    infos = [info for _, info in prepared]
    breasts = [foreground_mask(whole.unit_film(item.image.array)) for item in whole_films.items]
    patches = cut_patches(patch, patch_films, int(patch.config["patch_size"]))
    known = patches.labels >= 0
    patch_split = np.array(patch_films.split)[patches.film]
    results = {"whole": {}, "patch": {}, "patch_counts": {"lesion": int((patches.labels == 1).sum()),
                                                          "normal": int((patches.labels == 0).sum()),
                                                          "ambiguous": int((patches.labels == -1).sum())},
               "patches": patches, "squares": squares}
    labels = whole_films.labels

    def whole_entry(scores, residuals) -> dict:
        return {"scores": scores, "auroc": image_auroc(labels, scores), "auprc": image_auprc(labels, scores),
                "pixel_auroc": pixel_auroc_in_breast(whole_films, residuals, infos, breasts),
                "youden": youden_on_val(labels, scores, whole_films.split)}

    def patch_entry(patch_scores) -> dict:
        per_film_max = np.array([patch_scores[patches.film == k].max() for k in range(len(patch_films.items))])
        per_film_mean = np.array([patch_scores[patches.film == k].mean() for k in range(len(patch_films.items))])
        film_labels = patch_films.labels
        return {"scores": patch_scores, "auroc": image_auroc(patches.labels[known], patch_scores[known]),
                "auprc": image_auprc(patches.labels[known], patch_scores[known]),
                "film_auroc_max": image_auroc(film_labels, per_film_max),
                "film_auroc_mean": image_auroc(film_labels, per_film_mean),
                "youden": youden_on_val(patches.labels[known], patch_scores[known], patch_split[known])}

    for nlr in settings.nlrs:
        model_whole = models["per_nlr"].get(nlr, {}).get("whole", whole) if run.budget == "full" else whole
        model_patch = models["per_nlr"].get(nlr, {}).get("patch", patch) if run.budget == "full" else patch
        residual, scores, _, _ = diffusion_residuals(model_whole, squares,
                                                     **sweep_options(settings, nlr, settings.sweep_repeats))
        results["whole"][nlr] = whole_entry(scores, residual)
        _, patch_scores, _, _ = diffusion_residuals(model_patch, patches.squares,
                                                    **sweep_options(settings, nlr, settings.patch_repeats))
        results["patch"][nlr] = patch_entry(patch_scores)
        log(f"NLR {nlr}: whole AUROC {results['whole'][nlr]['auroc']:.3f}, patch AUROC "
            f"{results['patch'][nlr]['auroc']:.3f}")

    ae_out = models["ae"].score_slices([item.image.array for item in whole_films.items])
    ae_residual = [models["ae"].residual_maps([s])[0] for s in squares]
    results["ae_whole"] = whole_entry(np.asarray(ae_out.scores), ae_residual)
    results["ae_patch"] = patch_entry(np.asarray(models["ae_patch"].score_slices(patches.raw).scores))
    log(f"ae: whole AUROC {results['ae_whole']['auroc']:.3f}, patch AUROC {results['ae_patch']['auroc']:.3f}")

    # Shared model against one model per NLR, same films, same options.
    results["per_nlr"] = {}
    for nlr, trained in models["per_nlr"].items():
        options = sweep_options(settings, nlr, settings.sweep_repeats)
        _, own, _, _ = diffusion_residuals(trained["whole"], squares, **options)
        shared = results["whole"][nlr]["scores"] if nlr in results["whole"] and run.budget != "full" else \
            diffusion_residuals(whole, squares, **options)[1]  # the sweep's run: same options, same draws
        results["per_nlr"][nlr] = {"shared": image_auroc(labels, shared), "own": image_auroc(labels, own),
                                   "difference": paired_bootstrap_difference(labels, shared, own,
                                                                             settings.bootstrap, run.seed)}

    results["compare"] = compare_protocols(run, settings, whole, compare_films, log)
    results["panels"] = panels(settings, models, whole_films, squares, patches)
    return results


def compare_protocols(run: Run, settings: Settings, model, films: Films, log) -> dict:
    """Fast path (fixed t0, DDIM) against the paper protocol (random t0 in [NLR, T], DDPM step by step) on the
    same films with the same trained model, both batched over all films."""
    squares = np.stack([model.preprocess(item.image.array)[0] for item in films.items])
    labels = films.labels
    nlr = settings.compare_nlr
    paper_options = {"fast": False, "nlr": nlr, "sampler": "ddpm", "repeats": settings.paper_repeats}
    fast_options = {"fast": True, "nlr": nlr, "t0": None, "ddim_steps": settings.fast_steps,
                    "fast_repeats": settings.fast_repeats}
    _, paper_scores, paper_evaluations, paper_seconds = diffusion_residuals(model, squares, **paper_options)
    _, fast_scores, fast_evaluations, fast_seconds = diffusion_residuals(model, squares, **fast_options)
    difference = paired_bootstrap_difference(labels, paper_scores, fast_scores, settings.bootstrap, run.seed)
    per_repeat = paper_seconds / settings.paper_repeats
    out = {"nlr": nlr, "films": len(labels), "t0": (nlr + settings.timesteps) // 2,
           "paper": {"auroc": image_auroc(labels, paper_scores), "evaluations": paper_evaluations / len(labels),
                     "seconds": paper_seconds / len(labels), "repeats": settings.paper_repeats},
           "fast": {"auroc": image_auroc(labels, fast_scores), "evaluations": fast_evaluations / len(labels),
                    "seconds": fast_seconds / len(labels), "repeats": settings.fast_repeats},
           "difference": difference,
           "speed_measured": paper_seconds / fast_seconds,
           "speed_at_10_repeats": 10 * per_repeat / fast_seconds,
           "evaluations_at_10_repeats": 10 * paper_evaluations / settings.paper_repeats / fast_evaluations}
    point, low, high = difference
    out["auroc_within"] = abs(point) <= 0.02
    out["ci_within"] = (not math.isnan(low)) and -0.02 <= low and high <= 0.02
    fast_enough = out["speed_at_10_repeats"] >= 50
    # "met" needs the whole interval within +-0.02: a point estimate on a few films proves nothing.
    out["goal"] = ("met" if fast_enough and out["ci_within"] else
                   "not shown: the interval is wider than ±0.02" if fast_enough and out["auroc_within"] else
                   "not met")
    log(f"fast vs paper at NLR {nlr}: AUROC {out['fast']['auroc']:.3f} vs {out['paper']['auroc']:.3f}, "
        f"{out['speed_at_10_repeats']:.0f}x faster than 10 paper repeats")
    return out


@torch.no_grad()
def panels(settings: Settings, models: dict, films: Films, squares: np.ndarray, patches: PatchSet) -> dict:
    """The paper's figures 1-4: original, noised to `panel_step`, DDPM reconstruction (step by step), residual,
    and the autoencoder's residual; an abnormal and a normal film, a lesion and a normal patch."""
    chosen = {}
    labels = films.labels
    chosen["abnormal film"] = ("whole", squares[int(np.argmax(labels == 1))], films.items[int(np.argmax(labels == 1))])
    chosen["normal film"] = ("whole", squares[int(np.argmax(labels == 0))], films.items[int(np.argmax(labels == 0))])
    for name, value in (("lesion patch", 1), ("normal patch", 0)):
        if (patches.labels == value).any():
            k = int(np.argmax(patches.labels == value))
            chosen[name] = ("patch", patches.squares[k], patches.raw[k])
    out = {}
    for name, (mode, square, source) in chosen.items():
        model = models[mode]
        ae = models["ae"] if mode == "whole" else models["ae_patch"]
        generator = torch.Generator(device=model.device).manual_seed(int(model.config["seed"]))
        x0 = torch.as_tensor(square, dtype=torch.float32, device=model.device)[None, None] * 2 - 1
        start = torch.tensor([settings.panel_step], device=model.device)
        noised = noise_to_step(model.ddpm_scheduler, x0, start, generator)
        model.network.eval()
        recon, _ = ddpm_reverse(model.network, model.ddpm_scheduler, noised, start, generator)
        recon = ((recon[0, 0] + 1) / 2).clamp(0, 1).cpu().numpy()
        ae_input = square if mode == "whole" else ae.preprocess(source)[0]
        out[name] = {"original": square, "noised": ((noised[0, 0] + 1) / 2).clamp(0, 1).cpu().numpy(),
                     "reconstruction": recon, "residual": np.abs(square - recon),
                     "ae_residual": ae.residual_maps([ae_input])[0],
                     "circles": getattr(getattr(source, "case", None), "circles", []) if mode == "whole" else []}
    return out


PAPER = Paper(
    name="ddpm-mammography",
    title="Denoising diffusion models for anomaly detection in mammography (method 1), on mini-MIAS",
    citation=("The mammography diffusion paper: DDPM (T = 1000) trained on normal mammograms, partial-noise "
              "reconstruction from a start step in [NLR, T], MAE of |x - x_hat| as score, Youden threshold, "
              "whole image (160^2) or 320 px patches with >= 40 % tissue, against a conv autoencoder."),
    reproduce=reproduce,
)
