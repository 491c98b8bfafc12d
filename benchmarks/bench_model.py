"""Benchmark one registered anomaly model on the Kermany chest films (normal vs pneumonia), through the contract.

Trains on the training normals, calibrates on one half of the validation patients and tests on the other half
(split by patient, so the reported sensitivity and specificity are not measured on the calibration images).
Prints image AUROC/AUPRC, the Youden threshold's sensitivity/specificity on the test half, training time and
seconds per image; the last line is one JSON object.

    .venv/bin/python benchmarks/bench_model.py --model ae --data ../shared/data
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import medanomaly
from medanomaly.cli import parse_config
from medanomaly.data import BUILDERS, read_manifest, split_groups
from medanomaly.evaluation import evaluate


def split_by_patient(cases):
    """Half of the validation patients calibrate, the other half test; stratified by label."""
    strata = {
        "abnormal": [c.patient for c in cases if c.is_abnormal],
        "normal": [c.patient for c in cases if not c.is_abnormal],
    }
    assignment = split_groups(strata, {"calibration": 0.5}, seed=1)
    calibration = [c for c in cases if assignment[c.patient] == "calibration"]
    test = [c for c in cases if assignment[c.patient] == "train"]
    return calibration, test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ae")
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--out", default=None, help="results folder (default results/bench_<model>)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-time budget for training")
    parser.add_argument("--max-per-class", type=int, default=None, help="cap films per class (fast runs)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--config", nargs="*", default=[], help="model config as key=value")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    out = Path(args.out or f"results/bench_{args.model}")
    manifests = BUILDERS["kermany"](Path(args.data), out / "manifests", max_per_class=args.max_per_class)
    train = read_manifest(manifests["train"])
    calibration, test = split_by_patient(read_manifest(manifests["val"]))
    print(f"kermany: {len(train)} training normals; calibration {len(calibration)} / test {len(test)} films "
          f"({sum(c.is_abnormal for c in test)} pneumonia in test)")

    model = medanomaly.create(args.model, epochs=args.epochs, **parse_config(args.config))
    started = time.perf_counter()
    history = model.fit(train, val=calibration, checkpoint=out / f"{args.model}.pt", minutes=args.minutes)
    train_seconds = time.perf_counter() - started
    print(f"trained {len(history)} epochs in {train_seconds:.0f} s (final loss {history[-1]['loss']:.5f}); "
          f"calibration: {model.calibration['method']}, image threshold {model.thresholds['image']:.5g}")

    summary = evaluate(model, test, out / "evaluation", progress=False)
    at_threshold = summary.get("at_threshold") or {}
    print(f"image AUROC {summary['image_auroc']:.3f}  AUPRC {summary['image_auprc']:.3f}  "
          f"(n_normal {summary['n_normal']}, n_abnormal {summary['n_abnormal']})")
    if at_threshold:
        print(f"at the calibrated threshold on the test half: sensitivity {at_threshold['sensitivity']:.3f}, "
              f"specificity {at_threshold['specificity']:.3f}")
    print(f"seconds per image {summary['seconds_per_image']:.4f}; training {train_seconds:.0f} s "
          f"on {torch.get_num_threads()} CPU threads")
    print(json.dumps({"model": args.model, "train_seconds": train_seconds, "epochs": len(history), **summary}))


if __name__ == "__main__":
    main()
