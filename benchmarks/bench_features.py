"""Benchmark of the frozen-ImageNet-encoder models: the feature family (PaDiM, PatchCore) and GCM, one run, one split.

- Kermany chest films: patchcore-chest and padim-chest fitted on the training patients' normal films, image AUROC
  on the held-out patients' films (the project's patient split: the shared copy has no official test split);
  fit time on all 1341 normals (`--fit-all-normals`), seconds per 224^2 film, statistics size on disk.
- mini-MIAS mammograms: patchcore-mammo fitted on the training women's normal films, image AUROC on the held-out
  women's films (val + test), seconds per 1024^2 mammogram.
- BraTS brain MRI (T1c, FLAIR): patchcore-brain fitted on the tumour-free slices of the training cases, pixel AUROC
  inside the brain on every `--val-stride`th slice of the validation cases (as benchmarks/bench_vae.py).
- GCM (frozen encoder, decoder trained): Kermany AUROC and NIH per-class AUROC (mean over seeds) with the box hit
  rate, measured by the GCM reproduction's own function at its `quick` budget (`--gcm-budget`, `--gcm-*`).
The seed methods' figures are printed beside, as the README quotes them (not rerun here).

    nice -n 10 .venv/bin/python benchmarks/bench_features.py [--kermany-test-per-class 200] [--fit-all-normals]
        [--parts kermany mias brats gcm]

Thresholds are calibrated on a few training normals (AUROC needs none).
"""
from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import medanomaly
from medanomaly import metrics
from medanomaly.base import as_items
from medanomaly.data.builders import BUILDERS, default_data_root
from medanomaly.data.manifest import load_case, read_manifest

SEED_FIGURES = {  # the README's measured figures of the seed methods, for comparison
    "kermany image AUROC": "ae 0.326, unet-patch-ae 0.436 (lung-max), vae-vlb 0.520, ddpm 0.130",
    "mini-MIAS image AUROC": "ddpm whole 0.20-0.45 (16 films), ddpm patch 0.00-0.50 (4 films), ae 0.281",
    "BraTS FLAIR pixel AUROC": "raw intensity 0.978, DAE 0.980, VAE-E 0.967, GMM 0.957",
    "BraTS T1c pixel AUROC": "VAE-E 0.637, GMM 0.630, raw intensity 0.413",
    "GCM": "from scratch: Kermany 0.959, NIH abnormal 0.444 (Cardiomegaly 0.436, Pneumothorax 0.258, Effusion 0.336)",
}
TARGETS = {"kermany": 0.90, "mias": 0.70, "brats_T1c": 0.80, "brats_Flair": 0.97, "fit_minutes": 5.0,
           "film_seconds": 0.5, "mammogram_seconds": 10.0, "statistics_mb": 50.0, "gcm_kermany": 0.95,
           "gcm_nih_mean_class": 0.75}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def evenly(cases: list, count: int | None) -> list:
    """`count` cases spread evenly over the list (all when count is None or larger)."""
    if count is None or count >= len(cases):
        return list(cases)
    return [cases[i] for i in np.linspace(0, len(cases) - 1, count).round().astype(int)]


def fit_and_time(name: str, train, calibration, config: dict, out: Path):
    model = medanomaly.create(name, **config)
    wall, cpu = time.perf_counter(), cpu_seconds()
    history = model.fit(train, val=calibration, progress=False, checkpoint=out / f"{name}.pt")
    record = {"fit_statistics_s": round(history[0]["seconds"], 1), "fit_total_s": round(time.perf_counter() - wall, 1),
              "fit_cpu_s": round(cpu_seconds() - cpu, 1),
              "checkpoint_mb": round((out / f"{name}.pt").stat().st_size / 2**20, 2),
              **{k: v for k, v in history[0].items() if k not in ("epoch", "seconds")}}
    return model, record


def predict_timed(model, images):
    wall, cpu = time.perf_counter(), cpu_seconds()
    results = [model.predict(image) for image in images]
    return results, (time.perf_counter() - wall) / len(images), (cpu_seconds() - cpu) / len(images)


def show(title: str, row: dict) -> None:
    print(f"  {title}: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
          flush=True)


