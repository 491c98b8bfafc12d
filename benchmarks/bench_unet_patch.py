"""Benchmark of the pneumonia paper's methods on the Kermany chest films: lung fields, the U-Net patch autoencoder
(unet-patch-ae) and the small CNN baseline with Grad-CAM (pneumonia-cnn).

1. Lung fields: the classical segmenter on a sample of Kermany normals and NIH films; one overlay PNG per film and
   a montage per data set (results/bench_unet_patch/lung_fields/), plus the automatic two-halves check.
2. unet-patch-ae: trained on lung patches of (a sample of) the training normals; scored on a sample of validation
   films (split by patient): image AUROC of the four SAD scores, seconds per film, the SAD histogram of normal vs
   pneumonia patches, patches in a SAD range drawn as boxes, and whether the pooled SAD shows three separable peaks.
3. pneumonia-cnn: trained on normal and pneumonia films of training patients, class-balanced loss; AUROC and
   accuracy on the same validation films, Grad-CAM overlays.

Sizes are reduced to keep the run within ~20 minutes on 2 busy CPU cores (see the options); the figures say what
was used. The last line is one JSON object.

    nice .venv/bin/python benchmarks/bench_unet_patch.py --data ../shared/data
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import medanomaly  # noqa: E402
from medanomaly.data import BUILDERS, read_manifest, split_groups  # noqa: E402
from medanomaly.inferers.patches import grid_corners  # noqa: E402
from medanomaly.io import read_image  # noqa: E402
from medanomaly.lung_field import classical_lung_mask, lung_halves_found  # noqa: E402
from medanomaly.metrics import image_auroc  # noqa: E402
from medanomaly.patch_figures import save_lung_overlay, save_patch_boxes, save_sad_histogram  # noqa: E402
from medanomaly.pneumonia_eval import count_peaks, evaluate_classifier, film_aurocs, pooled_sad, scan_films  # noqa: E402
from medanomaly.visualize import save_overlay  # noqa: E402


def sample(cases, count: int, seed: int = 0) -> list:
    """A fixed random subset (all when count is 0 or larger than the list)."""
    if not count or count >= len(cases):
        return list(cases)
    order = np.random.default_rng(seed).permutation(len(cases))[:count]
    return [cases[k] for k in sorted(order)]


def split_by_patient(cases):
    """Half of the validation patients calibrate, the other half test; stratified by label."""
    strata = {"abnormal": [c.patient for c in cases if c.is_abnormal],
              "normal": [c.patient for c in cases if not c.is_abnormal]}
    assignment = split_groups(strata, {"calibration": 0.5}, seed=1)
    return ([c for c in cases if assignment[c.patient] == "calibration"],
            [c for c in cases if assignment[c.patient] == "train"])


def per_class(cases, count: int, seed: int = 0) -> list:
    return (sample([c for c in cases if not c.is_abnormal], count, seed)
            + sample([c for c in cases if c.is_abnormal], count, seed))


# ------------------------------------------------------------------------------------------------ lung fields


def lung_check(data: Path, out: Path, count: int) -> dict:
    kermany = [r for r in csv.DictReader(open(data / "kermany_cxr" / "labels.csv", encoding="utf-8"))
               if r["label"] == "0"]
    nih = list(csv.DictReader(open(data / "nih_cxr14" / "labels.csv", encoding="utf-8")))
    films = {
        "kermany": [data / "kermany_cxr" / r["path"] for r in sample(kermany, count, seed=1)],
        "nih": [data / "nih_cxr14" / "images_512" / r["Image Index"] for r in sample(nih, count, seed=1)],
    }
    found, seconds = {}, []
    for name, paths in films.items():
        figure, axes = plt.subplots(4, int(np.ceil(len(paths) / 4)), figsize=(3 * int(np.ceil(len(paths) / 4)), 12),
                                    squeeze=False)
        both = 0
        for k, (path, axis) in enumerate(zip(paths, axes.T.ravel())):
            film = read_image(path).array
            started = time.perf_counter()
            lungs = classical_lung_mask(film)
            seconds.append(time.perf_counter() - started)
            halves = lung_halves_found(lungs)
            both += all(halves)
            save_lung_overlay(out / "lung_fields" / f"{name}_{k:02d}_{path.stem}.png", film, lungs,
                              title=f"{path.name} halves found {halves}")
            axis.imshow(film, cmap="gray")
            if lungs.any():
                axis.contour(lungs, levels=[0.5], colors="red", linewidths=1.0)
            axis.set_title(f"{k:02d} {path.name}", fontsize=7)
            axis.axis("off")
        for axis in axes.T.ravel()[len(paths):]:
            axis.axis("off")
        figure.tight_layout()
        figure.savefig(out / "lung_fields" / f"montage_{name}.png", dpi=70)
        plt.close(figure)
        found[name] = (both, len(paths))
        print(f"lung fields, {name}: automatic check finds a sizeable component in both halves in {both}/{len(paths)} "
              f"films (overlays in {out / 'lung_fields'})")
    print(f"lung segmentation: {np.mean(seconds):.3f} s per film")
    return {"lung_both_halves_auto": found, "lung_seconds_per_film": float(np.mean(seconds))}


# ------------------------------------------------------------------------------------------------ patch AE


def run_patch_ae(args, train, calibration, test, out: Path) -> dict:
    model = medanomaly.create("unet-patch-ae", epochs=args.ae_epochs, loss=args.loss)
    print(f"unet-patch-ae: patch count on a 256x256 film at stride 20: "
          f"{len(grid_corners((256, 256), 32, 20))} (13 x 13)")
    training = sample(train, args.train_films)
    started = time.perf_counter()
    history = model.fit(training, val=per_class(calibration, 15), checkpoint=out / "unet_patch_ae.pt",
                        minutes=args.ae_minutes, progress=False)
    train_seconds = time.perf_counter() - started
    patches = history[-1]["samples"]
    print(f"unet-patch-ae: trained on {patches} lung patches from {len(training)} training normals, "
          f"{len(history)} epochs, loss {history[0]['loss']:.4f} -> {history[-1]['loss']:.4f}, {train_seconds:.0f} s "
          f"(incl. lung segmentation and calibration)")

    scanned = scan_films(model, test)
    labels = np.array([int(s.case.is_abnormal) for s in scanned])
    aurocs = film_aurocs(scanned)
    seconds = [s.seconds for s in scanned]
    print(f"unet-patch-ae image AUROC on {int((labels == 0).sum())} normal / {int(labels.sum())} pneumonia "
          f"validation films: " + ", ".join(f"{name} {value:.3f}" for name, value in aurocs.items()))
    print(f"unet-patch-ae: {np.mean(seconds):.3f} s per film (segmentation + 169-patch scan + map); "
          f"films without any lung patch: {sum(not s.scan.in_lung.any() for s in scanned)}")

    lung_sad = {"normal": pooled_sad(scanned, False), "pneumonia": pooled_sad(scanned, True)}
    all_sad = {"normal": pooled_sad(scanned, False, "film"), "pneumonia": pooled_sad(scanned, True, "film")}
    save_sad_histogram(out / "sad_histogram_lung_patches.png", lung_sad, title="Lung-patch SAD, validation films")
    save_sad_histogram(out / "sad_histogram_all_patches.png", all_sad, title="All-patch SAD, validation films")
    subtypes = {}
    for s in scanned:
        subtypes.setdefault(s.case.extra.get("subtype", "?") or "?", []).append(s.scan.sad[s.scan.in_lung])
    save_sad_histogram(out / "sad_histogram_by_subtype.png", {k: np.concatenate(v) for k, v in subtypes.items()},
                       title="Lung-patch SAD by subtype")
    patch_auroc = image_auroc(np.r_[np.zeros(len(lung_sad["normal"])), np.ones(len(lung_sad["pneumonia"]))],
                              np.r_[lung_sad["normal"], lung_sad["pneumonia"]])
    pooled_lung, pooled_all = np.r_[lung_sad["normal"], lung_sad["pneumonia"]], np.r_[all_sad["normal"], all_sad["pneumonia"]]
    peaks = {"lung_patches": count_peaks(pooled_lung), "all_patches": count_peaks(pooled_all)}
    print(f"patch level: lung-patch SAD normal {np.median(lung_sad['normal']):.4f} vs pneumonia "
          f"{np.median(lung_sad['pneumonia']):.4f} (medians), patch AUROC {patch_auroc:.3f}; KDE peaks in the pooled "
          f"SAD: lung patches {peaks['lung_patches']}, all patches {peaks['all_patches']} -> three separable peaks: "
          f"{'yes' if 3 in peaks.values() else 'no'}")

    # The paper's range figure: patches above the normal films' 95th lung-patch SAD percentile.
    low, high = float(np.percentile(lung_sad["normal"], 95)), float(pooled_all.max())
    shown = [s for s in scanned if not s.case.is_abnormal][:2] + [s for s in scanned if s.case.is_abnormal][:3]
    for k, s in enumerate(shown):
        tag, stem = ("pneumonia" if s.case.is_abnormal else "normal"), Path(s.case.image).stem
        save_patch_boxes(out / "patch_boxes" / f"{k}_{tag}_{stem}.png", s.film, s.scan.corners, s.scan.sad,
                         32, s.scan.info, low, high, lung=s.lung)
        save_overlay(out / "sad_maps" / f"{k}_{tag}_{stem}.png", s.film, s.sad_map,
                     title=f"{tag}: SAD map, lung_mean {s.scores['lung_mean']:.4f}")
    print(f"figures: {out}/sad_histogram_*.png, patch_boxes/ (SAD in [{low:.4f}, {high:.4f}]), sad_maps/")
    return {"ae_train_seconds": train_seconds, "ae_training_patches": patches, "ae_epochs": len(history),
            "ae_auroc": aurocs, "ae_seconds_per_film": float(np.mean(seconds)), "ae_patch_auroc": patch_auroc,
            "ae_kde_peaks": peaks, "ae_loss": args.loss}


# ------------------------------------------------------------------------------------------------ CNN


def run_cnn(args, train_all, calibration, test, out: Path) -> dict:
    model = medanomaly.create("pneumonia-cnn", epochs=args.cnn_epochs, image_size=args.cnn_size)
    training = per_class(train_all, args.cnn_films_per_class, seed=2)
    started = time.perf_counter()
    history = model.fit(training, val=per_class(calibration, 15), checkpoint=out / "pneumonia_cnn.pt",
                        minutes=args.cnn_minutes, progress=False)
    train_seconds = time.perf_counter() - started
    print(f"pneumonia-cnn: trained on {len(training)} films ({model.class_counts}), {len(history)} epochs, loss "
          f"{history[0]['loss']:.4f} -> {history[-1]['loss']:.4f}, {train_seconds:.0f} s")
    evaluation = evaluate_classifier(model, test)
    for k, case in enumerate(test):
        if k % max(1, len(test) // 6) == 0:
            tag = "pneumonia" if case.is_abnormal else "normal"
            save_overlay(out / "gradcam" / f"{k}_{tag}_{Path(case.image).stem}.png", evaluation.films[k],
                         evaluation.results[k].map, title=f"{tag}: Grad-CAM, P(pneumonia) {evaluation.scores[k]:.3f}")
    auroc, accuracy, balanced = evaluation.auroc, evaluation.accuracy, evaluation.balanced_accuracy
    seconds = evaluation.seconds
    print(f"pneumonia-cnn on the same validation films: AUROC {auroc:.3f}, accuracy {accuracy:.3f} "
          f"(balanced {balanced:.3f}), {np.mean(seconds):.3f} s per film (with Grad-CAM)")
    return {"cnn_auroc": auroc, "cnn_accuracy": accuracy, "cnn_balanced_accuracy": balanced,
            "cnn_seconds_per_film": float(np.mean(seconds)), "cnn_train_seconds": train_seconds,
            "cnn_epochs": len(history), "cnn_image_size": args.cnn_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--out", default="results/bench_unet_patch")
    parser.add_argument("--lung-sample", type=int, default=20, help="films per data set for the lung-field check")
    parser.add_argument("--train-films", type=int, default=500, help="training normals for the patch AE (0: all)")
    parser.add_argument("--ae-epochs", type=int, default=12)
    parser.add_argument("--ae-minutes", type=float, default=5.0)
    parser.add_argument("--loss", default="dice", choices=["dice", "l1"])
    parser.add_argument("--eval-per-class", type=int, default=100, help="validation films per class (0: all)")
    parser.add_argument("--cnn-films-per-class", type=int, default=300)
    parser.add_argument("--cnn-epochs", type=int, default=6)
    parser.add_argument("--cnn-minutes", type=float, default=4.0)
    parser.add_argument("--cnn-size", type=int, default=224)
    parser.add_argument("--skip-cnn", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data, out = Path(args.data), Path(args.out)
    (out / "lung_fields").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    summary = lung_check(data, out, args.lung_sample)
    manifests = BUILDERS["kermany"](data, out / "manifests")
    train, train_all = read_manifest(manifests["train"]), read_manifest(manifests["train_all"])
    calibration, test = split_by_patient(read_manifest(manifests["val"]))
    test = per_class(test, args.eval_per_class)
    print(f"kermany (split by patient): {len(train)} training normals, {len(train_all)} training films; "
          f"evaluation on {len(test)} validation films ({sum(c.is_abnormal for c in test)} pneumonia)")
    summary.update(run_patch_ae(args, train, calibration, test, out))
    if not args.skip_cnn:
        summary.update(run_cnn(args, train_all, calibration, test, out))
    summary["wall_seconds"] = time.perf_counter() - started
    print(f"total wall time {summary['wall_seconds']:.0f} s on {torch.get_num_threads()} CPU threads")
    print(json.dumps(summary, default=float))


if __name__ == "__main__":
    main()
