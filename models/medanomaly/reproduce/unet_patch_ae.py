"""The pneumonia paper: a U-Net trained as an autoencoder of 32 px patches lying wholly inside the lung field of
normal chest films, under a Dice loss on intensities; a test film is scanned at stride 20 and each patch's SAD
(mean |input - output|) gives a histogram of patch kinds and a localisation map; a small CNN with Grad-CAM is the
supervised baseline. Run on the Kermany paediatric films, split by patient:

- training normals of the training patients -> the patch autoencoder (the paper's max-pool / nearest-upsampling
  U-Net, `architecture="maxpool_nearest"`); all training films -> the CNN;
- the validation patients halved by patient: one half fits the two SAD thresholds of the patch-kind
  classification, the other half is where every figure is measured (film AUROC, patch kinds, maps, CNN).

Trainings are cached in `run.work` (a rerun loads them, an interrupted one resumes)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import create
from ..data import BUILDERS, load_case, read_manifest
from ..inferers.patches import grid_corners
from ..metrics import image_auprc, image_auroc
from ..patch_figures import patch_boxes_figure, patch_pairs_figure, sad_histogram_figure, sad_maps_figure
from ..pneumonia_eval import (
    PATCH_KINDS,
    balanced_accuracy,
    count_peaks,
    evaluate_classifier,
    film_aurocs,
    fit_kind_thresholds,
    kind_confusion,
    patch_kinds,
    patch_pixels,
    pooled_sad,
    scan_films,
)
from ..zoo import pick_per_class, split_by_patient
from . import Paper, Run, Versus, cached_fit

# The protocol as the project's method description gives it (README, methods/unet_patch_ae.py).
PAPER_IMAGE_SIZE, PAPER_PATCH_SIZE, PAPER_STRIDE, PAPER_PATCHES_PER_FILM = 256, 32, 20, 420
# Reported results of the paper (AUROCs, accuracies, patch-kind separation): none could be found with the search
# tools available here, so every such cell carries None on the paper's side.
PAPER_RESULT = None
SAD_SCORES = {"lung_mean": "mean SAD, lung patches", "lung_max": "max SAD, lung patches",
              "all_mean": "mean SAD, all patches", "all_max": "max SAD, all patches"}


@dataclass
class Budget:
    train_films: int  # training normals for the patch autoencoder (0: all)
    epochs: int
    minutes: float | None
    channels: list
    image_size: int
    calibration_per_class: int  # films per class that fit the patch-kind thresholds (0: all)
    test_per_class: int  # films per class where the figures are measured (0: all)
    cnn_per_class: int  # training films per class for the CNN (0: all)
    cnn_epochs: int
    cnn_minutes: float | None
    cnn_config: dict = field(default_factory=dict)
    patches_per_visit: int = 32  # lung patches drawn per film visit; a batch of 64 then holds 64 // this films


BUDGETS = {
    "smoke": Budget(train_films=4, epochs=1, minutes=0.5, channels=[4, 8, 16], image_size=256,
                    calibration_per_class=3, test_per_class=3, cnn_per_class=4, cnn_epochs=1, cnn_minutes=0.5,
                    cnn_config={"image_size": 64, "channels": [4, 8, 8], "hidden": 8}),
    "quick": Budget(train_films=250, epochs=10, minutes=6.0, channels=[8, 16, 32], image_size=256,
                    calibration_per_class=20, test_per_class=60, cnn_per_class=120, cnn_epochs=4, cnn_minutes=2.5,
                    patches_per_visit=8),
    "full": Budget(train_films=0, epochs=10, minutes=None, channels=[16, 32, 64], image_size=256,
                   calibration_per_class=0, test_per_class=0, cnn_per_class=0, cnn_epochs=10, cnn_minutes=None,
                   patches_per_visit=64),
}


def _sample(cases: list, count: int) -> list:
    """A fixed choice of `count` cases (all when count is 0), the same on every run."""
    if not count or count >= len(cases):
        return list(cases)
    return pick_per_class(cases, count) if any(c.is_abnormal for c in cases) else \
        sorted(cases, key=lambda c: str(c.image))[::max(1, len(cases) // count)][:count]


def _trained(run: Run, name: str, tag: str, config: dict, train, val, minutes, prepare=None):
    """The model trained into run.work/TAG.pt, or loaded from there when an earlier run finished it. `prepare(model)`
    runs before training (not counted in the `minutes` budget)."""
    def make_model():
        model = create(name, **config)
        if prepare is not None:
            prepare(model)
        return model

    model, history, _ = cached_fit(run.work / f"{tag}.pt", make_model, train, val, device=run.device, minutes=minutes)
    return model, history


def _segment_once(model, cases) -> None:
    """Find the lung field of every training film once, before the training clock starts: the segmenter remembers
    the masks, so the epochs (run in this process, num_workers=0) only cut patches."""
    for case in cases:
        model.segmenter(load_case(case).image.array)


def _data(run: Run, budget: Budget) -> dict:
    written = BUILDERS["kermany"](run.data, run.work / "manifests")
    calibration, report = split_by_patient(read_manifest(written["val"]))
    return {"train": _sample(read_manifest(written["train"]), budget.train_films),
            "train_all": _sample(read_manifest(written["train_all"]), budget.cnn_per_class),
            "calibration": _sample(calibration, budget.calibration_per_class),
            "test": _sample(report, budget.test_per_class)}


def reproduce(run: Run) -> None:
    budget = BUDGETS[run.budget]
    report = run.report
    sets = _data(run, budget)
    fit_val = pick_per_class(sets["calibration"], 5)

    ae_config = {"architecture": "maxpool_nearest", "channels": budget.channels, "image_size": budget.image_size,
                 "epochs": budget.epochs, "train_patches_per_visit": budget.patches_per_visit,
                 "num_workers": 0, "seed": run.seed, "device": str(run.device)}
    ae, ae_history = _trained(run, "unet-patch-ae", "unet_patch_ae", ae_config, sets["train"], fit_val,
                              budget.minutes, prepare=lambda model: _segment_once(model, sets["train"]))
    calibration = scan_films(ae, sets["calibration"])
    test = scan_films(ae, sets["test"])

    _protocol_table(report, ae, ae_history, sets)
    cnn_eval, cnn_history = _cnn(run, budget, sets, fit_val)
    _film_table(report, test, cnn_eval)
    thresholds = _patch_level(report, calibration, test)
    _figures(report, ae, test, thresholds, cnn_eval)
    _deviations(report, budget, ae, ae_history, cnn_history, sets)


def _protocol_table(report, ae, history, sets) -> None:
    size, patch, stride = (int(ae.config[k]) for k in ("image_size", "patch_size", "stride"))
    done = [h for h in history if h.get("complete", True)]
    report.table("Protocol", ["quantity", "ours (paper)"], [
        ["film side, pixels", _versus(size, PAPER_IMAGE_SIZE)],
        ["patch side, pixels", _versus(patch, PAPER_PATCH_SIZE)],
        ["scan stride, pixels", _versus(stride, PAPER_STRIDE)],
        ["patches per film at test time", _versus(len(grid_corners((size, size), patch, stride)),
                                                   PAPER_PATCHES_PER_FILM)],
        ["training normal films", _versus(len(sets["train"]))],
        ["lung patches seen in training", _versus(int(sum(h.get("samples", 0) for h in history)))],
        ["complete epochs", _versus(len(done))],
        ["last training loss (-ln Dice)", _versus(float(history[-1]["loss"]) if history else None)],
        ["held-out films (normal / pneumonia)", f"{sum(not c.is_abnormal for c in sets['test'])} / "
                                                 f"{sum(c.is_abnormal for c in sets['test'])}"],
    ], note="Our figure first, the paper's in brackets. Patch count: a border-aligned square grid at stride 20 on "
            "a 256² film has 13 × 13 = 169 patches; 420 is not a square number, so no square grid gives it.")


def _versus(ours, paper=PAPER_RESULT) -> Versus:
    return Versus(ours, paper)


def _cnn(run: Run, budget: Budget, sets: dict, fit_val):
    config = {"epochs": budget.cnn_epochs, "seed": run.seed, "device": str(run.device), "num_workers": 0,
              **budget.cnn_config}
    cnn, history = _trained(run, "pneumonia-cnn", "pneumonia_cnn", config, sets["train_all"], fit_val,
                            budget.cnn_minutes)
    return evaluate_classifier(cnn, sets["test"]), history


def _film_table(report, test, cnn_eval) -> None:
    labels = [int(s.case.is_abnormal) for s in test]
    aurocs = film_aurocs(test)
    seconds = float(np.mean([s.seconds for s in test]))
    rows = [["unet-patch-ae", SAD_SCORES[name], _versus(aurocs[name]),
             image_auprc(labels, [s.scores[name] for s in test]), seconds] for name in SAD_SCORES]
    rows.append(["pneumonia-cnn (Grad-CAM)", "P(pneumonia)", _versus(cnn_eval.auroc),
                 image_auprc(cnn_eval.labels, cnn_eval.scores), float(np.mean(cnn_eval.seconds))])
    report.table("Film level: normal vs pneumonia on held-out patients",
                 ["method", "film score", "image AUROC", "image AUPRC", "seconds per film"], rows,
                 note=f"CNN at its arg-max class: accuracy {cnn_eval.accuracy:.3f}, balanced accuracy "
                      f"{cnn_eval.balanced_accuracy:.3f}. The autoencoder's seconds include the lung segmentation. "
                      "An AUROC below 0.5 ranks pneumonia films as more normal; no score's sign was flipped.")


def _patch_level(report, calibration, test):
    cal_sad, cal_kinds, _, _ = patch_kinds(calibration)
    sad, kinds, _, _ = patch_kinds(test)
    thresholds = fit_kind_thresholds(cal_sad, cal_kinds)
    given = thresholds.classify(sad)
    confusion = kind_confusion(kinds, given)
    report.table("Patch level: SAD of the three patch kinds (held-out films)",
                 ["patch kind", "patches", "median SAD", "SAD 5th–95th percentile", "recall at the SAD thresholds"],
                 [[name, int(np.sum(kinds == k)), float(np.median(sad[kinds == k])) if np.any(kinds == k) else None,
                   _percentiles(sad[kinds == k]), _versus(float(confusion[k, k]) if np.any(kinds == k) else None)]
                  for k, name in enumerate(PATCH_KINDS)],
                 note=f"Thresholds fitted on the calibration films' patches (best balanced accuracy over every "
                      f"order of the kinds): SAD < {thresholds.low:.4f} → {PATCH_KINDS[thresholds.order[0]]}; "
                      f"up to {thresholds.high:.4f} → {PATCH_KINDS[thresholds.order[1]]}; above → "
                      f"{PATCH_KINDS[thresholds.order[2]]}.", digits=4)
    report.table("Patch level: which kind the SAD thresholds give (rows: true kind; fractions of the row)",
                 ["true kind", *[f"→ {name}" for name in PATCH_KINDS]],
                 [[name, *[float(v) for v in confusion[k]]] for k, name in enumerate(PATCH_KINDS)])
    lung_normal, lung_pneumonia = pooled_sad(test, False), pooled_sad(test, True)
    patch_auroc = image_auroc(np.r_[np.zeros(len(lung_normal)), np.ones(len(lung_pneumonia))],
                              np.r_[lung_normal, lung_pneumonia]) if len(lung_normal) and len(lung_pneumonia) \
        else float("nan")
    peaks_lung = count_peaks(np.r_[lung_normal, lung_pneumonia])
    peaks_kinds = count_peaks(sad)
    report.table("Patch level: does the SAD separate the patch kinds?", ["figure", "ours (paper)"], [
        ["peaks in the SAD density of the three kinds pooled", _versus(peaks_kinds)],
        ["peaks in the SAD density of the lung patches pooled", _versus(peaks_lung)],
        ["balanced accuracy of the three-kind SAD thresholds", _versus(balanced_accuracy(kinds, given))],
        ["patch AUROC: lung patches, pneumonia vs normal films", _versus(patch_auroc)],
    ], note="Peaks: local maxima of a Gaussian kernel density (Scott's bandwidth) above 5 % of its top. Chance "
            "balanced accuracy for three kinds is 0.333.")
    recall = {name: float(confusion[k, k]) for k, name in enumerate(PATCH_KINDS) if np.any(kinds == k)}
    share = float(np.mean(kinds == 2)) if len(kinds) else 0.0
    verdict = f"{peaks_kinds} local maxima, which need not be the three kinds (outside-the-lung patches are " \
        f"{share:.0%} of the pooled patches)" if peaks_kinds >= 3 else \
        f"{peaks_kinds} peak{'s' if peaks_kinds != 1 else ''}, not three"
    report.text(f"**Finding.** The SAD density of the held-out patches, the three kinds pooled, has {verdict}; the lung "
                f"patches alone give {peaks_lung} peak{'s' if peaks_lung != 1 else ''}. Two SAD thresholds give each "
                f"kind its own label for {balanced_accuracy(kinds, given):.0%} of its patches on average (chance "
                "33 %; per kind: " + ", ".join(f"{name} {value:.0%}" for name, value in recall.items()) + "). "
                f"Lung patches of pneumonia films against those of normal films: patch AUROC {patch_auroc:.3f} "
                "(0.5 is chance; below 0.5 the pneumonia films' lung patches are reconstructed *better*).")
    return thresholds


def _percentiles(values) -> str:
    if not len(values):
        return "—"
    low, high = np.percentile(values, [5, 95])
    return f"{low:.4f}–{high:.4f}"


def _figures(report, ae, test, thresholds, cnn_eval) -> None:
    sad, kinds, films, places = patch_kinds(test)
    report.figure("sad_histogram_kinds", sad_histogram_figure(
        {name: sad[kinds == k] for k, name in enumerate(PATCH_KINDS)}, title="Patch SAD by kind, held-out films",
        thresholds=(thresholds.low, thresholds.high)),
        "SAD histogram of the three patch kinds on the held-out films; dashed: the two thresholds fitted on the "
        "calibration films.")
    report.figure("sad_histogram_lung", sad_histogram_figure(
        {"normal films": pooled_sad(test, False), "pneumonia films": pooled_sad(test, True)},
        title="Lung-patch SAD, held-out films"), "SAD of the lung patches of normal and pneumonia films.")

    # The paper's input/output figures: the patch at the median SAD of each kind, and the pneumonia film's lung
    # patch of highest SAD, beside the network's output, with both pixel histograms.
    chosen, names = [], []
    for k, name in enumerate(PATCH_KINDS):
        members = np.flatnonzero(kinds == k)
        if len(members):
            chosen.append(members[np.argsort(sad[members])[len(members) // 2]])
            names.append(f"{name}, median")
    pneumonia_lung = np.flatnonzero(kinds == 1)
    if len(pneumonia_lung):
        chosen.append(pneumonia_lung[np.argmax(sad[pneumonia_lung])])
        names.append("pneumonia lung, top SAD")
    inputs = np.stack([patch_pixels(test, int(films[i]), int(places[i])) for i in chosen])
    report.figure("patch_input_output", patch_pairs_figure(inputs, ae.reconstruct(inputs), names),
                  "Patches beside the autoencoder's output, with the pixel histograms of both (the paper's "
                  "input/output figures). The Dice loss on intensities pushes the output towards a contrast-stretched "
                  "copy of the patch.")

    shown = [s for s in test if not s.case.is_abnormal][:2] + [s for s in test if s.case.is_abnormal][:2]
    report.figure("sad_maps", sad_maps_figure(
        [s.film for s in shown], [s.sad_map for s in shown], [s.lung for s in shown],
        [f"{'pneumonia' if s.case.is_abnormal else 'normal'}: lung mean {s.scores['lung_mean']:.3f}" for s in shown]),
        "Localisation: each patch's SAD painted over it (stride 20, overlaps averaged), one colour scale; cyan: "
        "the lung field.")
    sick = next((s for s in test if s.case.is_abnormal), None)
    if sick is not None:
        pneumonia_range = [j for j, kind in enumerate(thresholds.order) if kind == 1][0]
        edges = [-np.inf, thresholds.low, thresholds.high, np.inf]
        report.figure("patch_boxes", patch_boxes_figure(
            sick.film, sick.scan.corners, sick.scan.sad, ae.config["patch_size"], sick.scan.info,
            edges[pneumonia_range], edges[pneumonia_range + 1], lung=sick.lung,
            title="patches the thresholds call 'pneumonia film, lung'"),
            "A held-out pneumonia film with a box on every patch whose SAD lies in the range the thresholds give "
            "to pneumonia lung patches.")
    picks = [k for k in range(len(cnn_eval.labels)) if cnn_eval.labels[k] == 0][:2] + \
        [k for k in range(len(cnn_eval.labels)) if cnn_eval.labels[k] == 1][:2]
    report.figure("gradcam", sad_maps_figure(
        [cnn_eval.films[k] for k in picks], [cnn_eval.results[k].map for k in picks], [None] * len(picks),
        [f"{'pneumonia' if cnn_eval.labels[k] else 'normal'}: P {cnn_eval.scores[k]:.2f}" for k in picks]),
        "The CNN baseline's Grad-CAM on the same held-out films (P: its probability of pneumonia).")


def _deviations(report, budget: Budget, ae, ae_history, cnn_history, sets) -> None:
    done = sum(1 for h in ae_history if h.get("complete", True))
    report.deviation("Reported figures: the paper's numbers (AUROC, accuracies, patch-kind separation) could not be "
                     "found with the search tools available offline (queries on the U-Net patch autoencoder, "
                     "pneumonia, SAD and lung patches returned other papers), so the paper's side of every result "
                     "cell is empty. The protocol figures (256² film, 32 px patches, stride 20, 420 patches) are the "
                     "paper's as the project's method description records them.")
    report.deviation("Data: the shared Kermany copy (224 × 224 JPEG, squashed and re-compressed), upsampled to "
                     f"{int(ae.config['image_size'])}²; the copy has no official test split, so the validation "
                     "patients (20 % of patients, split by patient_key, stratified by pneumonia) are halved by "
                     "patient: one half fits the patch-kind thresholds, the other is where every figure is measured.")
    report.deviation(f"Films: {len(sets['train'])} training normals for the autoencoder, "
                     f"{len(sets['train_all'])} training films for the CNN, {len(sets['calibration'])} calibration "
                     f"and {len(sets['test'])} held-out films (a fixed choice per class when capped by the budget).")
    report.deviation(f"Training on a CPU: {done} complete epoch(s) of at most {budget.epochs}, "
                     f"{'no time cap' if budget.minutes is None else f'capped at {budget.minutes:g} min of wall time'} "
                     "(lung fields found once before the clock starts); each "
                     f"visit of a film draws up to {budget.patches_per_visit} of its lung patches at random (not every "
                     "patch every epoch). The paper's number of epochs is not known here.")
    report.deviation(f"Network: the paper's U-Net shape (two 3×3 convs per level, max-pooling, nearest-neighbour "
                     f"upsampling, skip connections, sigmoid output) built from MONAI BasicUNet's blocks at a "
                     f"32 → 8 px bottleneck, widths {list(ae.config['channels'])}, batch norm and leaky ReLU (MONAI's "
                     "choices); the paper's widths and normalisation are not known here. MONAI's BasicUNet itself has "
                     "a fixed depth of four poolings (2 px bottleneck for a 32 px patch) and interpolates bilinearly.")
    report.deviation("Patch grid: the test scan is a 13 × 13 border-aligned grid (169 patches on a 256² film), not "
                     "the paper's 420 patches per film.")
    report.deviation("Lung segmentation: a classical, offline segmenter (dark basins walled in by the thorax, the "
                     "largest per side, convex hull) instead of the paper's trained segmentation network, whose "
                     "weights cannot be downloaded here.")
    report.deviation("Patch kinds: the paper's definition of its three kinds is not available here; ours are lung "
                     "patches of normal films, lung patches of pneumonia films and film patches wholly outside the "
                     "lung field. Kermany has image labels only, so not every lung patch of a pneumonia film holds an "
                     "opacity, and no pixel-level localisation figure can be measured. The two SAD thresholds are our "
                     "rule: the pair (and order of kinds) with the best balanced accuracy on the calibration films.")
    cnn_epochs = sum(1 for h in cnn_history if h.get("complete", True))
    report.deviation(f"CNN baseline: pneumonia-cnn (3 conv + max-pool, batch norm, FC, dropout 0.5, FC, "
                     f"class-balanced loss) on {len(sets['train_all'])} films of the training patients, {cnn_epochs} "
                     f"epoch(s) on a CPU; scored on the same held-out films as the autoencoder.")
    report.deviation("Film scores: the paper gives no film-level rule here; all four SAD summaries (mean/max over "
                     "lung patches or all patches) are reported, none chosen after seeing the results.")


PAPER = Paper(
    name="unet-patch-ae",
    title="U-Net patch autoencoder for pneumonia in chest X-rays (lung-patch SAD), with a CNN + Grad-CAM baseline",
    citation="The pneumonia paper behind MedAnomaly's unet-patch-ae and pneumonia-cnn (a U-Net autoencoder of 32 px "
             "lung patches under a Dice loss, SAD histograms of patch kinds; a small CNN with Grad-CAM as baseline); "
             "data: Kermany et al. 2018, doi:10.17632/rscbjbr9sj.2 (CC BY 4.0)",
    reproduce=reproduce,
)
