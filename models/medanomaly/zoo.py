"""The model zoo: checkpoints shipped with the server, each built by a recipe and described by a model card.

    python -m medanomaly zoo build [NAME ...] [--data ../shared/data] [--out monailabel_app/zoo]
    python -m medanomaly zoo cards      # (re)write the cards of the models that are not shipped

A recipe is the data (manifests built from the shared data sets, split by patient), the config, a training budget
in minutes and a seed. `build` trains into `build/zoo/NAME/training.pt` (resumed when a run was stopped, the budget
counted over all runs), then writes into the zoo folder:
- `NAME.pt`: the checkpoint without optimiser state, in half precision when the measured scores allow it;
- `NAME.card.json` and `NAME.card.md`: training data and licence, recipe, date, sha256 of `NAME.pt`, figures on
  held-out patients (calibration on one half of the validation patients, figures on the other half, or on the
  test women for mini-MIAS), seconds per image, known failure modes, and a regression subset: a few fixed real
  images with the scores the shipped file gives them, which tests re-score;
- `NAME.png`: the map of a typical abnormal image of the report set.
Every registered model without a shipped file gets a card that says why. Files are never overwritten in place:
each is written atomically, and a shipped file is replaced only by an explicit `build` of its recipe.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from .checkpoint import file_sha256

REPO = Path(__file__).resolve().parents[2]
DEFAULT_ZOO = REPO / "monailabel_app" / "zoo"
DEFAULT_WORK = REPO / "build" / "zoo"
MAX_FILE_MB = 40
MAX_TOTAL_MB = 100
HALF_SCORE_RTOL = 1e-3  # half precision is kept only when no regression-subset score moves more than this
SCORE_RTOL = 2e-4  # the regression test's tolerance on each re-scored image (a rerun differs by ~1e-6 here)
AUROC_TOL = 0.02  # and on the subset's AUROC

DATASETS = {
    "kermany": {"builder": "kermany", "what": "Kermany paediatric chest X-ray (Guangzhou), normal vs pneumonia",
                "licence": "CC BY 4.0 (Kermany et al., Cell 2018, doi:10.17632/rscbjbr9sj.2)",
                "unit": "patient", "report": "half of the validation patients (the other half calibrates)"},
    "mini_mias": {"builder": "mini_mias", "what": "mini-MIAS screen-film mammograms, normals of the training women",
                  "licence": "MIAS licence: research use only (Suckling et al. 1994). Weights learnt from mini-MIAS "
                             "are for research use only.",
                  "unit": "woman", "report": "the test women (the validation women calibrate)"},
    "nih": {"builder": "nih", "what": "NIH ChestX-ray14 subset: No Finding, Cardiomegaly, Pneumothorax, Effusion",
            "licence": "NIH Clinical Center public release (Wang et al., CVPR 2017)",
            "unit": "patient", "report": "half of the validation patients (the other half calibrates)"},
    "healthy_brains": {"builder": "healthy_brains",
                       "what": "healthy T1 brains: IXI012 and IXI015 of IXI (2 mm, skull-stripped here by morphology) "
                               "and the MNI152 2009a template; calibrated on the BraTS 2015 train cases and measured "
                               "on the BraTS 2015 validation cases (T1c, tumour labels), never trained on BraTS",
                       "licence": "training data IXI: CC BY-SA 3.0 (brain-development.org); MNI152 2009a template: "
                                  "free with attribution (Fonov et al., NeuroImage 2011); calibration and test data "
                                  "BraTS 2015: CC BY-NC-SA 3.0 (Menze et al., IEEE TMI 2015)",
                       "unit": "patient", "report": "the BraTS validation cases, T1c (the BraTS train cases calibrate)"},
}


@dataclasses.dataclass(frozen=True)
class Recipe:
    dataset: str
    config: dict
    minutes: float  # training budget over all runs (statistics models fit in one pass, whatever the budget)
    seed: int = 0
    calibrate_per_class: int = 40  # validation images per class (normal / abnormal) that set the thresholds
    report_per_class: int = 60  # held-out images per class the card's figures are measured on
    subset_per_class: int = 3  # regression subset: images per class re-scored by the tests
    failure_modes: tuple = ()
    # "image": pixel AUROC over the whole image; "map": only where the map is defined (a mammogram's breast tiles),
    # on the abnormal images with lesion outlines, since the empty background would flatter any map
    pixel_roi: str = "image"
    # False where the data's licence forbids redistributing its images (mini-MIAS): the typical map is drawn on black
    picture_shows_image: bool = True
    extra_figures: str = ""  # "module:function" (model, report cases) -> more figures for the card, if any
    half_score_rtol: float | None = None  # the largest relative score change float16 weights may cause (None:
    # HALF_SCORE_RTOL)


RECIPES = {
    "vae-uncertainty": Recipe("healthy_brains", {"base_channels": 8, "latent_size": 128, "epochs": 30,
                                                 "num_workers": 0},
                              minutes=25, calibrate_per_class=20, report_per_class=40,
                              extra_figures="medanomaly.brain_evaluation:card_figures",
                              picture_shows_image=False,  # BraTS images may not be redistributed
                              # E divides by sigma^2: float16 weights moved the regression subset's scores by
                              # 1.07e-3 (relative), just above the default 1e-3
                              half_score_rtol=5e-3, failure_modes=(
        "Trained on three healthy brains (two IXI T1 volumes and the MNI152 template) for a short CPU budget: normal "
        "anatomy it has not seen (other ages, scanners, slice levels near the skull base) also scores high.",
        "Expects a skull-stripped T1-weighted volume (as BraTS): on a scan with skull the derived brain mask is the "
        "head, and skull and scalp light up. FLAIR, T2 and other sequences are out of distribution.",
        "On T1c it flags enhancing rims and bright vessels; oedema and non-enhancing tumour, nearly invisible on T1, "
        "are missed, so the map under-segments the labelled tumour.",
        "The calibration and test tumours are four BraTS 2015 cases only: its figures rest on two test patients.")),
    "ae": Recipe("kermany", {"epochs": 30, "num_workers": 0}, minutes=12, failure_modes=(
        "Baseline only: on Kermany its image AUROC is near chance (pneumonia films are reconstructed about as well "
        "as normal ones; bright, high-contrast normal films score high). Trained for a short CPU budget.",
        "The residual map follows edges (ribs, clavicles, film borders, text markers) rather than lesions.",
        "Paediatric films only: adult films, other body parts and other modalities are out of distribution.")),
    "padim-chest": Recipe("kermany", {"image_score": "mean"}, minutes=10, failure_modes=(
        "Trained on paediatric films: adult chests (larger heart, devices, lines) look anomalous everywhere.",
        "Positional Gaussians assume the chest sits at the same place: rotated or off-centre films, unusual "
        "collimation and burnt-in markers raise the map.",
        "The map is coarse (one cell per 8 pixels of the 224 px square, smoothed): it points at a region, "
        "it does not outline a lesion.")),
    "patchcore-chest": Recipe("kermany", {"image_score": "mean"}, minutes=10, failure_modes=(
        "Trained on paediatric films: adult chests (larger heart, devices, lines) look anomalous everywhere.",
        "Texture not seen in normal films (burnt-in text, rulers, pacemakers) scores as high as disease.",
        "The map is coarse (one cell per 8 pixels of the 224 px square, smoothed): it points at a region, "
        "it does not outline a lesion.")),
    "patchcore-mammo": Recipe("mini_mias", {}, minutes=15, calibrate_per_class=10, report_per_class=26,
                              subset_per_class=1, pixel_roi="map", picture_shows_image=False, failure_modes=(
        "Research use only (mini-MIAS licence).",
        "The score is the map's mean over the breast (it ranked the validation women best): a dense or unusual "
        "breast raises it as a whole, and a small lesion in an otherwise ordinary breast moves it little.",
        "Screen-film mammograms digitised at 200 um: digital mammograms (other contrast, processing) are out of "
        "distribution.",
        "Dense glandular tissue and the pectoral muscle edge score high; architectural distortion and asymmetry "
        "(no focal texture) are often missed.",
        "Trained on about 80 normal films: its figures rest on few held-out women.")),
    # Frozen ImageNet encoder, only the decoder trains; 128 px and every training film with a class-weighted loss
    # (the smallest class has 20 films) so that the CPU budget covers a dozen epochs.
    "gcm": Recipe("nih", {"epochs": 30, "num_workers": 0, "image_size": 128, "class_balance": "weights",
                          "batch_size": 16}, minutes=20, calibrate_per_class=30, report_per_class=30,
                  failure_modes=(
        "Trained on 138 NIH films (20 to 59 per class) for 20 CPU-minutes at 128 px: its class maps are weak; a "
        "positive score says 'look', not which finding.",
        "Adult frontal chest films only; four classes: other findings are scored as whichever class they resemble.")),
}

NOT_SHIPPED = {  # registered models with no recipe: why, in the card and in /info/
    "brain-ae": "brain baseline: train it with POST /train/brain-ae on your own healthy brains",
    "brain-dae": "brain baseline: train it with POST /train/brain-dae on your own healthy brains",
    "dae": "the denoising variant of the shipped ae baseline: train it with POST /train/dae",
    "gmm": "fitted per site on healthy brains in seconds: train it with POST /train/gmm",
    "cxr-cnn": "supervised baseline, superseded by the chest feature model: train it with POST /train/cxr-cnn",
    "pneumonia-cnn": "supervised baseline, superseded by the chest feature model: train it with POST "
                     "/train/pneumonia-cnn",
    "densenet121": "too slow to train on a CPU: train it with POST /train/densenet121 on a GPU",
    "ddpm": "too slow to train and to score on a CPU (minutes per film): train it with POST /train/ddpm on a GPU",
    "unet-patch-ae": "measured below the chest feature model on Kermany: train it with POST /train/unet-patch-ae",
    "vae-vlb": "an out-of-distribution screen rather than an anomaly map: train it with POST /train/vae-vlb",
    "patchcore-chest": "measured below padim-chest on held-out Kermany patients (image AUROC 0.949 vs 0.956, "
                       "benchmarks/bench_features.py, 600 training normals) and 3.5 times slower per film: build it "
                       "with `python -m medanomaly zoo build patchcore-chest` or train it with POST "
                       "/train/patchcore-chest",
    "patchcore-brain": "the only brains with tumour masks are BraTS (CC BY-NC-SA): train it with POST "
                       "/train/patchcore-brain on your own healthy brains",
}


# ------------------------------------------------------------------------------------------------ helpers


def _order_key(case) -> str:
    return hashlib.sha1(Path(case.image).name.encode() + str(case.slice).encode()).hexdigest()


def pick_per_class(cases: list, per_class: int) -> list:
    """Up to `per_class` normal and `per_class` abnormal cases, a fixed choice (by hash of the file name)."""
    chosen = []
    for abnormal in (False, True):
        group = sorted((c for c in cases if c.is_abnormal == abnormal), key=_order_key)
        chosen += group[:per_class]
    return chosen


def split_by_patient(cases: list) -> tuple[list, list]:
    """Validation cases into a calibration half and a report half, whole patients on one side."""
    halves = ([], [])
    for case in cases:
        key = str(case.patient or Path(case.image).name)
        halves[int(hashlib.sha1(key.encode()).hexdigest(), 16) % 2].append(case)
    return halves


def _write_json(path: Path, payload: dict) -> None:
    from .atomic import atomic_destination

    with atomic_destination(path) as temporary:
        Path(temporary).write_text(json.dumps(payload, indent=2, default=_plain) + "\n", encoding="utf-8")


def _plain(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON: {type(value)}")


def _finite(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def relative_to_data(path, data_root: Path) -> str:
    return Path(path).resolve().relative_to(data_root.resolve()).as_posix()


# ------------------------------------------------------------------------------------------------ build


def held_out_sets(name: str, recipe: Recipe, data_root: Path, work: Path) -> dict:
    """Manifests of the recipe's data set: train path, calibration cases and report cases, split by patient."""
    from .data.builders import BUILDERS
    from .data.manifest import read_manifest

    written = BUILDERS[DATASETS[recipe.dataset]["builder"]](data_root, work / "manifests")
    val = read_manifest(written["val"])
    if "test" in written:
        calibration, report = val, read_manifest(written["test"])
    else:
        calibration, report = split_by_patient(val)
    return {"train": written["train"], "calibration": pick_per_class(calibration, recipe.calibrate_per_class),
            "report": pick_per_class(report, recipe.report_per_class)}


