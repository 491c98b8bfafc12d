"""Manifest builders: turn each public data set's own layout into train/val(/test) manifests.

Every builder is `build_<name>(data_root, out_dir, ...) -> {split: csv path}`. `data_root` is the folder that
holds the data sets (`kermany_cxr/`, `mini_mias/`, ...); a data set's own folder is accepted too where that is
unambiguous. Builders are deterministic: patients are split by a salted SHA-256 of their key, so a patient's
split does not depend on row order or on which other patients exist, and splits never share a patient.
"""
from __future__ import annotations

import csv
import hashlib
import os
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import ManifestError
from .manifest import write_manifest

DEFAULT_SEED = 0
NIH_CLASSES = ("No Finding", "Cardiomegaly", "Pneumothorax", "Effusion")
BRATS_SEQUENCES = ("Flair", "T1c")
# In-distribution films for the out-of-distribution screen.
CHEST_FILM_MODALITIES = {"CR", "DX"}
CHEST_BODY_PARTS = {"CHEST", "THORAX", "LUNG"}
DICOM_SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def default_data_root() -> Path:
    """$MEDANOMALY_DATA, else the `shared/data` folder beside the project root."""
    env = os.environ.get("MEDANOMALY_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[3].parent / "shared" / "data"


# ---------------------------------------------------------------------------------------------- helpers


def _require(path: Path, what: str = "") -> Path:
    if not path.exists():
        raise ManifestError(f"missing {what + ' ' if what else ''}{path}")
    return path


def _dataset_dir(data_root, folder: str, marker: str) -> Path:
    """`data_root/folder`, or `data_root` itself when it already is that data set (holds `marker`)."""
    root = (Path(data_root) if data_root is not None else default_data_root()).resolve()  # rows must not depend on the cwd
    if (root / folder / marker).exists() or not (root / marker).exists():
        return _require(root / folder, "data set folder")
    return root


def _unit_hash(key: str, seed: int) -> float:
    """A number in [0, 1) fixed by (seed, key): order-free and stable across runs and machines."""
    digest = hashlib.sha256(f"{seed}:{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_groups(strata: dict, fractions: dict, seed: int = DEFAULT_SEED) -> dict:
    """Assign every group key to a split.

    `strata` maps a stratum name to the group keys in it (e.g. patients with / without disease), so each
    split gets its share of each stratum. `fractions` maps the held-out split names to fractions, in order
    (e.g. {"val": 0.2, "test": 0.2}); the rest is "train". Inside a stratum keys are ordered by their hash and
    the first round(fraction * n) go to the first held-out split, and so on.
    """
    assignment = {}
    for keys in strata.values():
        ordered = sorted(set(keys), key=lambda k: (_unit_hash(str(k), seed), str(k)))
        start = 0
        for split, fraction in fractions.items():
            count = int(round(fraction * len(ordered)))
            for key in ordered[start : start + count]:
                assignment[key] = split
            start += count
        for key in ordered[start:]:
            assignment[key] = "train"
    return assignment


def _cap_per_class(rows: list, max_per_class: int | None, seed: int) -> list:
    """Keep at most `max_per_class` rows of each label, chosen by hash of the image path; keeps row order."""
    if not max_per_class:
        return rows
    by_label = defaultdict(list)
    for row in rows:
        by_label[str(row["label"])].append(row)
    keep = set()
    for group in by_label.values():
        chosen = sorted(group, key=lambda r: _unit_hash(str(r["image"]), seed))[:max_per_class]
        keep.update(id(r) for r in chosen)
    return [row for row in rows if id(row) in keep]


def _assert_disjoint(splits: dict, key: str = "patient") -> None:
    """No group key may appear in two different held-apart splits (train_all overlaps train by design)."""
    owner = {}
    for split, rows in splits.items():
        for row in rows:
            other = owner.setdefault(row[key], split)
            if other != split:
                raise AssertionError(f"{key} {row[key]} is in both {other} and {split}")


def _write_all(out_dir, manifests: dict) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return {name: write_manifest(rows, out_dir / f"{name}.csv") for name, rows in manifests.items()}


def _read_csv(path: Path) -> list[dict]:
    with open(_require(path, "label file"), newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _check_images_exist(rows: list, what: str) -> None:
    missing = [row["image"] for row in rows if not Path(row["image"]).exists()]
    if missing:
        raise ManifestError(f"{len(missing)} {what} image(s) missing, e.g. {missing[0]}")


# ---------------------------------------------------------------------------------------------- Kermany


def build_kermany(data_root, out_dir, val_fraction: float = 0.2, max_per_class: int | None = None,
                  seed: int = DEFAULT_SEED) -> dict:
    """Paediatric chest films, normal vs pneumonia (kermany_cxr/labels.csv).

    Patients (`patient_key`) are split into train / val, stratified by whether the patient has pneumonia.
    train.csv: normal films of train patients (what an anomaly model learns from);
    val.csv: normal and pneumonia films of val patients; train_all.csv: all films of train patients, for
    supervised classifiers. `max_per_class` caps each label in each file (chosen by hash, for fast runs).
    """
    root = _dataset_dir(data_root, "kermany_cxr", "labels.csv")
    source = _read_csv(root / "labels.csv")
    rows = [
        {
            "image": root / r["path"],
            "label": int(r["label"]),
            "patient": r["patient_key"],
            "subtype": r["subtype"],
        }
        for r in source
    ]
    _check_images_exist(rows, "kermany_cxr")

    sick_patients = {r["patient"] for r in rows if r["label"] == 1}
    strata = {"pneumonia": sick_patients, "normal": {r["patient"] for r in rows} - sick_patients}
    split_of = split_groups(strata, {"val": val_fraction}, seed)

    train_all = [r for r in rows if split_of[r["patient"]] == "train"]
    val = [r for r in rows if split_of[r["patient"]] == "val"]
    train = [r for r in train_all if r["label"] == 0]
    _assert_disjoint({"train": train_all, "val": val})

    manifests = {
        "train": _cap_per_class(train, max_per_class, seed),
        "val": _cap_per_class(val, max_per_class, seed),
        "train_all": _cap_per_class(train_all, max_per_class, seed),
    }
    return _write_all(out_dir, manifests)


# ---------------------------------------------------------------------------------------------- mini-MIAS


def _mias_woman(refnum: str) -> str:
    """mdb(2k-1) and mdb(2k) are the two breasts of woman k."""
    number = int(re.sub(r"\D", "", refnum))
    return f"woman{(number + 1) // 2:03d}"


def build_mini_mias(data_root, out_dir, val_fraction: float = 0.2, test_fraction: float = 0.2,
                    seed: int = DEFAULT_SEED) -> dict:
    """Mammograms (mini_mias/images/mdbNNN.png, annotations.csv), split by woman.

    train.csv: normal images of train women. val.csv and test.csv: normal and abnormal images of held-out
    women, with lesion circles (x, y_top_origin, radius) where the annotation gives them; an abnormal image
    without coordinates (e.g. ARCH/ASYM, mdb059) has label 1 and no circle. test.csv exists so that a
    threshold chosen on val can be reported on unseen women; `test_fraction=0` folds it away.
    Splits are stratified by whether the woman has an abnormal breast.
    """
    root = _dataset_dir(data_root, "mini_mias", "annotations.csv")
    _require(root / "images", "image folder")
    by_image = defaultdict(list)
    for annotation in _read_csv(root / "annotations.csv"):
        by_image[annotation["refnum"].strip()].append(annotation)

    rows = []
    for refnum in sorted(by_image):
        annotations = by_image[refnum]
        lesions = [a for a in annotations if a["abnormality"].strip().upper() != "NORM"]
        circles = [
            (float(a["x"]), float(a["y_top_origin"]), float(a["radius"]))
            for a in lesions
            if a["x"].strip() and a["y_top_origin"].strip() and a["radius"].strip()
        ]
        rows.append({
            "image": root / "images" / f"{refnum}.png",
            "label": 1 if lesions else 0,
            "circle": circles,
            "patient": _mias_woman(refnum),
            "abnormality": "|".join(a["abnormality"].strip() for a in lesions) or "NORM",
            "severity": "|".join(a["severity"].strip() for a in lesions),
            "background": annotations[0]["background"].strip(),
        })
    _check_images_exist(rows, "mini_mias")

    affected = {r["patient"] for r in rows if r["label"] == 1}
    strata = {"abnormal": affected, "normal": {r["patient"] for r in rows} - affected}
    held_out = {"val": val_fraction}
    if test_fraction:
        held_out["test"] = test_fraction
    split_of = split_groups(strata, held_out, seed)

    manifests = {"train": [r for r in rows if split_of[r["patient"]] == "train" and r["label"] == 0]}
    for split in held_out:
        manifests[split] = [r for r in rows if split_of[r["patient"]] == split]
    _assert_disjoint(manifests)
    return _write_all(out_dir, manifests)


# ---------------------------------------------------------------------------------------------- NIH


def _nih_classes(finding_labels: str) -> list[str]:
    return [name for name in (f.strip() for f in finding_labels.split("|")) if name in NIH_CLASSES]


def build_nih(data_root, out_dir, val_fraction: float = 0.2, strict_single_finding: bool = False,
              seed: int = DEFAULT_SEED) -> dict:
    """Adult chest films (nih_cxr14/images_512, labels.csv, bboxes.csv) for the 4-class classifier.

    train.csv: images with exactly one of No Finding / Cardiomegaly / Pneumothorax / Effusion, label = that
    class name (other NIH findings such as Infiltration may co-occur; `strict_single_finding=True` keeps only
    images whose sole NIH finding is the class, which leaves very few Effusion films).
    val.csv: images with at least one of the 4 classes, label = those names joined by "|", `box` = the NIH
    boxes of those classes in 512-pixel coordinates, `findings` = all NIH findings.
    Split by Patient ID. Patients with an image train.csv cannot use (two of the 4 classes) or with a box
    (the only pixel ground truth) go to val; the others are split stratified by class.
    Note: the header's "OriginalImage[Width,Height]" is split by every CSV parser into two columns
    ("OriginalImage[Width", "Height]"), matching the two values in each row, so the columns stay aligned.
    """
    root = _dataset_dir(data_root, "nih_cxr14", "labels.csv")
    _require(root / "images_512", "image folder")
    source = _read_csv(root / "labels.csv")
    if source and ("Image Index" not in source[0] or "Finding Labels" not in source[0]):
        raise ManifestError(f"{root / 'labels.csv'} lacks Image Index / Finding Labels columns")

    boxes = defaultdict(list)
    box_findings = defaultdict(list)
    for box in _read_csv(root / "bboxes.csv"):
        if box["finding"].strip() in NIH_CLASSES:
            coords = tuple(float(box[k]) for k in ("x_512", "y_512", "w_512", "h_512"))
            boxes[box["image"].strip()].append(coords)
            box_findings[box["image"].strip()].append(box["finding"].strip())

    rows = []
    for r in source:
        classes = _nih_classes(r["Finding Labels"])
        if not classes:
            continue  # none of the 4 classes: used by neither split
        name = r["Image Index"].strip()
        rows.append({
            "image": root / "images_512" / name,
            "label": "|".join(classes),
            "box": boxes.get(name, []),
            "patient": r["Patient ID"].strip(),
            "findings": r["Finding Labels"].strip(),
            "box_findings": "|".join(box_findings.get(name, [])),
            "view": r.get("View Position", "").strip(),
            "_trainable": len(classes) == 1
            and (not strict_single_finding or r["Finding Labels"].strip() == classes[0]),
        })
    _check_images_exist(rows, "nih_cxr14")

    patients_rows = defaultdict(list)
    for row in rows:
        patients_rows[row["patient"]].append(row)
    forced_val = {p for p, rs in patients_rows.items() if any(not r["_trainable"] or r["box"] for r in rs)}
    strata = defaultdict(set)
    for patient, rs in patients_rows.items():
        if patient not in forced_val:
            strata["|".join(sorted({r["label"] for r in rs}))].add(patient)
    split_of = split_groups(strata, {"val": val_fraction}, seed)
    split_of.update({p: "val" for p in forced_val})

    train = [r for r in rows if split_of[r["patient"]] == "train"]
    val = [r for r in rows if split_of[r["patient"]] == "val"]
    assert all(r["_trainable"] for r in train)
    _assert_disjoint({"train": train, "val": val})
    strip = lambda rs: [{k: v for k, v in r.items() if not k.startswith("_")} for r in rs]  # noqa: E731
    return _write_all(out_dir, {"train": strip(train), "val": strip(val)})


# ---------------------------------------------------------------------------------------------- BraTS


BRATS_FILES = ("OTMultiClass.nii.gz", "brainmask.nii.gz")


def _brats_cases(folder: Path, sequence: str) -> list[Path]:
    cases = sorted(p for p in _require(folder, "BraTS split folder").iterdir() if p.is_dir())
    if not cases:
        raise ManifestError(f"no BraTS cases in {folder}")
    for case in cases:
        for name in (f"{sequence}_subtrMeanDivStd.nii.gz",) + BRATS_FILES:
            _require(case / name, "BraTS file")
    return cases


def _brats_slice_rows(case: Path, sequence: str, min_brain_fraction: float) -> list[dict]:
    """One row per axial slice (numpy axis 0) with at least `min_brain_fraction` of its area inside the brain."""
    import SimpleITK as sitk

    tumour = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "OTMultiClass.nii.gz")))
    brain = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "brainmask.nii.gz"))) > 0
    if tumour.shape != brain.shape:
        raise ManifestError(f"{case}: tumour labels {tumour.shape} and brain mask {brain.shape} differ")
    slice_area = brain.shape[1] * brain.shape[2]
    brain_pixels = brain.reshape(brain.shape[0], -1).sum(axis=1)
    tumour_pixels = (tumour > 0).reshape(tumour.shape[0], -1).sum(axis=1)
    rows = []
    for index in np.flatnonzero(brain_pixels >= min_brain_fraction * slice_area):
        rows.append({
            "image": case / f"{sequence}_subtrMeanDivStd.nii.gz",
            "label": int(tumour_pixels[index] > 0),
            "mask": case / "OTMultiClass.nii.gz",
            "slice": int(index),
            "roi": case / "brainmask.nii.gz",
            "patient": case.name,
            "brain_fraction": round(float(brain_pixels[index]) / slice_area, 4),
            "tumour_pixels": int(tumour_pixels[index]),
        })
    return rows


