"""Benchmark of the VAE family on real data.

Brain MRI (BraTS 2015, FLAIR and T1c): train on the tumour-free slices of the train cases, score the slices of
the validation cases, pixel AUROC / AUPRC / best Dice inside the brain mask against tumour (label > 0). Rows as
in the uncertainty-VAE paper: raw intensity, AE, DAE, VAE squared error, VAE-L, VAE-U, VAE-E, GMM.
Chest films: the VLB VAE on Kermany normal vs pneumonia (a capped subset), and the same model as an
out-of-distribution screen on the DICOM / NIfTI samples (chest CR/DX = in distribution;
`medanomaly.modality_screen.score_samples`). The chest paper's own protocol is `python -m medanomaly reproduce vlb-vae`.

Sizes are reduced to fit about 20 minutes on two busy CPU cores (few epochs, every n-th validation slice, capped
Kermany subset); the flags restore larger runs. Usage:
    .venv/bin/python benchmarks/bench_vae.py [--part all|brain|chest] [--brain-epochs 6] [--vae-epochs 12] [--chest-epochs 6] ...
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import medanomaly
from medanomaly import metrics
from medanomaly.brain_evaluation import VAE_ROWS, brain_maps, pixel_figures, raw_intensity_map
from medanomaly.data.builders import BUILDERS, default_data_root
from medanomaly.data.manifest import load_case, read_manifest
from medanomaly.modality_screen import score_samples

ROWS = ("raw intensity", "AE", "DAE", "VAE squared error", "VAE-L", "VAE-U", "VAE-E", "GMM")


def brain_sequence(sequence: str, args, work: Path) -> dict:
    paths = BUILDERS["brats"](args.data_root, work / f"brats_{sequence}", sequence=sequence)
    train = [load_case(case) for case in read_manifest(paths["train"])]
    val_cases = read_manifest(paths["val"])[::args.val_stride]
    val = [load_case(case) for case in val_cases]
    calibration = train[::8]  # thresholds are not scored here: a few normals keep calibration cheap
    masks, rois = [item.mask for item in val], [item.roi for item in val]
    print(f"\n[{sequence}] train: {len(train)} tumour-free slices of {len({c.case.patient for c in train})} cases; "
          f"test: {len(val)} slices (every {args.val_stride}th slice) of {len({c.patient for c in val_cases})} cases, "
          f"{sum(v.is_abnormal for v in val)} with tumour", flush=True)

    figures = {"raw intensity": pixel_figures(masks, [raw_intensity_map(v.image.array) for v in val], rois)}
    shared = {"base_channels": args.nc, "latent_size": args.nz}  # AE and DAE share the VAE's encoder
    runs = [
        ("AE", "brain-ae", {**shared, "epochs": args.brain_epochs}),
        ("DAE", "brain-dae", {**shared, "epochs": args.brain_epochs}),
        ("VAE", "vae-uncertainty", {**shared, "epochs": args.vae_epochs, "batch_size": args.vae_batch}),
        ("GMM", "gmm", {"components": args.gmm_components}),
    ]
    for label, name, config in runs:
        started = time.perf_counter()
        model = medanomaly.create(name, **config)
        history = model.fit(train, val=calibration, progress=False)
        trained = time.perf_counter() - started
        maps, seconds = brain_maps(model, [item.image for item in val])
        print(f"  {label:4s} ({name}, {config}): fit {trained:.0f} s, final loss {history[-1]['loss']:.4g}, "
              f"predict {seconds:.3f} s/slice", flush=True)
        if label == "VAE":
            for ours, row in VAE_ROWS.items():
                figures[row] = pixel_figures(masks, maps[ours], rois)
        else:
            figures[label] = pixel_figures(masks, maps[model.map_name()], rois)
    return figures


def print_brain_table(table: dict) -> None:
    sequences = list(table)
    header = f"{'method':20s}" + "".join(f" | {s + ' AUROC':>11s} {'AUPRC':>6s} {'Dice':>6s}" for s in sequences)
    print("\nBrain MRI, pixel level inside the brain mask (BraTS 2015 validation cases)")
    print(header)
    print("-" * len(header))
    for row in ROWS:
        cells = "".join(f" | {table[s][row]['auroc']:11.3f} {table[s][row]['auprc']:6.3f} {table[s][row]['dice']:6.3f}"
                        for s in sequences)
        print(f"{row:20s}{cells}")


def chest(args, work: Path) -> None:
    paths = BUILDERS["kermany"](args.data_root, work / "kermany", max_per_class=args.kermany_per_class)
    train = [load_case(case) for case in read_manifest(paths["train"])]
    val = [load_case(case) for case in read_manifest(paths["val"])][::args.kermany_val_stride]
    started = time.perf_counter()
    model = medanomaly.create("vae-vlb", epochs=args.chest_epochs, architecture=args.vae_architecture)
    history = model.fit(train, val=train[:10], progress=False)
    trained = time.perf_counter() - started
    scores = [model.predict(item.image).score for item in val]
    labels = [int(item.is_abnormal) for item in val]
    print(f"\nChest films, VLB VAE ({args.vae_architecture}, 100^2, latent 256, RMSProp, batch 100, "
          f"{args.chest_epochs} epochs on "
          f"{len(train)} Kermany normal films; fit {trained:.0f} s, final -ELBO {history[-1]['loss']:.1f} nats)")
    print(f"  Kermany val normal vs pneumonia ({labels.count(0)} + {labels.count(1)} films): image AUROC "
          f"{metrics.image_auroc(labels, scores):.3f}, AUPRC {metrics.image_auprc(labels, scores):.3f}  "
          f"(score = -VLB, {model.config['vlb_samples']} Monte Carlo draws)")
    print(f"  mean -VLB: normal {np.mean([s for s, y in zip(scores, labels) if y == 0]):.1f}, "
          f"pneumonia {np.mean([s for s, y in zip(scores, labels) if y == 1]):.1f} nats")

    records, refused = score_samples([model], args.data_root, work / "dicom")
    print("\n  Out-of-distribution screen on the DICOM / NIfTI samples (label 0 = chest CR/DX, 1 = other):")
    for record in records:
        modality = f"{record['modality']}/{record['body_part']}"
        shape = "x".join(str(n) for n in record["shape"])
        print(f"    {record['file']:40s} {modality:14s} label {record['label']}: -VLB {record['scores'][0]:9.1f}  "
              f"({shape})")
    for name, why in refused:
        print(f"    {name:40s} refused ({why})")
    ood_labels = [record["label"] for record in records]
    print(f"  OOD screen AUROC {metrics.image_auroc(ood_labels, [r['scores'][0] for r in records]):.3f} over "
          f"{len(records)} images ({ood_labels.count(0)} chest, {ood_labels.count(1)} other); refused: "
          f"{len(refused)} {[name for name, _ in refused]}")
    print("  (the paper's full protocol, with the fully connected VAE and the modality CNN: "
          "python -m medanomaly reproduce vlb-vae)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("all", "brain", "chest"), default="all")
    parser.add_argument("--data-root", type=Path, default=default_data_root())
    parser.add_argument("--brain-epochs", type=int, default=6, help="epochs of the AE and DAE")
    parser.add_argument("--vae-epochs", type=int, default=12, help="epochs of the uncertainty VAE")
    parser.add_argument("--vae-batch", type=int, default=8,
                        help="small batches: 96 training slices give the VAE 12 steps an epoch")
    parser.add_argument("--val-stride", type=int, default=4, help="score every n-th validation slice")
    parser.add_argument("--nc", type=int, default=8, help="Nc of the uncertainty VAE (8, 16 or 32)")
    parser.add_argument("--nz", type=int, default=128,
                        help="Nz of the uncertainty VAE (its latent vector: half mean, half log-variance); the AE "
                             "and DAE get the same encoder with an Nz / 2 code")
    parser.add_argument("--gmm-components", type=int, default=4)
    parser.add_argument("--chest-epochs", type=int, default=6)
    parser.add_argument("--vae-architecture", choices=("conv", "dense"), default="conv",
                        help="the VLB VAE's network: convolutional, or the paper's fully connected one")
    parser.add_argument("--kermany-per-class", type=int, default=400)
    parser.add_argument("--kermany-val-stride", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-vae-") as folder:
        work = Path(folder)
        if args.part in ("all", "brain"):
            print_brain_table({name: brain_sequence(seq, args, work) for name, seq in (("FLAIR", "Flair"),
                                                                                        ("T1c", "T1c"))})
        if args.part in ("all", "chest"):
            chest(args, work)
    print(f"\ntotal {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