def train(name: str, recipe: Recipe, sets: dict, work: Path, log=print) -> Path:
    """Fit the recipe into work/training.pt, resuming a stopped run; the budget counts every run's time."""
    from . import create
    from .checkpoint import read_checkpoint

    checkpoint = work / "training.pt"
    spent = 0.0
    if checkpoint.exists():
        state = read_checkpoint(checkpoint)["train_state"]
        spent = sum(record.get("seconds", 0.0) for record in state.get("history", []))
        spent += (state.get("partial") or {}).get("seconds", 0.0)  # an epoch stopped midway
        if state.get("finished") and (spent >= recipe.minutes * 60 - 30
                                      or state.get("epoch", 0) >= recipe.config.get("epochs", 1)):
            log(f"{name}: training already finished ({spent / 60:.1f} min)")
            return checkpoint
    model = create(name, seed=recipe.seed, **recipe.config)
    minutes = None if model.fitting == "statistics" else max(recipe.minutes - spent / 60, 0.1)
    log(f"{name}: training on {sets['train']} ({'statistics' if minutes is None else f'{minutes:.1f} min left'})")
    model.fit(sets["train"], val=sets["calibration"], checkpoint=checkpoint, minutes=minutes, progress=False)
    return checkpoint


def shipped_payload(checkpoint: Path, half: bool) -> dict:
    """The training checkpoint without its optimiser state; floating weights in half precision if `half`."""
    from .checkpoint import read_checkpoint, weights_digest

    payload = read_checkpoint(checkpoint)
    state = payload["state_dict"]
    if half:
        state = {k: v.half() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in state.items()}
    payload["state_dict"] = state
    payload["weights_sha256"] = weights_digest(state)
    payload["train_state"] = {**payload["train_state"], "optimizer": None}
    payload["model_version"] = f"{payload['model']}-v{payload['model_code_version']}-{payload['weights_sha256'][:12]}"
    return payload