def build_brats(data_root, out_dir, sequence: str = "Flair", min_brain_fraction: float = 0.05) -> dict:
    """Glioma MRI (brats2015/{train,validation}/<case>/), one row per axial brain slice.

    train.csv: tumour-free slices of the train cases (the "normal" slices); val.csv: every brain slice of
    the validation cases, label 1 where the slice has tumour. mask = OTMultiClass (> 0 is tumour), roi =
    brainmask. The split is the data set's own train/validation folders (one case = one patient).
    """
    if sequence not in BRATS_SEQUENCES:
        raise ValueError(f"sequence must be one of {BRATS_SEQUENCES}, got {sequence!r}")
    root = _dataset_dir(data_root, "brats2015", "train")
    train_cases = _brats_cases(root / "train", sequence)
    val_cases = _brats_cases(root / "validation", sequence)

    def slices(cases):
        return [row for case in cases for row in _brats_slice_rows(case, sequence, min_brain_fraction)]

    train = [row for row in slices(train_cases) if row["label"] == 0]
    val = slices(val_cases)
    _assert_disjoint({"train": train, "val": val})
    return _write_all(out_dir, {"train": train, "val": val})


# ---------------------------------------------------------------------------------------------- healthy brains


HEALTHY_SPACING_MM = 1.0  # the grid every healthy volume is resampled to: BraTS's own 1 mm


