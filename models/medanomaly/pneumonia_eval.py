"""Evaluation of the pneumonia paper's two methods on held-out films, shared by `benchmarks/bench_unet_patch.py` and
`python -m medanomaly reproduce unet-patch-ae`.

- `scan_films`: every film scored by the U-Net patch autoencoder, with its patch scan (SAD of every patch).
- Patch level: SAD pooled by film label, the number of peaks of the pooled SAD density (`count_peaks`), and the
  patches sorted into three kinds by two SAD thresholds (`fit_kind_thresholds`, `classify_kinds`).
- `evaluate_classifier`: the CNN baseline's score, predicted class and Grad-CAM map on the same films.

The three patch kinds. The paper expected the SAD of a patch to tell what the patch holds. Kermany gives image labels
only, so the kinds are defined from what is known about each patch: a lung patch (wholly inside the lung field) of
a normal film, a lung patch of a pneumonia film (not every one of which holds an opacity), and a patch of the film
that lies wholly outside the lung field (mediastinum, bone, soft tissue, the diaphragm). Patches that straddle the
lung's edge belong to no kind."""
from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import combinations, permutations

import numpy as np
from scipy.signal import find_peaks
from scipy.stats import gaussian_kde

from .data import load_case
from .metrics import image_auroc

PATCH_KINDS = ("normal film, lung", "pneumonia film, lung", "outside the lung")


@dataclass
class ScannedFilm:
    """One held-out film scored by the patch autoencoder."""

    case: object  # manifest Case
    film: np.ndarray  # the film as read
    scan: object  # unet_patch_ae.PatchScan
    sad_map: np.ndarray  # the model's map: each patch's SAD painted over it, on the film's grid
    lung: np.ndarray  # the lung field on the film's grid
    seconds: float  # segmentation + scan + map
    patch_size: int

    @property
    def scores(self) -> dict:
        """The four film scores (lung/all patches, mean/max SAD), as `predict` gives them in meta["sad_scores"]."""
        return self.scan.scores()

    @property
    def lung_fraction(self) -> np.ndarray:
        """(N,) fraction of each patch inside the lung field."""
        p = self.patch_size
        return np.array([self.scan.lung[r:r + p, c:c + p].mean() for r, c in self.scan.corners])

    @property
    def outside_lung(self) -> np.ndarray:
        """(N,) patch of the film wholly outside the lung field."""
        return self.scan.in_film & (self.lung_fraction == 0)


def scan_films(model, cases) -> list[ScannedFilm]:
    """Scan every case once: the patch SADs, the map and the four scores that `model.predict` would give."""
    from .preprocess import undo_resize

    scanned = []
    for case in cases:
        film = load_case(case).image.array
        started = time.perf_counter()
        scan = model.scan(film)
        sad_map = model.sad_map(scan)
        seconds = time.perf_counter() - started
        lung = undo_resize(scan.lung.astype(np.float32), scan.info) >= 0.5
        scanned.append(ScannedFilm(case, film, scan, sad_map, lung, seconds, int(model.config["patch_size"])))
    return scanned


def film_aurocs(scanned: list[ScannedFilm]) -> dict:
    """Image AUROC of each of the four SAD scores (lung/all, mean/max)."""
    labels = [int(s.case.is_abnormal) for s in scanned]
    return {name: image_auroc(labels, [s.scores[name] for s in scanned]) for name in scanned[0].scores}


def pooled_sad(scanned: list[ScannedFilm], abnormal: bool, where: str = "lung") -> np.ndarray:
    """SAD of the lung patches ("lung") or of all patches in the film ("film") of the normal or pneumonia films."""
    chosen = [s for s in scanned if s.case.is_abnormal == abnormal]
    if not chosen:
        return np.zeros(0)
    return np.concatenate([s.scan.sad[s.scan.in_lung if where == "lung" else s.scan.in_film] for s in chosen])


def count_peaks(values: np.ndarray, prominence: float = 0.05) -> int:
    """Local maxima of a Gaussian KDE (Scott's bandwidth) higher than `prominence` x the top density."""
    values = np.asarray(values, dtype=float)
    if len(values) < 3 or np.ptp(values) == 0:
        return 1 if len(values) else 0
    grid = np.linspace(values.min(), values.max(), 512)
    density = gaussian_kde(values)(grid)
    peaks, _ = find_peaks(np.r_[0.0, density, 0.0], prominence=prominence * density.max())
    return len(peaks)