def score_cases(model, cases: list) -> list[float]:
    from .base import as_items

    return [float(model.predict(item.image).score) for item in as_items(cases)]


def write_shipped(name: str, checkpoint: Path, subset: list, out: Path, log=print,
                  half_score_rtol: float | None = None) -> dict:
    """Write out/NAME.pt: half precision when the regression subset's scores stay within HALF_SCORE_RTOL."""
    from . import load
    from .checkpoint import atomic_torch_save

    full = load(checkpoint, device="cpu")
    reference = np.asarray(score_cases(full, subset))
    target = out / f"{name}.pt"
    trial = out / f".{name}.half.pt"
    atomic_torch_save(shipped_payload(checkpoint, half=True), trial)
    half_scores = np.asarray(score_cases(load(trial, device="cpu"), subset))
    change = float(np.max(np.abs(half_scores - reference) / np.maximum(np.abs(reference), 1e-12)))
    half = change <= (HALF_SCORE_RTOL if half_score_rtol is None else half_score_rtol)
    if half:
        trial.replace(target)
    else:
        trial.unlink()
        atomic_torch_save(shipped_payload(checkpoint, half=False), target)
    log(f"{name}: half precision moves subset scores by {change:.2e} relative -> shipped in "
        f"{'float16' if half else 'float32'}")
    size_mb = target.stat().st_size / 2**20
    if size_mb > MAX_FILE_MB:
        target.unlink()
        raise SystemExit(f"{name}: {size_mb:.1f} MB exceeds the {MAX_FILE_MB} MB limit of a shipped file")
    return {"precision": "float16" if half else "float32", "half_precision_score_change": change,
            "size_mb": round(size_mb, 2)}