def bench_kermany(args, out: Path, report: dict) -> None:
    paths = BUILDERS["kermany"](args.data, out / "manifests" / "kermany")
    train_cases, test_cases = read_manifest(paths["train"]), read_manifest(paths["val"])
    train = as_items(evenly(train_cases, args.kermany_train))
    test = as_items([case for label in (False, True) for case in
                     evenly([c for c in test_cases if c.is_abnormal == label], args.kermany_test_per_class)])
    calibration = train[::max(1, len(train) // 20)]
    print(f"Kermany: {len(train)} training normals; test {len(test)} films of held-out patients "
          f"({sum(i.is_abnormal for i in test)} pneumonia)", flush=True)
    labels = [i.is_abnormal for i in test]
    for name in ("patchcore-chest", "padim-chest"):
        model, row = fit_and_time(name, train, calibration, {}, out)
        results, per_film, cpu_per_film = predict_timed(model, [i.image for i in test])
        row.update(auroc=metrics.image_auroc(labels, [r.score for r in results]),
                   auprc=metrics.image_auprc(labels, [r.score for r in results]),
                   seconds_per_film=round(per_film, 3), cpu_seconds_per_film=round(cpu_per_film, 3))
        report[f"kermany/{name}"] = row
        show(name, row)
    if args.fit_all_normals:
        normals = [Path(args.data) / "kermany_cxr" / line.split(",")[0]
                   for line in (Path(args.data) / "kermany_cxr" / "labels.csv").read_text("utf-8").splitlines()[1:]
                   if line.split(",")[2] == "0"]
        items = as_items(normals)
        model, row = fit_and_time("patchcore-chest", items, items[:20], {}, out / "all_normals")
        report["kermany/patchcore-chest fit on all normals"] = {"normals": len(items), **row}
        show(f"patchcore-chest fitted on all {len(items)} normals", row)


def bench_mias(args, out: Path, report: dict) -> None:
    paths = BUILDERS["mini_mias"](args.data, out / "manifests" / "mias")
    train = as_items(paths["train"])
    test_cases = read_manifest(paths["val"]) + read_manifest(paths["test"])
    test = [load_case(case) for case in test_cases]
    print(f"mini-MIAS: {len(train)} training normals; test {len(test)} films of held-out women "
          f"({sum(i.is_abnormal for i in test)} abnormal)", flush=True)
    model, row = fit_and_time("patchcore-mammo", train, train[:4], {}, out)
    results, per_film, cpu_per_film = predict_timed(model, [i.image for i in test])
    labels = [i.is_abnormal for i in test]
    with_circles = [(i, r) for i, r in zip(test, results) if i.mask is not None and i.mask.any()]
    breast = [r.map > 0 for _, r in with_circles]
    row.update(auroc=metrics.image_auroc(labels, [r.score for r in results]),
               pixel_auroc_in_breast=metrics.pixel_auroc([i.mask for i, _ in with_circles],
                                                         [r.map for _, r in with_circles], roi=breast),
               seconds_per_mammogram=round(per_film, 2), cpu_seconds_per_mammogram=round(cpu_per_film, 2),
               tiles_per_mammogram=float(np.mean([r.meta["n_tiles"][0] for r in results])))
    report["mias/patchcore-mammo"] = row
    show("patchcore-mammo", row)


def bench_brats(args, out: Path, report: dict) -> None:
    for sequence in ("T1c", "Flair"):
        paths = BUILDERS["brats"](args.data, out / "manifests" / f"brats_{sequence}", sequence=sequence)
        train = [load_case(case) for case in read_manifest(paths["train"])]
        test = [load_case(case) for case in read_manifest(paths["val"])[::args.val_stride]]
        model, row = fit_and_time("patchcore-brain", train, train[::8], {}, out / sequence)
        results, per_slice, _ = predict_timed(model, [i.image for i in test])
        rois = [i.roi for i in test]
        row.update(pixel_auroc=metrics.pixel_auroc([i.mask for i in test], [r.map for r in results], roi=rois),
                   pixel_auprc=metrics.pixel_auprc([i.mask for i in test], [r.map for r in results], roi=rois),
                   best_dice=metrics.best_dice([i.mask for i in test], [r.map for r in results], roi=rois)[0],
                   test_slices=len(test), seconds_per_slice=round(per_slice, 3))
        report[f"brats_{sequence}/patchcore-brain"] = row
        show(f"patchcore-brain {sequence}", row)


def bench_gcm(args, out: Path, report: dict) -> None:
    """GCM's targets, measured by the reproduction's own function (`medanomaly.reproduce.gcm.measure`): the NIH
    4-class split over the budget's seeds, and Kermany. Trainings are cached in --gcm-work, by default the folder
    `python -m medanomaly reproduce gcm --budget quick` uses, so after that run this only re-scores."""
    import dataclasses

    from medanomaly.reproduce import gcm as reproduction

    overrides = {key: value for key, value in (("image_size", args.gcm_size), ("epochs", args.gcm_epochs),
                                               ("minutes", args.gcm_minutes),
                                               ("kermany_per_class", args.gcm_kermany_per_class),
                                               ("class_balance", args.gcm_class_balance)) if value is not None}
    settings = dataclasses.replace(reproduction.SETTINGS[args.gcm_budget], **overrides)
    work = args.gcm_work or Path("build") / "reproduce" / "gcm" / args.gcm_budget
    figures = reproduction.measure(args.data, work, settings, models=("gcm",))
    measured = figures["summary"]["gcm"]
    nih = {"seeds": list(settings.seeds), "image_size": settings.image_size, "epochs": settings.epochs,
           "class_balance": settings.class_balance,
           "mean_class_auroc": figures["targets"]["nih_mean_finding_auroc"],
           "mean_class_auroc_sd": measured["mean_findings"][1], "mean_4_class_auroc": measured["mean_4"][0],
           "abnormal_auroc": measured["abnormal"][0], "box_hits": f"{measured['hits']}/{measured['tried']}",
           **{f"auroc_{cls.lower().replace(' ', '_')}": value[0] for cls, value in measured["class"].items()}}
    report["nih/gcm"] = nih
    report["kermany/gcm"] = figures["kermany"]
    show("gcm NIH (mean over seeds)", nih)
    show("gcm Kermany", figures["kermany"])


def summary(report: dict) -> None:
    def get(key, field):
        return report.get(key, {}).get(field)

    rows = [
        ("Kermany image AUROC, patchcore-chest", get("kermany/patchcore-chest", "auroc"), TARGETS["kermany"], ">="),
        ("Kermany image AUROC, padim-chest", get("kermany/padim-chest", "auroc"), TARGETS["kermany"], ">="),
        ("fit on all Kermany normals, minutes",
         (get("kermany/patchcore-chest fit on all normals", "fit_total_s") or 0) / 60 or None,
         TARGETS["fit_minutes"], "<="),
        (f"fit on the {get('kermany/patchcore-chest', 'images') or ''} training normals, minutes",
         (get("kermany/patchcore-chest", "fit_total_s") or 0) / 60 or None, TARGETS["fit_minutes"], "<="),
        ("seconds per 224^2 film, patchcore-chest", get("kermany/patchcore-chest", "seconds_per_film"),
         TARGETS["film_seconds"], "<="),
        ("statistics MB on disk, padim-chest", get("kermany/padim-chest", "checkpoint_mb"), TARGETS["statistics_mb"],
         "<="),
        ("statistics MB on disk, patchcore-chest", get("kermany/patchcore-chest", "checkpoint_mb"),
         TARGETS["statistics_mb"], "<="),
        ("mini-MIAS image AUROC, patchcore-mammo", get("mias/patchcore-mammo", "auroc"), TARGETS["mias"], ">="),
        ("seconds per 1024^2 mammogram", get("mias/patchcore-mammo", "seconds_per_mammogram"),
         TARGETS["mammogram_seconds"], "<="),
        ("BraTS T1c pixel AUROC in the brain", get("brats_T1c/patchcore-brain", "pixel_auroc"), TARGETS["brats_T1c"],
         ">="),
        ("BraTS FLAIR pixel AUROC in the brain", get("brats_Flair/patchcore-brain", "pixel_auroc"),
         TARGETS["brats_Flair"], ">="),
        ("GCM Kermany AUROC", get("kermany/gcm", "auroc"), TARGETS["gcm_kermany"], ">="),
        ("GCM NIH mean AUROC of the 3 findings", get("nih/gcm", "mean_class_auroc"), TARGETS["gcm_nih_mean_class"], ">="),
    ]
    print("\nTargets (measured | target | met)")
    for label, value, target, sense in rows:
        if value is None:
            print(f"  {label:45s} not run")
            continue
        met = value >= target if sense == ">=" else value <= target
        print(f"  {label:45s} {value:8.3f} | {sense} {target:<6} | {'yes' if met else 'NO'}")
    if "nih/gcm" in report:
        print(f"  GCM NIH box hits: {report['nih/gcm']['box_hits']}")
    print("\nSeed methods as the README quotes them (not rerun):")
    for label, text in SEED_FIGURES.items():
        print(f"  {label}: {text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=default_data_root())
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "bench_features")
    parser.add_argument("--parts", nargs="+", default=["kermany", "mias", "brats", "gcm"])
    parser.add_argument("--kermany-train", type=int, default=None, help="training normals (default: all)")
    parser.add_argument("--kermany-test-per-class", type=int, default=200,
                        help="held-out films per class, spread evenly over the split")
    parser.add_argument("--fit-all-normals", action=argparse.BooleanOptionalAction, default=False,
                        help="also time a patchcore-chest fit on all 1341 Kermany normals")
    parser.add_argument("--val-stride", type=int, default=4, help="BraTS: score every n-th validation slice")
    parser.add_argument("--gcm-budget", choices=["smoke", "quick", "full"], default="quick",
                        help="the reproduction budget whose settings GCM runs with (the options below override)")
    parser.add_argument("--gcm-size", type=int, default=None, help="GCM input size (quick: 128; paper: 256)")
    parser.add_argument("--gcm-epochs", type=int, default=None)
    parser.add_argument("--gcm-minutes", type=float, default=None, help="wall-time cap of each GCM training")
    parser.add_argument("--gcm-kermany-per-class", type=int, default=None)
    parser.add_argument("--gcm-class-balance", choices=["undersample", "weights", "none"], default=None)
    parser.add_argument("--gcm-work", type=Path, default=None, help="GCM training cache (default: the reproduction's)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"CPU, {torch.get_num_threads()} torch threads; parts {args.parts}", flush=True)
    started = time.perf_counter()
    report: dict = {}
    parts = {"kermany": bench_kermany, "mias": bench_mias, "brats": bench_brats, "gcm": bench_gcm}
    for part in args.parts:
        parts[part](args, args.out, report)
        (args.out / "results.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    summary(report)
    print(f"\ntotal {time.perf_counter() - started:.0f} s; results in {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
