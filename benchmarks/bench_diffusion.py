"""Benchmark of the "ddpm" diffusion anomaly model on mini-MIAS (and a small Kermany chest-film subset).

Prints: AUROC per NLR for whole and patch mode, the "ae" baseline on the same images, the fast path vs the
paper protocol on the same images (network evaluations, seconds, image AUROC), and seconds per 224^2 film
and per 1024^2 mammogram in patch mode. Everything runs on the CPU at a reduced size (CLI flags); the paper
protocol is measured on a subset with reduced repeats and its full cost is extrapolated from the measured
seconds per network evaluation (each printed line says which).

    .venv/bin/python benchmarks/bench_diffusion.py                 # about 20 minutes on 2 busy cores
    .venv/bin/python benchmarks/bench_diffusion.py --help
Trained models are cached in --work (reused by a second run; delete the folder to retrain)."""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from medanomaly.base import as_items
from medanomaly.data import BUILDERS
from medanomaly.data.manifest import read_manifest
from medanomaly.io import read_image
from medanomaly.metrics import image_auroc, pixel_auroc
from medanomaly.preprocess import foreground_mask, to_unit_range
from medanomaly.reproduce.ddpm_mammography import balanced, train_cached

ROOT = Path(__file__).resolve().parents[1]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--work", default="/tmp/bench_diffusion")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is faster than 2 on a loaded CPU)")
    p.add_argument("--image-size", type=int, default=64, help="network input (the paper: 160)")
    p.add_argument("--channels", default="16,32,32")
    p.add_argument("--train-minutes", type=float, default=2.0, help="per diffusion model")
    p.add_argument("--ae-minutes", type=float, default=0.5)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--train-patches", type=int, default=4, help="patches per training film in patch mode")
    p.add_argument("--n-whole", type=int, default=16, help="validation films for the whole-mode sweep")
    p.add_argument("--n-patch", type=int, default=4, help="validation films for the patch-mode sweep")
    p.add_argument("--n-paper", type=int, default=6, help="films for the paper protocol (DDPM, 1 repeat)")
    p.add_argument("--nlrs", default="0,50,100,150,200,250,300,350,400")
    p.add_argument("--patch-nlrs", default="0,100,200,300,400", help="NLRs swept in patch mode (slower)")
    p.add_argument("--sweep-steps", type=int, default=10, help="DDIM steps in the NLR sweep")
    p.add_argument("--sweep-repeats", type=int, default=2)
    p.add_argument("--patch-sweep-repeats", type=int, default=1)
    p.add_argument("--nlr", type=int, default=200, help="NLR of the fast-vs-paper comparison")
    p.add_argument("--ddim-steps", type=int, default=10)
    p.add_argument("--fast-repeats", type=int, default=2)
    p.add_argument("--kermany-per-class", type=int, default=10, help="0 skips the chest-film benchmark")
    p.add_argument("--kermany-minutes", type=float, default=1.0)
    return p.parse_args()


def run(model, items, **options):
    """Scores, maps, network evaluations and seconds per film with the given inference options."""
    scores, maps, evaluations, seconds, metas = [], [], [], [], []
    for item in items:
        started = time.perf_counter()
        result = model.predict(item.image, **options)
        seconds.append(time.perf_counter() - started)
        scores.append(result.score)
        maps.append(result.map)
        evaluations.append(result.meta.get("network_evaluations", 0))
        metas.append(result.meta)
    return {"scores": scores, "maps": maps, "evals": float(np.mean(evaluations)), "seconds": float(np.mean(seconds)),
            "metas": metas}


def aurocs(items, out):
    labels = [int(i.is_abnormal) for i in items]
    image = image_auroc(labels, out["scores"])
    # Pixel AUROC inside the breast, on films with a lesion circle and normal films, at 1/4 resolution.
    masks, maps, rois = [], [], []
    for item, amap in zip(items, out["maps"]):
        if item.is_abnormal and item.mask is None:
            continue
        mask = np.zeros(amap.shape, bool) if item.mask is None else np.asarray(item.mask) > 0
        unit = to_unit_range(item.image.array)[0]
        masks.append(mask[::4, ::4])
        maps.append(amap[::4, ::4])
        rois.append(foreground_mask(unit)[::4, ::4])
    pixel = pixel_auroc(masks, maps, rois) if any(m.any() for m in masks) else math.nan
    return image, pixel


def batched_seconds_per_evaluation(model, size: int, batch: int) -> float:
    """Measured seconds per image of one network evaluation on a batch of `batch` images."""
    x = torch.rand(batch, 1, size, size) * 2 - 1
    steps = torch.full((batch,), 500)
    with torch.no_grad():
        model.network(x, steps)
        started = time.perf_counter()
        for _ in range(5):
            model.network(x, steps)
    return (time.perf_counter() - started) / (5 * batch)