def measure(name: str, sets: dict, out: Path, data_root: Path, subset_per_class: int,
            pixel_roi: str = "image", picture_shows_image: bool = True) -> dict:
    """Figures of the shipped file on the report set, its typical map, and the regression subset's scores."""
    from . import load, metrics
    from .base import as_items
    from .evaluation import evaluate
    from .visualize import save_overlay

    model = load(out / f"{name}.pt", device="cpu")
    report = sets["report"]
    summary = evaluate(model, report, None, progress=False)
    at = summary.get("at_threshold", {})
    figures = {
        "report_images": len(report), "n_normal": summary["n_normal"], "n_abnormal": summary["n_abnormal"],
        "image_auroc": _finite(summary["image_auroc"]), "image_auprc": _finite(summary["image_auprc"]),
        "pixel_auroc": _finite(summary.get("pixel_auroc")),
        "image_threshold": model.thresholds.get("image"), "pixel_threshold": model.thresholds.get("pixel"),
        "calibration": model.calibration.get("method"),
        "sensitivity_at_threshold": _finite(at.get("sensitivity")),
        "specificity_at_threshold": _finite(at.get("specificity")),
        "seconds_per_image": summary["seconds_per_image"],
    }
    if len(getattr(model, "classes", ())) > 2:  # a multi-class classifier: each class against the rest
        figures["class_auroc"] = class_aurocs(model, report)
    items = as_items(report)
    abnormal = [item for item in items if item.is_abnormal] or items
    scored = sorted(((model.predict(item.image), item) for item in abnormal), key=lambda pair: pair[0].score)
    result, item = scored[len(scored) // 2]  # the median abnormal image: a typical map, not the best one
    if pixel_roi == "map":
        outlined = [(r, i) for r, i in scored if getattr(i, "mask", None) is not None and np.any(i.mask)]
        figures["pixel_auroc"] = _finite(metrics.pixel_auroc(
            [np.asarray(i.mask) > 0 for _, i in outlined], [r.map for r, _ in outlined],
            roi=[r.map > 0 for r, _ in outlined])) if outlined else None
        figures["pixel_auroc_region"] = "inside the scored breast tiles of the abnormal images with lesion circles"
    background = item.image.array if picture_shows_image else np.zeros_like(item.image.array)
    save_overlay(out / f"{name}.png", background, result.map, result.mask, getattr(item, "mask", None),
                 title=f"{name}: typical abnormal image, score {result.score:.3g}",
                 display_range=model.stats.get("map_display_range"))
    subset = pick_per_class(report, subset_per_class)
    scores = score_cases(model, subset)
    labels = [int(case.is_abnormal) for case in subset]
    regression = {"images": [{"image": relative_to_data(case.image, data_root), "slice": case.slice,
                              "abnormal": bool(case.is_abnormal), "score": score}
                             for case, score in zip(subset, scores)],
                  "image_auroc": _finite(metrics.image_auroc(labels, scores)) if len(set(labels)) == 2 else None,
                  "tolerance": {"score_rtol": SCORE_RTOL, "auroc_abs": AUROC_TOL}}
    return {"figures": figures, "regression_subset": regression, "model_version": model.model_version}


def class_aurocs(model, cases: list) -> dict:
    """One-vs-rest AUROC of P(class) for each class (a multi-label case is positive for each of its classes)."""
    from . import metrics
    from .base import as_items

    probabilities = [model.predict(item.image).meta["class_probabilities"] for item in as_items(cases)]
    truth = [{name.lower() for name in case.label_names} for case in cases]
    return {name: _finite(metrics.image_auroc([name.lower() in names for names in truth],
                                              [p[name] for p in probabilities])) for name in model.classes}


def card_summary(card: dict) -> str:
    if not card["shipped"]:
        return f"not shipped: {card['reason']}"
    figures = card["figures"]
    auroc = figures.get("image_auroc")
    return (f"{card['training_data']['dataset']}; image AUROC {auroc:.3f} on {figures['report_images']} held-out "
            f"images" + ("" if figures.get("pixel_auroc") is None else f", pixel AUROC {figures['pixel_auroc']:.3f}")
            + f"; {', '.join(card['modalities'] or ['any modality'])}")


def write_card(card: dict, out: Path) -> None:
    card["summary"] = card_summary(card)
    _write_json(out / f"{card['name']}.card.json", card)
    from .atomic import atomic_destination

    with atomic_destination(out / f"{card['name']}.card.md") as temporary:
        Path(temporary).write_text(render_markdown(card), encoding="utf-8")


def render_markdown(card: dict) -> str:
    lines = [f"# {card['name']}", "", card["description"], "", f"**{card['summary']}**", ""]
    if not card["shipped"]:
        return "\n".join(lines) + "\n"
    data, recipe, figures = card["training_data"], card["recipe"], card["figures"]
    lines += ["## Training data", f"- {data['dataset']}: {data['what']}", f"- Licence: {data['licence']}",
              f"- {data['train_images']} training images; figures on {data['report']}, split by {data['unit']}", "",
              "## Recipe", f"- `{recipe['command']}`", f"- config: `{json.dumps(recipe['config'])}`",
              f"- budget {recipe['budget_minutes']} min, seed {recipe['seed']}, built {card['built_at']}; "
              + (f"fitted in one pass over the training images in {recipe['train_seconds']:.0f} s"
                 if recipe["fitting"] == "statistics" else f"{recipe['train_seconds']:.0f} s of training, "
                 f"{recipe['epochs_completed']} complete epochs, {recipe['samples_seen']} samples"),
              f"- file `{card['file']}` ({card['size_mb']} MB, {card['precision']}), sha256 `{card['sha256']}`",
              f"- model version `{card['model_version']}`", "", "## Figures (held-out)"]
    lines += [f"- {key}: {value:.4g}" if isinstance(value, float) else f"- {key}: {value}"
              for key, value in figures.items()]
    lines += ["", "## Known failure modes"] + [f"- {mode}" for mode in card["failure_modes"]]
    lines += ["", "## A typical map", f"![typical map]({card['picture']})", "",
              f"Regression subset ({len(card['regression_subset']['images'])} images) re-scored by "
              f"tests/models/test_zoo.py within a relative {SCORE_RTOL} per score."]
    return "\n".join(lines) + "\n"


def build(name: str, data_root: Path, out: Path, work_root: Path = DEFAULT_WORK, log=print) -> dict:
    from . import model_class

    if name not in RECIPES:
        raise SystemExit(f"no recipe for {name!r}; recipes: {sorted(RECIPES)}")
    recipe = RECIPES[name]
    work = work_root / name
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe.seed)
    started = time.time()
    sets = held_out_sets(name, recipe, data_root, work)
    checkpoint = train(name, recipe, sets, work, log)
    subset = pick_per_class(sets["report"], recipe.subset_per_class)
    stored = write_shipped(name, checkpoint, subset, out, log, recipe.half_score_rtol)
    measured = measure(name, sets, out, data_root, recipe.subset_per_class, recipe.pixel_roi,
                       recipe.picture_shows_image)
    if recipe.extra_figures:
        import importlib

        from . import load

        module, function = recipe.extra_figures.split(":")
        measured["figures"].update(getattr(importlib.import_module(module), function)(
            load(out / f"{name}.pt", device="cpu"), sets["report"]))
    from .checkpoint import read_checkpoint
    from .data.manifest import read_manifest

    state = read_checkpoint(checkpoint)["train_state"]
    history, partial = state.get("history", []), state.get("partial") or {}
    cls = model_class(name)
    dataset = DATASETS[recipe.dataset]
    card = {
        "name": name, "shipped": True, "description": cls.description,
        "modalities": list(cls.modalities) if cls.modalities else None,
        "body_parts": list(cls.body_parts) if cls.body_parts else None,
        "training_data": {"dataset": recipe.dataset, "what": dataset["what"], "licence": dataset["licence"],
                          "train_images": len(read_manifest(sets["train"])), "unit": dataset["unit"],
                          "report": dataset["report"], "calibration_images": len(sets["calibration"])},
        "recipe": {"command": f"python -m medanomaly zoo build {name} --data ../shared/data",
                   "config": recipe.config, "budget_minutes": recipe.minutes, "seed": recipe.seed,
                   "train_seconds": round(sum(r.get("seconds", 0.0) for r in history) + partial.get("seconds", 0.0), 1),
                   "epochs_completed": len([r for r in history if r.get("complete", True)]),
                   "fitting": cls.fitting,  # "statistics": one pass over the training images
                   "samples_seen": sum(r.get("samples", 0) for r in history) + partial.get("samples", 0)},
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "file": f"{name}.pt", "sha256": file_sha256(out / f"{name}.pt"), **stored,
        "model_version": measured["model_version"], "figures": measured["figures"],
        "regression_subset": measured["regression_subset"], "failure_modes": list(recipe.failure_modes),
        "picture": f"{name}.png", "build_seconds": round(time.time() - started, 1),
    }
    write_card(card, out)
    check_total_size(out)
    log(f"{name}: shipped {card['summary']}")
    return card


