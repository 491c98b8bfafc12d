"""Benchmark of the explainable classifiers on real chest films (CPU, reduced sizes so it ends in ~20 minutes).

- NIH ChestX-ray14 subset, 4 classes (No Finding, Cardiomegaly, Pneumothorax, Effusion): GCM and DenseNet-121
  trained on single-label films, tested on the held-out patients' films (multi-label). Per-class one-vs-rest
  AUROC (score P(class)), normal-vs-abnormal AUROC (score 1 - P(No Finding)), and the map's hit rate on films
  with NIH boxes: the fraction whose map peak (after a box filter of 1/16 of the side) falls inside a box of
  that class, the map being the class's CWM (GCM) or Grad-CAM of that class (DenseNet).
- Kermany paediatric films, normal vs pneumonia: GCM, DenseNet-121 and the small CNN (cxr-cnn), AUROC.
Prints training time, seconds per film, and writes overlay PNGs (GCM: the predicted class's CWM over the film).

    .venv/bin/python benchmarks/bench_classifiers.py [--size 128] [--epochs 8] [--out /tmp/bench_classifiers]

Reduced for a shared 2-core CPU: GCM and DenseNet at 128 px (the paper: 256), at most 8 epochs and 2 minutes of
training per model, Kermany capped at 100 films per class per split, one torch thread (`--threads`).

Thresholds are calibrated on a slice of the training films (the benchmark reports AUROC, which needs none).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import medanomaly
from medanomaly.base import as_items
from medanomaly.data.builders import BUILDERS, NIH_CLASSES, default_data_root
from medanomaly.data.manifest import read_manifest
from medanomaly.metrics import image_auroc
from medanomaly.methods.gcm import class_slug
from medanomaly.reproduce.gcm import boxes_by_class, class_map, peak_in_box  # the reproduction's own box test
from medanomaly.visualize import save_overlay


def train(name, train_items, config, minutes):
    model = medanomaly.create(name, **config)
    calibration = train_items[:: max(1, len(train_items) // 20)]  # ~20 films spread over the classes
    started = time.perf_counter()
    history = model.fit(train_items, val=calibration, progress=False, minutes=minutes)
    seconds = time.perf_counter() - started
    print(f"  {name}: {len(history)} epochs on {history[-1]['samples']} films, fit {seconds:.0f} s "
          f"(training {sum(h['seconds'] for h in history):.0f} s), losses "
          f"{[round(h['loss'], 3) for h in history]}", flush=True)
    return model, seconds


def predict_all(model, items):
    started = time.perf_counter()
    results = [model.predict(item.image) for item in items]
    return results, (time.perf_counter() - started) / len(items)


def overlays(model, items, results, out: Path, per_class: int) -> None:
    shown = {}
    for index, (item, result) in enumerate(zip(items, results)):
        label = str(item.label)
        if shown.get(label, 0) >= per_class:
            continue
        shown[label] = shown.get(label, 0) + 1
        path = out / model.name / f"{class_slug(label)}_{index:03d}.png"
        if model.name == "gcm":
            model.save_explanation(item.image, path, title=f"true {label}; predicted "
                                   f"{result.meta['predicted_class']}: CWM")
        else:
            save_overlay(path, item.image.array, result.map, title=f"{model.name} true {label}; P(abnormal)="
                         f"{result.score:.2f}: Grad-CAM")


def bench_nih(args, out: Path, report: dict) -> None:
    paths = BUILDERS["nih"](args.data, out / "manifests" / "nih")
    train_items, val_items = as_items(paths["train"]), as_items(paths["val"])
    val_cases = read_manifest(paths["val"])
    print(f"NIH: {len(train_items)} single-label training films, {len(val_items)} test films "
          f"({sum(bool(c.boxes) for c in val_cases)} with boxes)", flush=True)
    classes = list(NIH_CLASSES)
    for name in ("gcm", "densenet121"):
        if name not in args.models:
            continue
        config = {"classes": classes, "image_size": args.size, "epochs": args.epochs, "predict_batch_size": 1}
        model, fit_seconds = train(name, train_items, config, args.minutes)
        results, per_film = predict_all(model, val_items)
        row = {"fit_seconds": round(fit_seconds, 1), "seconds_per_film": round(per_film, 3),
               "epochs": model.train_state["epoch"], "image_size": args.size}
        abnormal = [item.is_abnormal for item in val_items]
        row["auroc_abnormal"] = image_auroc(abnormal, [r.score for r in results])
        for k, cls in enumerate(classes):
            truth = [cls in str(item.label).split("|") for item in val_items]
            row[f"auroc_{class_slug(cls)}"] = image_auroc(truth, [r.meta["class_probabilities"][cls] for r in results])
        hits, tried = 0, 0
        for case, item, result in zip(val_cases, val_items, results):
            if not case.boxes:
                continue
            for cls, boxes in sorted(boxes_by_class(case).items()):
                tried += 1
                hits += peak_in_box(class_map(model, item.image.array, classes.index(cls), result), boxes)
        row["box_hits"] = f"{hits}/{tried}"
        overlays(model, val_items, results, out / "overlays" / "nih", args.overlays)
        report[f"nih/{name}"] = row
        print(f"  {name} NIH: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                            for k, v in row.items()), flush=True)


def bench_kermany(args, out: Path, report: dict) -> None:
    paths = BUILDERS["kermany"](args.data, out / "manifests" / "kermany", max_per_class=args.kermany_per_class)
    train_items, val_items = as_items(paths["train_all"]), as_items(paths["val"])
    print(f"Kermany: {len(train_items)} training films, {len(val_items)} test films (<= {args.kermany_per_class} "
          f"per class, by patient)", flush=True)
    for name in ("gcm", "densenet121", "cxr-cnn"):
        if name not in args.models:
            continue
        config = {"classes": ["normal", "pneumonia"], "epochs": args.epochs, "predict_batch_size": 1}
        if name != "cxr-cnn":  # the small CNN keeps its paper's 100x100 input
            config["image_size"] = args.size
        model, fit_seconds = train(name, train_items, config, args.minutes)
        results, per_film = predict_all(model, val_items)
        row = {"fit_seconds": round(fit_seconds, 1), "seconds_per_film": round(per_film, 3),
               "epochs": model.train_state["epoch"], "image_size": model.config["image_size"],
               "auroc": image_auroc([i.is_abnormal for i in val_items], [r.score for r in results])}
        overlays(model, val_items, results, out / "overlays" / "kermany", max(1, args.overlays // 2))
        report[f"kermany/{name}"] = row
        print(f"  {name} Kermany: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                                                for k, v in row.items()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=default_data_root())
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "bench_classifiers")
    parser.add_argument("--size", type=int, default=128, help="input size of GCM and DenseNet (paper: 256)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--minutes", type=float, default=2.0, help="wall-time cap of each model's training")
    parser.add_argument("--kermany-per-class", type=int, default=100)
    parser.add_argument("--overlays", type=int, default=2, help="overlay PNGs per class")
    parser.add_argument("--models", nargs="+", default=["gcm", "densenet121", "cxr-cnn"])
    parser.add_argument("--datasets", nargs="+", default=["nih", "kermany"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads; on a shared, busy CPU one thread ran 30x faster than two")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"CPU, {torch.get_num_threads()} torch threads; image size {args.size}; <= {args.epochs} epochs and "
          f"<= {args.minutes} min of training per model", flush=True)
    started = time.perf_counter()
    report = {}
    if "nih" in args.datasets:
        bench_nih(args, args.out, report)
    if "kermany" in args.datasets:
        bench_kermany(args, args.out, report)
    (args.out / "results.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"total {time.perf_counter() - started:.0f} s; results and overlays in {args.out}")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
