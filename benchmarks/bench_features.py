"""Benchmark of the frozen-ImageNet-encoder models: the feature family (PaDiM, PatchCore) and GCM, one run, one split.

- Kermany chest films: patchcore-chest and padim-chest fitted on the training patients' normal films, image AUROC
  on the held-out patients' films (the project's patient split: the shared copy has no official test split);
  fit time on all 1341 normals (`--fit-all-normals`), seconds per 224^2 film, statistics size on disk.
- mini-MIAS mammograms: patchcore-mammo (the zoo recipe's configuration) fitted on the training women's normal
  films; image AUROC and pixel AUROC in the breast on the validation women and, apart, on the test women (split by
  woman), CPU seconds per 1024^2 mammogram. `--mias-variants` first compares configuration variants and score rules
  on the validation women only (the test women are never used to choose).
- BraTS brain MRI (T1c, FLAIR): patchcore-brain fitted on the tumour-free slices of the training cases; pixel
  AUROC inside the brain on every `--val-stride`th slice of the validation cases: the intensity weight is chosen
  on one case (brats_2013_pat0003_1), the figure reported on the other, and on both for comparison.
- GCM (frozen encoder, decoder trained): Kermany AUROC and NIH per-class AUROC (mean over seeds) with the box hit
  rate, measured by the GCM reproduction's own function at its `quick` budget (`--gcm-budget`, `--gcm-*`).
The seed methods' figures are printed beside, as the README quotes them (not rerun here).

    nice -n 10 .venv/bin/python benchmarks/bench_features.py [--kermany-test-per-class 200] [--fit-all-normals]
        [--parts kermany mias brats gcm] [--mias-variants] [--no-kermany-auroc]

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
    for name in ("patchcore-chest", "padim-chest") if args.kermany_auroc else ():
        model, row = fit_and_time(name, train, calibration, {}, out)
        results, per_film, cpu_per_film = predict_timed(model, [i.image for i in test])
        row.update(auroc=metrics.image_auroc(labels, [r.score for r in results]),
                   auprc=metrics.image_auprc(labels, [r.score for r in results]),
                   seconds_per_film=round(per_film, 3), cpu_seconds_per_film=round(cpu_per_film, 3))
        report[f"kermany/{name}"] = row
        show(name, row)
    if args.fit_all_normals:  # the fit time target: every normal film of the shared copy
        normals = [Path(args.data) / "kermany_cxr" / line.split(",")[0]
                   for line in (Path(args.data) / "kermany_cxr" / "labels.csv").read_text("utf-8").splitlines()[1:]
                   if line.split(",")[2] == "0"]
        items = as_items(normals)
        for name in ("padim-chest", "patchcore-chest"):
            model, row = fit_and_time(name, items, items[:20], {}, out / "all_normals")
            report[f"kermany/{name} fit on all normals"] = {"normals": len(items), **row}
            show(f"{name} fitted on all {len(items)} normals (calibrated on 20)", row)


MIAS_VARIANTS = {  # name -> patchcore-mammo config; compared on the validation women only
    "as first shipped: film contrast, 256 px tiles, stages 3+5": {},
    "chest wall flipped to the left": {"breast_side": "left"},
    "+ vertical mirrors of the training tiles": {"breast_side": "left", "train_flips": True},
    "+ contrast from the breast's percentiles": {"breast_side": "left", "train_flips": True, "contrast": "breast"},
    "512 px tiles at half resolution": {"patch_size": 512, "image_size": 256},
    "stages 2+3 (stride 4)": {"encoder_stages": [2, 3]},
    "stages 4+5 (stride 16)": {"encoder_stages": [4, 5]},
}
MIAS_SCORE_RULES = ("max", 0.999, 0.99, "mean", "top_tiles 3", "top_tiles 5")


def mias_rule_scores(results, rule) -> list[float]:
    """Image scores by one rule from the stitched maps (inside the breast) or the tile maxima."""
    if isinstance(rule, str) and rule.startswith("top_tiles"):
        k = int(rule.split()[1])
        return [float(np.mean(sorted(r.meta["tile_max"][0])[-k:])) for r in results]
    values = [r.map[r.map > 0] for r in results]
    if rule == "max":
        return [float(v.max()) for v in values]
    if rule == "mean":
        return [float(v.mean()) for v in values]
    return [float(np.quantile(v, rule)) for v in values]


def rule_config(rule) -> dict:
    if isinstance(rule, str) and rule.startswith("top_tiles"):
        return {"image_score": "top_tiles", "top_tiles": int(rule.split()[1])}
    return {"image_score": rule}


def mias_figures(model, cases: list) -> dict:
    """Image AUROC, pixel AUROC in the breast with the lesion circles, and time per mammogram."""
    items = [load_case(case) for case in cases]
    results, per_film, cpu_per_film = predict_timed(model, [i.image for i in items])
    labels = [i.is_abnormal for i in items]
    with_circles = [(i, r) for i, r in zip(items, results) if i.mask is not None and i.mask.any()]
    return {"films": len(items), "abnormal": int(sum(labels)),
            "auroc": metrics.image_auroc(labels, [r.score for r in results]),
            "pixel_auroc_in_breast": metrics.pixel_auroc([i.mask for i, _ in with_circles],
                                                         [r.map for _, r in with_circles],
                                                         roi=[r.map > 0 for _, r in with_circles]),
            "seconds_per_mammogram": round(per_film, 2), "cpu_seconds_per_mammogram": round(cpu_per_film, 2),
            "tiles_per_mammogram": float(np.mean([r.meta["n_tiles"][0] for r in results])),
            "results": results, "labels": labels}


def bench_mias(args, out: Path, report: dict) -> None:
    """The shipped configuration (the zoo recipe's) fitted on the training women's normals, figures on the
    validation women and, apart, on the test women. With --mias-variants, first every variant of MIAS_VARIANTS
    under every score rule on the validation women (scored at stride --mias-search-stride to save time)."""
    from medanomaly.zoo import RECIPES

    paths = BUILDERS["mini_mias"](args.data, out / "manifests" / "mias")
    train = as_items(paths["train"])
    val_cases, test_cases = read_manifest(paths["val"]), read_manifest(paths["test"])
    print(f"mini-MIAS: {len(train)} training normals; validation {len(val_cases)} films "
          f"({sum(c.is_abnormal for c in val_cases)} abnormal), test {len(test_cases)} films "
          f"({sum(c.is_abnormal for c in test_cases)} abnormal), split by woman", flush=True)
    if args.mias_variants:
        for index, (variant, config) in enumerate(MIAS_VARIANTS.items()):
            if args.mias_variant_numbers and index not in args.mias_variant_numbers:
                continue
            config = {**config, "patch_stride": args.mias_search_stride}
            model, row = fit_and_time("patchcore-mammo", train, train[:1], config, out)
            figures = mias_figures(model, val_cases)
            results, labels = figures.pop("results"), figures.pop("labels")
            row.update({k: v for k, v in figures.items() if k != "auroc"})
            row.update({f"val_auroc {rule}": metrics.image_auroc(labels, mias_rule_scores(results, rule))
                        for rule in MIAS_SCORE_RULES})
            report[f"mias variant/{variant}"] = row
            show(f"variant {variant!r} (validation women)", row)
            (out / "results.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    if not args.mias_shipped:
        return
    config = dict(RECIPES["patchcore-mammo"].config)
    model, row = fit_and_time("patchcore-mammo", train, train[:1], config, out)
    for split, cases in (("val", val_cases), ("test", test_cases)):
        figures = mias_figures(model, cases)
        figures.pop("results"), figures.pop("labels")
        row.update({f"{split}_{k}": v for k, v in figures.items()})
    row["config"] = config
    report["mias/patchcore-mammo"] = row
    show("patchcore-mammo (the zoo recipe's configuration)", row)


INTENSITY_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)  # distance + weight * intensity, chosen on the tuning case
BRATS_TUNING_CASE = "brats_2013_pat0003_1"  # validation case the weight is chosen on; the other one is the test


def brain_pixel_figures(items, results, weight: float) -> dict:
    """Pixel AUROC, AUPRC and best Dice inside the brain of the map distance + weight * intensity."""
    def recombined(result):
        distance = result.extras["distance"] if "distance" in result.extras else result.map
        return distance + weight * result.extras["intensity"]

    masks, rois, maps = [i.mask for i in items], [i.roi for i in items], [recombined(r) for r in results]
    return {"pixel_auroc": metrics.pixel_auroc(masks, maps, roi=rois),
            "pixel_auprc": metrics.pixel_auprc(masks, maps, roi=rois),
            "best_dice": metrics.best_dice(masks, maps, roi=rois)[0]}


def bench_brats(args, out: Path, report: dict) -> None:
    """patchcore-brain (its defaults: stages 2+3, strides 4 and 8) fitted on the tumour-free slices of the training
    cases, every --val-stride-th slice of the validation cases scored once. The intensity weight is chosen on the
    tuning case (the best mean over both sequences), the figures at that weight reported on the other case."""
    scored = {}
    for sequence in ("T1c", "Flair"):
        paths = BUILDERS["brats"](args.data, out / "manifests" / f"brats_{sequence}", sequence=sequence)
        train = [load_case(case) for case in read_manifest(paths["train"])]
        val = read_manifest(paths["val"])[::args.val_stride]
        tuning = [load_case(c) for c in val if c.patient == BRATS_TUNING_CASE]
        test = [load_case(c) for c in val if c.patient != BRATS_TUNING_CASE]
        model, row = fit_and_time("patchcore-brain", train, train[::16], {}, out / sequence)
        results, per_slice, cpu_per_slice = predict_timed(model, [i.image for i in tuning + test])
        row.update(tuning_slices=len(tuning), test_slices=len(test), seconds_per_slice=round(per_slice, 3),
                   cpu_seconds_per_slice=round(cpu_per_slice, 3))
        row.update({f"tuning_auroc w={w:g}": brain_pixel_figures(tuning, results[:len(tuning)], w)["pixel_auroc"]
                    for w in INTENSITY_WEIGHTS})
        scored[sequence] = (tuning, test, results, row)
        show(f"patchcore-brain {sequence}, tuning case", row)
    weight = max(INTENSITY_WEIGHTS, key=lambda w: np.mean([row[f"tuning_auroc w={w:g}"]
                                                           for *_, row in scored.values()]))
    for sequence, (tuning, test, results, row) in scored.items():
        row["chosen_intensity_weight"] = weight
        for split, items, chosen in (("test", test, results[len(tuning):]), ("both", tuning + test, results)):
            row.update({f"{split}_{k}": v for k, v in brain_pixel_figures(items, chosen, weight).items()})
        row.update({f"test_auroc w={w:g}": brain_pixel_figures(test, results[len(tuning):], w)["pixel_auroc"]
                    for w in (0.0, weight)})
        report[f"brats_{sequence}/patchcore-brain"] = row
        show(f"patchcore-brain {sequence}, weight {weight:g} chosen on the tuning case", row)


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

    def minutes(key, field):
        value = get(key, field)
        return None if value is None else value / 60

    def tuning(sequence):  # the case the intensity weight was chosen on, at that weight
        key = f"brats_{sequence}/patchcore-brain"
        weight = get(key, "chosen_intensity_weight")
        return None if weight is None else get(key, f"tuning_auroc w={weight:g}")

    all_normals = "kermany/padim-chest fit on all normals"
    rows = [
        ("Kermany image AUROC, padim-chest", get("kermany/padim-chest", "auroc"), TARGETS["kermany"], ">="),
        ("Kermany image AUROC, patchcore-chest", get("kermany/patchcore-chest", "auroc"), TARGETS["kermany"], ">="),
        (f"fit on all {get(all_normals, 'normals') or 1341} Kermany normals, padim-chest, CPU min",
         minutes(all_normals, "fit_cpu_s"), TARGETS["fit_minutes"], "<="),
        ("  the same, wall min", minutes(all_normals, "fit_total_s"), TARGETS["fit_minutes"], "<="),
        ("fit on all Kermany normals, patchcore-chest, CPU min",
         minutes("kermany/patchcore-chest fit on all normals", "fit_cpu_s"), TARGETS["fit_minutes"], "<="),
        ("  the same, wall min", minutes("kermany/patchcore-chest fit on all normals", "fit_total_s"),
         TARGETS["fit_minutes"], "<="),
        ("CPU s per 224^2 film, padim-chest", get("kermany/padim-chest", "cpu_seconds_per_film"),
         TARGETS["film_seconds"], "<="),
        ("CPU s per 224^2 film, patchcore-chest", get("kermany/patchcore-chest", "cpu_seconds_per_film"),
         TARGETS["film_seconds"], "<="),
        ("statistics MB on disk, padim-chest", get("kermany/padim-chest", "checkpoint_mb"), TARGETS["statistics_mb"],
         "<="),
        ("statistics MB on disk, patchcore-chest", get("kermany/patchcore-chest", "checkpoint_mb"),
         TARGETS["statistics_mb"], "<="),
        ("mini-MIAS image AUROC, test women", get("mias/patchcore-mammo", "test_auroc"), TARGETS["mias"], ">="),
        ("  the same, validation women (tuned on)", get("mias/patchcore-mammo", "val_auroc"), TARGETS["mias"], ">="),
        ("CPU s per 1024^2 mammogram", get("mias/patchcore-mammo", "test_cpu_seconds_per_mammogram"),
         TARGETS["mammogram_seconds"], "<="),
        ("statistics MB on disk, patchcore-mammo", get("mias/patchcore-mammo", "checkpoint_mb"),
         TARGETS["statistics_mb"], "<="),
        ("BraTS T1c pixel AUROC in the brain, test case", get("brats_T1c/patchcore-brain", "test_pixel_auroc"),
         TARGETS["brats_T1c"], ">="),
        ("  the same, both validation cases", get("brats_T1c/patchcore-brain", "both_pixel_auroc"),
         TARGETS["brats_T1c"], ">="),
        ("  the same, the tuning case", tuning("T1c"), TARGETS["brats_T1c"], ">="),
        ("BraTS FLAIR pixel AUROC in the brain, test case", get("brats_Flair/patchcore-brain", "test_pixel_auroc"),
         TARGETS["brats_Flair"], ">="),
        ("  the same, both validation cases", get("brats_Flair/patchcore-brain", "both_pixel_auroc"),
         TARGETS["brats_Flair"], ">="),
        ("  the same, the tuning case", tuning("Flair"), TARGETS["brats_Flair"], ">="),
        ("GCM Kermany AUROC", get("kermany/gcm", "auroc"), TARGETS["gcm_kermany"], ">="),
        ("GCM NIH mean AUROC of the 3 findings", get("nih/gcm", "mean_class_auroc"), TARGETS["gcm_nih_mean_class"], ">="),
    ]
    print("\nTargets (measured | target | met, or missed by how much)")
    for label, value, target, sense in rows:
        if value is None:
            print(f"  {label:52s} not run")
            continue
        met = value >= target if sense == ">=" else value <= target
        verdict = "met" if met else f"missed by {abs(value - target):.3f}"
        print(f"  {label:52s} {value:8.3f} | {sense} {target:<6} | {verdict}")
    if "nih/gcm" in report:
        print(f"  GCM NIH box hits: {report['nih/gcm']['box_hits']}")
    variants = {k.split("/", 1)[1]: v for k, v in report.items() if k.startswith("mias variant/")}
    if variants:
        print("\nmini-MIAS variants, image AUROC on the validation women by score rule (pixel AUROC in the breast):")
        print(f"  {'variant':60s} " + " ".join(f"{str(rule):>11s}" for rule in MIAS_SCORE_RULES) + "       pixel")
        for name, row in variants.items():
            print(f"  {name:60s} " + " ".join(f"{row[f'val_auroc {rule}']:11.3f}" for rule in MIAS_SCORE_RULES)
                  + f" {row['pixel_auroc_in_breast']:11.3f}")
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
    parser.add_argument("--merge", nargs="*", type=Path, default=[],
                        help="results.json files of earlier runs to include in the table (--parts none: only that)")
    parser.add_argument("--kermany-auroc", action=argparse.BooleanOptionalAction, default=True,
                        help="Kermany: fit on the training normals and measure AUROC on held-out patients")
    parser.add_argument("--fit-all-normals", action=argparse.BooleanOptionalAction, default=False,
                        help="also time a patchcore-chest fit on all 1341 Kermany normals")
    parser.add_argument("--mias-variants", action=argparse.BooleanOptionalAction, default=False,
                        help="mini-MIAS: compare the configuration variants on the validation women first")
    parser.add_argument("--mias-variant-numbers", nargs="*", type=int, default=[],
                        help="only these variants (0-based, in MIAS_VARIANTS order); default all")
    parser.add_argument("--mias-shipped", action=argparse.BooleanOptionalAction, default=True,
                        help="mini-MIAS: measure the zoo recipe's configuration on validation and test women")
    parser.add_argument("--mias-search-stride", type=int, default=256, help="scoring stride of the variant search")
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
    for earlier in args.merge:  # the parts' own runs, e.g. run apart on a busy machine
        report.update(json.loads(earlier.read_text(encoding="utf-8")))
    parts = {"kermany": bench_kermany, "mias": bench_mias, "brats": bench_brats, "gcm": bench_gcm}
    for part in args.parts:
        if part == "none":
            continue
        parts[part](args, args.out, report)
        (args.out / "results.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    summary(report)
    print(f"\ntotal {time.perf_counter() - started:.0f} s; results in {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