def patch_kinds(scanned: list[ScannedFilm]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Of every patch that has a kind: its SAD, its kind (index into PATCH_KINDS), its film (index into `scanned`)
    and its place in that film's scan (index into `scan.corners`)."""
    sad, kinds, films, places = [], [], [], []
    for index, s in enumerate(scanned):
        lung_kind = 1 if s.case.is_abnormal else 0
        for mask, kind in ((s.scan.in_lung, lung_kind), (s.outside_lung, 2)):
            chosen = np.flatnonzero(mask)
            sad.append(s.scan.sad[chosen])
            kinds.append(np.full(len(chosen), kind))
            films.append(np.full(len(chosen), index))
            places.append(chosen)
    return np.concatenate(sad), np.concatenate(kinds), np.concatenate(films), np.concatenate(places)


def patch_pixels(scanned: list[ScannedFilm], film: int, place: int) -> np.ndarray:
    """The pixels of patch `place` of film `film`, on the preprocessed square."""
    s = scanned[film]
    row, col = s.scan.corners[place]
    return s.scan.square[row:row + s.patch_size, col:col + s.patch_size]


def balanced_accuracy(truth: np.ndarray, predicted: np.ndarray, classes=range(len(PATCH_KINDS))) -> float:
    """Mean over the classes present of the fraction of their patches given their own class."""
    recalls = [np.mean(predicted[truth == k] == k) for k in classes if np.any(truth == k)]
    return float(np.mean(recalls)) if recalls else float("nan")


@dataclass
class KindThresholds:
    """Two SAD thresholds cut the SAD axis into three ranges; `order[j]` is the kind given to range j."""

    low: float
    high: float
    order: tuple[int, int, int]

    def classify(self, sad: np.ndarray) -> np.ndarray:
        ranges = np.digitize(np.asarray(sad, dtype=float), [self.low, self.high])
        return np.asarray(self.order)[ranges]


def fit_kind_thresholds(sad: np.ndarray, kinds: np.ndarray, candidates: int = 40) -> KindThresholds:
    """The two thresholds and the order of the kinds along the SAD axis that give the best balanced accuracy on
    these patches (thresholds searched on SAD quantiles; every order of the three kinds tried)."""
    grid = np.unique(np.quantile(sad, np.linspace(0.01, 0.99, candidates)))
    best, best_score = None, -1.0
    for low, high in combinations(grid, 2):
        ranges = np.digitize(sad, [low, high])
        for order in permutations(range(len(PATCH_KINDS))):
            score = balanced_accuracy(kinds, np.asarray(order)[ranges])
            if score > best_score:
                best, best_score = KindThresholds(float(low), float(high), tuple(order)), score
    return best


def kind_confusion(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Rows: true kind; columns: kind given by the thresholds; each row sums to 1 (0 where a kind is absent)."""
    matrix = np.zeros((len(PATCH_KINDS), len(PATCH_KINDS)))
    for k in range(len(PATCH_KINDS)):
        if np.any(truth == k):
            matrix[k] = np.bincount(predicted[truth == k], minlength=len(PATCH_KINDS)) / np.sum(truth == k)
    return matrix


@dataclass
class ClassifierEvaluation:
    labels: np.ndarray  # 1 = pneumonia
    scores: np.ndarray  # P(pneumonia)
    predicted: np.ndarray  # 1 = predicted pneumonia
    seconds: list  # predict time per film (with Grad-CAM)
    results: list  # AnomalyResult per film (maps are Grad-CAM)
    films: list

    @property
    def auroc(self) -> float:
        return image_auroc(self.labels, self.scores)

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.labels == self.predicted))

    @property
    def balanced_accuracy(self) -> float:
        return balanced_accuracy(self.labels, self.predicted, classes=(0, 1))


def evaluate_classifier(model, cases) -> ClassifierEvaluation:
    """The classifier's P(pneumonia), predicted class and Grad-CAM map on each case."""
    labels, scores, predicted, seconds, results, films = [], [], [], [], [], []
    for case in cases:
        film = load_case(case).image.array
        started = time.perf_counter()
        result = model.predict(film)
        seconds.append(time.perf_counter() - started)
        labels.append(int(case.is_abnormal))
        scores.append(result.score)
        predicted.append(int(result.meta["predicted_class"] != "normal"))
        results.append(result)
        films.append(film)
    return ClassifierEvaluation(np.array(labels), np.array(scores), np.array(predicted), seconds, results, films)