def _write_if_missing(image, path: Path) -> Path:
    """Write a derived volume once (atomically); a later build reuses it."""
    import SimpleITK as sitk

    from ..atomic import atomic_destination

    if not path.exists():
        with atomic_destination(path, suffix=".nii.gz") as temporary:
            sitk.WriteImage(image, str(temporary))
    return path


def _healthy_volume(source: Path, out_dir: Path, name: str, mask_from_template: bool) -> tuple[Path, Path]:
    """`source` reoriented to BraTS's LPS axes (so numpy axis 0 is axial), resampled to 1 mm, and its brain mask:
    the template's own support (the MNI152 T1 is already brain-only), or `strip_skull_t1` on the native grid."""
    import SimpleITK as sitk

    from ..brain import strip_skull_t1

    image_path, mask_path = out_dir / f"{name}_T1.nii.gz", out_dir / f"{name}_brainmask.nii.gz"
    if image_path.exists() and mask_path.exists():
        return image_path, mask_path
    image = sitk.DICOMOrient(sitk.ReadImage(str(source), sitk.sitkFloat32), "LPS")
    array = sitk.GetArrayFromImage(image)
    if mask_from_template:
        from scipy import ndimage

        brain = np.stack([ndimage.binary_fill_holes(axial) for axial in array > 0])
    else:
        brain = strip_skull_t1(array)
    mask = sitk.GetImageFromArray(brain.astype(np.uint8))
    mask.CopyInformation(image)
    spacing = [HEALTHY_SPACING_MM] * 3
    size = [int(round(n * s / HEALTHY_SPACING_MM)) for n, s in zip(image.GetSize(), image.GetSpacing())]
    grid = dict(size=size, outputOrigin=image.GetOrigin(), outputSpacing=spacing,
                outputDirection=image.GetDirection())
    resampled = sitk.Resample(image, transform=sitk.Transform(), interpolator=sitk.sitkLinear, defaultPixelValue=0.0,
                              outputPixelType=sitk.sitkFloat32, **grid)
    resampled_mask = sitk.Resample(mask, transform=sitk.Transform(), interpolator=sitk.sitkNearestNeighbor,
                                   defaultPixelValue=0, outputPixelType=sitk.sitkUInt8, **grid)
    out_dir.mkdir(parents=True, exist_ok=True)
    return _write_if_missing(resampled, image_path), _write_if_missing(resampled_mask, mask_path)