def train(name, path, train_items, val_items, minutes, **config):
    """Train (or reuse the cached checkpoint), calibrating on a few validation films with the fast path."""
    return train_cached(name, path, train_items, val_items, minutes, epochs=100000, **config)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    begun = time.perf_counter()
    figures = {}

    manifests = BUILDERS["mini_mias"](args.data_root, work / "mini_mias")
    train_items = as_items(read_manifest(manifests["train"]))
    val_items = as_items(read_manifest(manifests["val"]))
    print(f"mini-MIAS: {len(train_items)} normal training films; validation {len(val_items)} films "
          f"({sum(i.is_abnormal for i in val_items)} abnormal), split by woman", flush=True)
    whole_items, patch_items = balanced(val_items, args.n_whole), balanced(val_items, args.n_patch)
    paper_items = balanced(val_items, args.n_paper)
    calibration_items = balanced(val_items, 4)

    net = {"image_size": args.image_size, "channels": [int(c) for c in args.channels.split(",")],
           "learning_rate": args.lr, "fast": True, "ddim_steps": 5, "fast_repeats": 1, "seed": 0}
    models = {
        "whole": train("ddpm", work / "ddpm_whole.pt", train_items, calibration_items, args.train_minutes,
                       mode="whole", **net),
        "patch": train("ddpm", work / "ddpm_patch.pt", train_items, calibration_items, args.train_minutes,
                       mode="patch", max_train_patches_per_image=args.train_patches, **net),
    }
    ae = train("ae", work / "ae.pt", train_items, calibration_items, args.ae_minutes,
               image_size=args.image_size, learning_rate=args.lr)

    print(f"\n== NLR sweep: start step uniform in [NLR, 999], DDIM {args.sweep_steps} steps back, "
          f"{args.sweep_repeats} repeats whole / {args.patch_sweep_repeats} patch, {len(whole_items)} whole / "
          f"{len(patch_items)} patch films (the paper's DDPM reverse is too slow here; see below) ==", flush=True)
    print(f"{'NLR':>5} {'whole img AUROC':>16} {'whole px AUROC':>15} {'patch img AUROC (max/mean)':>27} "
          f"{'patch px AUROC':>15}")
    sweep, patch_nlrs = [], {int(v) for v in args.patch_nlrs.split(",")}
    for nlr in [int(v) for v in args.nlrs.split(",")]:
        options = {"fast": False, "sampler": "ddim", "nlr": nlr, "ddim_steps": args.sweep_steps,
                   "repeats": args.sweep_repeats}
        whole = run(models["whole"], whole_items, **options)
        w_img, w_px = aurocs(whole_items, whole)
        p_img = p_mean = p_px = math.nan
        if nlr in patch_nlrs:
            patch = run(models["patch"], patch_items, **{**options, "repeats": args.patch_sweep_repeats})
            patch_mean = [meta["score_mean"] for meta in patch["metas"]]  # the same reconstructions, other aggregate
            p_img, p_px = aurocs(patch_items, patch)
            p_mean = image_auroc([int(i.is_abnormal) for i in patch_items], patch_mean)
        sweep.append({"nlr": nlr, "whole_image": w_img, "whole_pixel": w_px, "patch_image_max": p_img,
                      "patch_image_mean": p_mean, "patch_pixel": p_px})
        print(f"{nlr:>5} {w_img:>16.3f} {w_px:>15.3f} {p_img:>13.3f} / {p_mean:<11.3f} {p_px:>15.3f}", flush=True)
    figures["sweep"] = sweep

    ae_out = run(ae, whole_items)
    ae_img, ae_px = aurocs(whole_items, ae_out)
    print(f"ae baseline on the same {len(whole_items)} films: image AUROC {ae_img:.3f}, pixel AUROC {ae_px:.3f}")
    figures["ae"] = {"image": ae_img, "pixel": ae_px}

    print(f"\n== Fast path vs paper protocol, whole mode, NLR {args.nlr}, same {len(paper_items)} films ==",
          flush=True)
    model = models["whole"]
    fast_options = {"fast": True, "nlr": args.nlr, "ddim_steps": args.ddim_steps, "fast_repeats": args.fast_repeats}
    fast = run(model, paper_items, **fast_options)
    paper = run(model, paper_items, fast=False, sampler="ddpm", nlr=args.nlr, repeats=1)
    seconds_per_eval = paper["seconds"] / paper["evals"]
    # The 10 repeats of the full protocol share batches: extrapolate with the cheaper batched cost as well.
    batched = batched_seconds_per_evaluation(model, args.image_size, batch=10)
    full_evals = 10 * ((args.nlr + 999) / 2 + 1)  # 10 repeats, mean start step + 1 evaluations each
    labels = [int(i.is_abnormal) for i in paper_items]
    fast_auc, paper_auc = image_auroc(labels, fast["scores"]), image_auroc(labels, paper["scores"])
    # The noise generator is seeded on every call, so every film is reconstructed from the same start steps.
    print(f"paper protocol, 1 repeat (measured, start step {paper['metas'][0]['start_steps']} for every film): "
          f"{paper['evals']:.0f} evaluations/film, {paper['seconds']:.1f} s/film, "
          f"{1000 * seconds_per_eval:.1f} ms/evaluation, image AUROC {paper_auc:.3f}")
    print(f"paper protocol, 10 repeats (extrapolated): {full_evals:.0f} evaluations/film, "
          f"{full_evals * seconds_per_eval:.0f} s/film at the measured 1-image cost, "
          f"{full_evals * batched:.0f} s/film at the measured batch-of-10 cost ({1000 * batched:.1f} ms/evaluation)")
    print(f"fast path t0={(args.nlr + 1000) // 2} (middle of [NLR, T]), "
          f"{args.ddim_steps} DDIM steps x {args.fast_repeats} repeats (measured): "
          f"{fast['evals']:.0f} evaluations/film, {fast['seconds']:.2f} s/film, image AUROC {fast_auc:.3f}")
    print(f"speed-up vs the 10-repeat paper protocol: {full_evals * batched / fast['seconds']:.0f}x "
          f"(evaluations: {full_evals / fast['evals']:.0f}x); AUROC difference fast - paper(1 repeat): "
          f"{fast_auc - paper_auc:+.3f} on {len(paper_items)} films")
    fast_all = run(model, whole_items, **fast_options)
    print(f"fast path on the {len(whole_items)} sweep films: image/pixel AUROC "
          f"{'/'.join(f'{v:.3f}' for v in aurocs(whole_items, fast_all))}")
    figures["fast_vs_paper"] = {"paper_evals": paper["evals"], "paper_seconds": paper["seconds"],
                                "paper_auroc_1rep": paper_auc, "paper_full_evals": full_evals,
                                "paper_full_seconds_extrapolated": full_evals * seconds_per_eval,
                                "fast_evals": fast["evals"], "fast_seconds": fast["seconds"], "fast_auroc": fast_auc}

    print("\n== Patch mode timings (fast path, measured; paper protocol extrapolated) ==", flush=True)
    patch_model = models["patch"]
    film_1024 = [i for i in val_items if i.image.array.shape == (1024, 1024)][:2]
    kermany_film = sorted((Path(args.data_root) / "kermany_cxr" / "train" / "NORMAL").glob("*.jpeg"))[0]
    for label, images in (("1024^2 mammogram", [i.image for i in film_1024]),
                          ("224^2 chest film", [read_image(kermany_film)])):
        seconds, evals = [], []
        for image in images:
            result = patch_model.predict(image, **fast_options)
            seconds.append(result.meta["timings"]["predict_seconds"])
            evals.append(result.meta["network_evaluations"])
        patches = np.mean(evals) / (args.ddim_steps * args.fast_repeats)
        paper_evals = patches * full_evals
        print(f"{label}: {patches:.0f} patches (mean of {len(images)}), fast {np.mean(evals):.0f} evaluations "
              f"{np.mean(seconds):.1f} s; paper protocol {paper_evals:.0f} evaluations, "
              f"about {paper_evals * batched / 60:.0f} min (extrapolated)")
        figures[f"patch_{label}"] = {"fast_seconds": float(np.mean(seconds)), "fast_evals": float(np.mean(evals)),
                                     "paper_evals": paper_evals}

    if args.kermany_per_class:
        print("\n== Kermany chest films (whole mode, fast path) ==", flush=True)
        k = BUILDERS["kermany"](args.data_root, work / "kermany", max_per_class=args.kermany_per_class * 4)
        k_train = as_items(read_manifest(k["train"]))
        k_val = balanced(as_items(read_manifest(k["val"])), 2 * args.kermany_per_class)
        k_model = train("ddpm", work / "ddpm_kermany.pt", k_train, balanced(k_val, 4), args.kermany_minutes,
                        mode="whole", **net)
        out = run(k_model, k_val, **fast_options)
        k_auc = image_auroc([int(i.is_abnormal) for i in k_val], out["scores"])
        print(f"{len(k_train)} normal training films, {len(k_val)} validation films: image AUROC {k_auc:.3f}, "
              f"{out['seconds']:.2f} s/film")
        figures["kermany_auroc"] = k_auc

    (work / "figures.json").write_text(json.dumps(figures, indent=2, default=float), encoding="utf-8")
    print(f"\ntotal wall time {(time.perf_counter() - begun) / 60:.1f} min; figures in {work / 'figures.json'}")


if __name__ == "__main__":
    main()
