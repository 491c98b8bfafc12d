"""Telling a CR/DX film from other modalities, from the pixels: the chest X-ray VAE paper's modality CNN.

The server's guard stays the DICOM header lookup (`modalities`); this is the paper's learnt screen, used by its
reproduction and tests. Images come from the shared data folder, split by patient, woman or volume:

- positives (CR/DX films): Kermany and NIH chest films, the CR DICOM samples;
- negatives: brain MRI slices (BraTS FLAIR/T1c, IXI and MNI152 T1), mini-MIAS mammograms, the MR/CT DICOM samples.

The classifier is the paper's small supervised CNN (`cxr-cnn`) with the classes "CR" (its normal class) and
"other", so it trains, calibrates and saves like every model; its score is P(other).
`score_samples` runs any model over the DICOM / NIfTI samples (the out-of-distribution screen of the VLB VAE).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from .data.builders import BUILDERS, split_groups
from .data.manifest import read_manifest
from .errors import UnsupportedImageError
from .io import read_image
from .io.image import MedicalImage

CR_CLASS, OTHER_CLASS = "CR", "other"
CR_MODALITIES = ("CR", "DX")
# DICOM samples the classifier trains on; every other sample is held out (one CR chest film, its lossy copy, a CR
# extremity, an MR and a CT). The SIIM CR film is the only CR sample that can train without leaking the held-out film.
DICOM_TRAINING = ("CT_small.dcm", "MR_small.dcm", "emri_small.dcm",
                  "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm")
HELD_OUT_FRACTION = 0.3  # of the patients / women of Kermany, NIH and mini-MIAS


@dataclass(frozen=True)
class ModalitySample:
    name: str  # file name, with the slice index for a slice of a volume
    source: str  # data set and sequence, e.g. "Kermany", "BraTS FLAIR", "DICOM samples"
    modality: str  # CR, DX, MR, CT, MG
    array: np.ndarray

    @property
    def is_cr(self) -> bool:
        return self.modality in CR_MODALITIES

    def item(self) -> SimpleNamespace:
        """A training item for the classifier (label "CR" or "other")."""
        return SimpleNamespace(image=MedicalImage(self.array), mask=None, roi=None,
                               label=CR_CLASS if self.is_cr else OTHER_CLASS, is_abnormal=not self.is_cr)


@dataclass(frozen=True)
class ModalitySizes:
    """How many images of each source go into each split (the DICOM samples always go in whole)."""
    films: int = 40  # Kermany and NIH chest films, each
    mammograms: int = 30
    slices_per_volume: int = 8
    brats: bool = True


@dataclass
class ModalitySet:
    train: list[ModalitySample] = field(default_factory=list)
    test: list[ModalitySample] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (file, why the reader refused it)


def volume_slices(array: np.ndarray, count: int) -> list[tuple[int, np.ndarray]]:
    """Up to `count` evenly spaced axial slices from the central 70 % of a volume, constant slices skipped."""
    if array.ndim == 2:
        return [(0, array)]
    depth = array.shape[0]
    low, high = int(depth * 0.15), max(int(depth * 0.85), int(depth * 0.15) + 1)
    if depth <= count:
        low, high = 0, depth
    indices = sorted(set(np.linspace(low, high - 1, num=min(count, high - low)).round().astype(int).tolist()))
    return [(k, array[k]) for k in indices if float(array[k].max()) > float(array[k].min())]


def _pick(rows: list, count: int, seed: int) -> list:
    if count >= len(rows):
        return rows
    chosen = np.random.default_rng(seed).choice(len(rows), count, replace=False)
    return [rows[k] for k in sorted(chosen)]


def _split_films(rows: list[tuple[Path, str]], count: int, seed: int) -> dict[str, list[Path]]:
    """(path, patient) rows -> {"train", "test"}: `count` films each, no patient in both."""
    split_of = split_groups({"all": {patient for _, patient in rows}}, {"test": HELD_OUT_FRACTION}, seed)
    return {split: _pick([path for path, patient in rows if split_of[patient] == split], count, seed)
            for split in ("train", "test")}


def _chest_films(root: Path, count: int, seed: int) -> dict[str, list[tuple[Path, str]]]:
    """Kermany and NIH films per split, each tagged with its source."""
    out = {"train": [], "test": []}
    if count <= 0:
        return out
    with open(root / "kermany_cxr" / "labels.csv", newline="", encoding="utf-8") as handle:
        kermany = [(root / "kermany_cxr" / row["path"], row["patient_key"]) for row in csv.DictReader(handle)]
    with open(root / "nih_cxr14" / "labels.csv", newline="", encoding="utf-8") as handle:
        nih = [(root / "nih_cxr14" / "images_512" / row["Image Index"], row["Patient ID"])
               for row in csv.DictReader(handle)]
    for source, rows in (("Kermany", kermany), ("NIH", nih)):
        for split, paths in _split_films(rows, count, seed).items():
            out[split] += [(path, source) for path in paths]
    return out


def _mammograms(root: Path, count: int, seed: int) -> dict[str, list[Path]]:
    if count <= 0:
        return {"train": [], "test": []}
    images = sorted((root / "mini_mias" / "images").glob("mdb*.png"))
    woman = {path: f"woman{(int(path.stem[3:]) + 1) // 2:03d}" for path in images}  # mdb(2k-1), mdb(2k): one woman
    return _split_films([(path, woman[path]) for path in images], count, seed)


def _volumes(root: Path, sizes: ModalitySizes) -> dict[str, list[tuple[Path, str]]]:
    """Brain MRI volumes per split: one IXI subject and the MNI152 template train, the other IXI subject tests;
    BraTS train cases train, its validation cases test."""
    out = {"train": [(path, "MNI152 T1") for path in sorted((root / "nifti" / "nilearn_mni152").glob("*_t1_*.nii*"))]}
    ixi = sorted((root / "nifti" / "ixi_nichart").glob("*_T1.nii*"))
    out["train"] += [(path, "IXI T1") for path in ixi[1:]]
    out["test"] = [(path, "IXI T1") for path in ixi[:1]]
    if sizes.brats:
        for split, folder in (("train", "train"), ("test", "validation")):
            for case in sorted((root / "brats2015" / folder).glob("*")):
                out[split] += [(path, f"BraTS {path.name.split('_')[0]}") for path in sorted(case.glob("*.nii.gz"))
                               if path.name.startswith(("Flair", "T1c"))]
    return out


def modality_samples(data_root, sizes: ModalitySizes = ModalitySizes(), seed: int = 0) -> ModalitySet:
    """Read the CR-vs-other images of the shared data folder, split so that no patient, woman or volume is in both."""
    root = Path(data_root)
    found = ModalitySet()
    films, mammograms = _chest_films(root, sizes.films, seed), _mammograms(root, sizes.mammograms, seed)
    volumes = _volumes(root, sizes)
    for split in ("train", "test"):
        chosen = getattr(found, split)
        chosen += [ModalitySample(path.name, source, "CR", read_image(path).array) for path, source in films[split]]
        chosen += [ModalitySample(path.name, "mini-MIAS", "MG", read_image(path).array) for path in mammograms[split]]
        for path, source in volumes[split]:
            chosen += [ModalitySample(f"{path.name} z={k}", source, "MR", plane)
                       for k, plane in volume_slices(read_image(path).array, sizes.slices_per_volume)]
    for path in sorted((root / "dicom").rglob("*.dcm")):
        try:
            image = read_image(path)
        except UnsupportedImageError as error:  # colour ultrasound, DICOM-SEG: not a greyscale image of the patient
            found.refused.append((path.name, str(error)))
            continue
        modality = str(image.meta.get("modality") or "OT").upper()
        split = found.train if path.name in DICOM_TRAINING else found.test
        planes = volume_slices(image.array, sizes.slices_per_volume)
        split += [ModalitySample(path.name if len(planes) == 1 else f"{path.name} frame {k}", "DICOM samples",
                                 modality, plane) for k, plane in planes]
    return found


def create_modality_cnn(**config):
    """The paper's small CNN (`cxr-cnn`), CR vs other; its score is P(other)."""
    from .registry import create

    return create("cxr-cnn", classes=[CR_CLASS, OTHER_CLASS], normal_class=CR_CLASS, **config)