def build_healthy_brains(data_root, out_dir, template_stride: int = 2, min_brain_fraction: float = 0.05,
                         test_sequence: str = "T1c") -> dict:
    """Healthy T1 brains to train on, and BraTS tumour cases to tune and test on, one row per axial slice.

    train.csv: the IXI T1 volumes of nifti/ixi_nichart (CC BY-SA 3.0; IsCN = 1 in participants.csv) and the
    MNI152 2009a T1 template of nifti/nilearn_mni152 (every `template_stride`-th axial slice, so that one average
    brain does not outweigh the real ones). Each is reoriented to LPS, resampled to 1 mm and written with its brain
    mask under out_dir/volumes/ (the mask is the `roi` column): IXI is not skull-stripped, so its mask comes from
    `medanomaly.brain.strip_skull_t1`; the template is brain-only already.
    val.csv / test.csv: every brain slice of the BraTS train / validation cases in `test_sequence` (T1c is the
    sequence closest to a T1), label 1 where the slice has tumour, mask = tumour, roi = brain mask: val tunes
    (thresholds, hyper-parameters), test reports. No BraTS slice is ever trained on. Without a brats2015 folder
    only train.csv is written.
    """
    root = (Path(data_root) if data_root is not None else default_data_root()).resolve()
    ixi = _require(root / "nifti" / "ixi_nichart", "IXI folder")
    healthy = {row["MRID"]: row for row in _read_csv(ixi / "participants.csv") if row.get("IsCN", "1") == "1"}
    sources = [(ixi / f"{name}_T1.nii.gz", name, False) for name in sorted(healthy)]
    template = root / "nifti" / "nilearn_mni152" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    if template.exists():
        sources.append((template, "MNI152_2009a", True))
    _check_images_exist([{"image": path} for path, _, _ in sources], "healthy brain")

    import SimpleITK as sitk

    volumes = Path(out_dir).resolve() / "volumes"  # manifest rows must not depend on the cwd
    train = []
    for source, name, is_template in sources:
        image_path, mask_path = _healthy_volume(source, volumes, name, is_template)
        brain = sitk.GetArrayFromImage(sitk.ReadImage(str(mask_path))) > 0
        fraction = brain.reshape(len(brain), -1).mean(axis=1)
        indices = np.flatnonzero(fraction >= min_brain_fraction)
        if is_template:
            indices = indices[::template_stride]
        train += [{"image": image_path, "label": 0, "slice": int(index), "roi": mask_path, "patient": name,
                   "brain_fraction": round(float(fraction[index]), 4),
                   "source": "MNI152 2009a template" if is_template else "IXI (CC BY-SA 3.0)"} for index in indices]
    manifests = {"train": train}
    brats = root / "brats2015"
    if brats.is_dir():
        for split, folder in (("val", "train"), ("test", "validation")):
            manifests[split] = [row for case in _brats_cases(brats / folder, test_sequence)
                                for row in _brats_slice_rows(case, test_sequence, min_brain_fraction)]
    _assert_disjoint(manifests)
    return _write_all(out_dir, manifests)