def check_total_size(out: Path) -> None:
    total = sum(p.stat().st_size for p in out.glob("*.pt")) / 2**20
    if total > MAX_TOTAL_MB:
        raise SystemExit(f"shipped checkpoints total {total:.1f} MB, over the {MAX_TOTAL_MB} MB limit")


def write_missing_cards(out: Path) -> list[str]:
    """A 'not shipped' card for every registered model without a shipped file; the shipped cards' texts (failure
    modes, summary, markdown) are rewritten from the recipes, their measured figures and hash untouched."""
    from . import list_models, model_class

    written = []
    for name in list_models():
        if (out / f"{name}.pt").exists():
            card = read_card(out, name)
            if card and card.get("shipped") and name in RECIPES:
                recipe = {"fitting": model_class(name).fitting, "epochs_completed": card["recipe"].get("epochs"),
                          "samples_seen": None, **card["recipe"]}
                write_card({**card, "recipe": recipe, "failure_modes": list(RECIPES[name].failure_modes)}, out)
            continue
        cls = model_class(name)
        reason = NOT_SHIPPED.get(name) or (
            f"its recipe did not run within this release's CPU time: build it with `python -m medanomaly zoo build "
            f"{name}` or train it with POST /train/{name}")
        write_card({"name": name, "shipped": False, "reason": reason, "description": cls.description,
                    "modalities": list(cls.modalities) if cls.modalities else None,
                    "body_parts": list(cls.body_parts) if cls.body_parts else None}, out)
        written.append(name)
    return written


def read_card(folder: Path, name: str) -> dict | None:
    try:
        return json.loads((Path(folder) / f"{name}.card.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