def class_probabilities(model, squares) -> np.ndarray:
    """(N, K) class probabilities of a trained classifier for squares made by its `preprocess`, without the maps
    that `predict` draws (Grad-CAM), for when only the class matters."""
    model.network.eval()
    batch_size = int(model.config["predict_batch_size"])
    out = []
    with torch.no_grad():
        for start in range(0, len(squares), batch_size):
            x = torch.as_tensor(np.stack(squares[start:start + batch_size]), device=model.device)
            out.append(torch.softmax(model.logits(x), dim=1).cpu().numpy())
    return np.concatenate(out)


def probability_cr(model, samples: list[ModalitySample]) -> np.ndarray:
    """P(CR) of each sample by a trained modality CNN."""
    squares = [model.preprocess(sample.array)[0] for sample in samples]
    return class_probabilities(model, squares)[:, model.classes.index(CR_CLASS)]


def score_samples(models: list, data_root, work: Path, slices_per_volume: int | None = None
                  ) -> tuple[list[dict], list[tuple[str, str]]]:
    """The models' scores on the DICOM / NIfTI samples (`dicom_samples` manifest: label 0 = chest CR/DX, 1 = other).

    Returns one record per image the reader accepts (file, modality, body part, label, shape, `scores`: one per
    model) and the refused files with the reason. Each image is read once for all the models; a volume is scored
    on `slices_per_volume` evenly spaced slices (`volume_slices`) when given, else on all of them."""
    records, refused = [], []
    for case in read_manifest(BUILDERS["dicom_samples"](data_root, Path(work))["test"]):
        try:
            image = read_image(case.image)
        except UnsupportedImageError as error:
            refused.append((case.image.name, str(error)))
            continue
        if slices_per_volume and image.is_volume and image.array.shape[0] > slices_per_volume:
            image = MedicalImage(np.stack([plane for _, plane in volume_slices(image.array, slices_per_volume)]))
        records.append({"file": case.image.name, "modality": case.extra.get("modality", ""),
                        "body_part": case.extra.get("body_part", "") or "-", "label": int(case.label),
                        "shape": tuple(image.shape), "scores": [float(m.predict(image).score) for m in models]})
    return records, refused