# ---------------------------------------------------------------------------------------------- DICOM screen


def _dicom_header(path: Path) -> dict:
    """Modality, body part and SOP class from the header only; empty strings when unreadable."""
    try:
        import pydicom

        header = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
    except Exception:  # noqa: BLE001 - an unreadable header simply leaves the columns empty
        return {"modality": "", "body_part": "", "sop_class": ""}
    return {
        "modality": str(getattr(header, "Modality", "") or "").strip().upper(),
        "body_part": str(getattr(header, "BodyPartExamined", "") or "").strip().upper(),
        "sop_class": str(getattr(header, "SOPClassUID", "") or ""),
    }


def build_dicom_samples(data_root, out_dir) -> dict:
    """The out-of-distribution screen's test set: label 0 = chest film (CR/DX of the chest), 1 = anything else.

    One row per .dcm file under dicom/ (DICOM-SEG objects such as pydicom's liver.dcm are skipped: they are
    segmentations, not images) plus the healthy-brain NIfTI volumes (IXI T1, MNI152 T1) as label 1.
    Columns modality and body_part come from the DICOM header (pydicom, stop_before_pixels). Written to test.csv.
    """
    root = (Path(data_root) if data_root is not None else default_data_root()).resolve()  # rows must not depend on the cwd
    dicom_root = _require(root / "dicom", "DICOM folder")
    nifti_root = _require(root / "nifti", "NIfTI folder")

    rows, skipped = [], []
    for path in sorted(dicom_root.rglob("*.dcm")):
        header = _dicom_header(path)
        if header["modality"] == "SEG" or header["sop_class"] == DICOM_SEG_SOP_CLASS:
            skipped.append(path.name)
            continue
        is_chest_film = header["modality"] in CHEST_FILM_MODALITIES and header["body_part"] in CHEST_BODY_PARTS
        rows.append({
            "image": path,
            "label": 0 if is_chest_film else 1,
            "modality": header["modality"],
            "body_part": header["body_part"],
            "source": path.parent.name,
        })

    brains = sorted((nifti_root / "ixi_nichart").glob("*_T1.nii.gz"))
    brains += sorted((nifti_root / "nilearn_mni152").glob("*_t1_*.nii.gz"))
    if not brains:
        raise ManifestError(f"no IXI / MNI152 T1 volumes under {nifti_root}")
    for path in brains:
        rows.append({"image": path, "label": 1, "modality": "MR", "body_part": "BRAIN", "source": path.parent.name})
    if not rows:
        raise ManifestError(f"no DICOM files under {dicom_root}")
    return _write_all(out_dir, {"test": rows})


BUILDERS = {
    "kermany": build_kermany,
    "mini_mias": build_mini_mias,
    "nih": build_nih,
    "brats": build_brats,
    "dicom_samples": build_dicom_samples,
    "healthy_brains": build_healthy_brains,
}
