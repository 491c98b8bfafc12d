"""The anomaly-model contract: fit, predict, calibrate, save, load.

A method subclasses `AnomalyModel` and fills four hooks: `build_network`, `training_samples`, `training_loss`
and `score_slices`. Everything a user relies on across methods lives here once: volumes scored slice by slice
and maps returned on the input's grid, thresholds and how they were set, checkpoints with resume, timings."""
from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from . import __version__
from .calibration import Calibration
from .checkpoint import FORMAT, FORMAT_VERSION, atomic_torch_save, read_checkpoint, weights_digest
from .errors import CheckpointError, UnsupportedImageError
from .io.image import MedicalImage
from .result import AnomalyResult
from .seeding import seeded
from .training import TRAINING_DEFAULTS

BASE_DEFAULTS = {
    "epochs": 10,
    "batch_size": 16,
    "learning_rate": 1e-3,
    "seed": 0,
    "device": "auto",  # "auto" picks CUDA when present, else the CPU
    "predict_batch_size": 16,
    "volume_score": "max",  # a volume's score from its slice scores: "max" or "mean"
    "calibration_fpr": 0.05,  # image-level false-positive rate when validation has normals only
    "calibration_pixel_fpr": 0.01,  # pixel-level false-positive rate on normal maps
    **TRAINING_DEFAULTS,  # num_workers, cache_mb, checkpoint_minutes: see medanomaly.training
}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_pixels(array: np.ndarray) -> None:
    """Refuse what no model can score, with the reason."""
    if array.ndim not in (2, 3):
        raise UnsupportedImageError(f"expected a 2D film (H, W) or a 3D volume (D, H, W), got shape {array.shape}")
    if array.size == 0 or min(array.shape) == 0:
        raise UnsupportedImageError(f"image has zero size: shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise UnsupportedImageError("image contains NaN or Inf pixels")


def as_medical_image(image) -> MedicalImage:
    if isinstance(image, MedicalImage):
        return image
    if isinstance(image, (str, Path)):
        from .io import read_image

        return read_image(image)
    return MedicalImage(np.asarray(image, dtype=np.float32))


def slices_of(array: np.ndarray) -> list[np.ndarray]:
    """A film is one slice; a volume (D, H, W) is D axial slices."""
    return [array] if array.ndim == 2 else list(array)


def as_items(data) -> list:
    """Training or validation data as items with .image, .mask, .roi, .label, .is_abnormal.

    Accepts a manifest path, a list of manifest cases, loaded cases, MedicalImages or arrays (normals)."""
    if data is None:
        return []
    if isinstance(data, (str, Path)):
        from .data.manifest import read_manifest

        data = read_manifest(data)
    items = []
    for entry in data:
        if hasattr(entry, "image") and isinstance(getattr(entry, "image"), MedicalImage):
            items.append(entry)
        elif hasattr(entry, "image") and hasattr(entry, "label"):  # a manifest Case: load it now
            from .data.manifest import load_case

            items.append(load_case(entry))
        else:
            items.append(SimpleNamespace(image=as_medical_image(entry), mask=None, roi=None, label=0,
                                         is_abnormal=False))
    return items


@dataclass
class SliceScores:
    """What a method's `score_slices` returns for N 2D slices, each map on its slice's own grid."""

    scores: np.ndarray
    maps: list
    extras: dict = field(default_factory=dict)  # name -> list of N maps
    meta: dict = field(default_factory=dict)  # method-specific figures (class probabilities, spreads...)


class AnomalyModel:
    name = "base"
    description = ""
    kind = "reconstruction"  # "reconstruction", "density" or "classifier": how a client should read the score
    version = "1"  # bump when the method's code changes what a checkpoint means
    supervised = False  # unsupervised models train on normal images only
    fitting = "gradient"  # "gradient": optimiser steps on training_loss; "statistics": one pass of fit_statistics
    default_config: dict = {}
    preprocessing_keys: tuple = ()  # config keys that define preprocessing; recorded apart in the checkpoint
    inference_keys: tuple = ()  # config keys a request may override for one prediction
    # What the model is for, so that clients screen images without guessing (codes in `medanomaly.modalities`).
    modalities: tuple | None = None  # DICOM Modality codes the model reads; None: any
    body_parts: tuple | None = None  # DICOM BodyPartExamined values; None: any
    uncertainty_map: str | None = None  # the name of the extras map holding the model's uncertainty, if any
    min_image_size: int = 32  # smallest in-plane side (pixels) predict accepts
    # A tiny config (small images and network, one epoch) for the contract test every registered model runs.
    smoke_config: dict = {}

    def __init__(self, **config):
        defaults = {**BASE_DEFAULTS, **self.default_config}
        unknown = sorted(set(config) - set(defaults))
        if unknown:
            raise ValueError(f"{self.name}: unknown config keys {unknown}; known keys: {sorted(defaults)}")
        self.config = {**defaults, **config}
        self.device = resolve_device(self.config["device"])
        with seeded(self.config["seed"]):  # the same config gives the same initial weights
            self.network = self.build_network().to(self.device)
        self.calibrator = Calibration()  # thresholds, how they were set, normal statistics (calibration.py)
        self.train_state = {"epoch": 0, "history": [], "finished": False}
        self._optimizer_state = None
        self._weights_sha = None
        self._predict_lock = threading.RLock()

    # ----- hooks a method fills -----
    def build_network(self) -> torch.nn.Module:
        raise NotImplementedError

    def training_samples(self, item, rng: np.random.Generator | None = None) -> list[tuple[np.ndarray, ...]]:
        """Arrays the loss sees, for one training item (a film or a volume). Each sample is a tuple.

        Without `rng`: every sample of the item. With `rng` (one visit of the item during training): a method that
        cuts many samples from an item (patches) may draw only `samples_per_visit()` of them with it; the loop
        keeps at most that many in any case (a random slice of a volume, for a one-sample-per-visit model)."""
        raise NotImplementedError

    def samples_per_visit(self) -> int:
        """Samples one visit of a training item gives; a batch holds batch_size // samples_per_visit() items."""
        return 1

    def training_loss(self, *batch: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def score_slices(self, slices: list[np.ndarray]) -> SliceScores:
        raise NotImplementedError

    def fit_statistics(self, items: list) -> dict:
        """For `fitting = "statistics"` models (mixtures, feature Gaussians, memory banks): estimate the model from
        the training items in one pass and return a history record. Calibration and checkpoint follow in `fit`."""
        raise NotImplementedError

    def make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.network.parameters(), lr=self.config["learning_rate"])

    def select_training_items(self, items: list) -> list:
        """Unsupervised models learn 'normal' only: images with a lesion label stay out of training."""
        return items if self.supervised else [item for item in items if not item.is_abnormal]

    # ----- description and versions -----
    @classmethod
    def describe(cls) -> dict:
        return {
            "description": cls.description,
            "kind": cls.kind,
            "supervised": cls.supervised,
            "version": cls.version,
            "default_config": {**BASE_DEFAULTS, **cls.default_config},
            "inference_options": list(cls.inference_keys),
            "modalities": list(cls.modalities) if cls.modalities is not None else None,
            "body_parts": list(cls.body_parts) if cls.body_parts is not None else None,
            "uncertainty_map": cls.uncertainty_map,
            "min_image_size": int(cls.min_image_size),
        }

    @property
    def model_version(self) -> str:
        """name-codeversion-weighthash: changes exactly when the weights or the method change."""
        if self._weights_sha is None:
            self._weights_sha = weights_digest(self.network.state_dict())
        return f"{self.name}-v{self.version}-{self._weights_sha[:12]}"

    def preprocessing_params(self) -> dict:
        return {key: self.config[key] for key in self.preprocessing_keys}

    @contextlib.contextmanager
    def options(self, **options):
        """Override inference options (e.g. repeats, NLR) for the duration of one call."""
        unknown = sorted(set(options) - set(self.inference_keys))
        if unknown:
            raise ValueError(f"{self.name}: options {unknown} cannot be set per request; "
                             f"allowed: {list(self.inference_keys)}")
        saved = {key: self.config[key] for key in options}
        self.config.update(options)
        try:
            yield
        finally:
            self.config.update(saved)

    # ----- predict -----
    def check_image_size(self, shape) -> None:
        """Refuse films or slices smaller than the model can score, naming the size."""
        if min(shape) < int(self.min_image_size):
            raise UnsupportedImageError(
                f"{self.name} needs images of at least {self.min_image_size} pixels on each side; "
                f"got {shape[0]} x {shape[1]}")

    def predict(self, image, threshold: float | None = None, **options) -> AnomalyResult:
        """Score a film (H, W) or a volume (D, H, W); the map and mask come back on the input's grid.

        `threshold` overrides the calibrated pixel threshold for this call's mask."""
        image = as_medical_image(image)
        check_pixels(image.array)
        self.check_image_size(image.array.shape[-2:])
        # One prediction at a time per model: per-request options and hooks such as Grad-CAM mutate the model.
        with self._predict_lock, self.options(**options):
            started = time.perf_counter()
            self.network.eval()
            slices = slices_of(image.array)
            out = self.score_slices(slices)
            seconds = time.perf_counter() - started
            options_used = {key: self.config[key] for key in self.inference_keys}
        anomaly_map = np.stack(out.maps).astype(np.float32) if image.is_volume else out.maps[0].astype(np.float32)
        extras = {name: (np.stack(maps) if image.is_volume else maps[0]).astype(np.float32)
                  for name, maps in out.extras.items()}
        scores = np.asarray(out.scores, dtype=float)
        score = float(scores.max() if self.config["volume_score"] == "max" else scores.mean())

        mask, thresholding = self.calibrator.apply(score, anomaly_map, threshold)
        meta = {
            "model": self.name,
            "model_version": self.model_version,
            "kind": self.kind,
            **thresholding,  # thresholds and their source, is_anomalous, normalised_score, display_range
            "slice_scores": scores.tolist() if image.is_volume else None,
            "options": options_used,
            "timings": {"predict_seconds": seconds, "seconds_per_slice": seconds / len(slices)},
            **out.meta,
        }
        return AnomalyResult(score=score, map=anomaly_map, mask=mask, extras=extras, meta=meta, image=image)

    # ----- fit -----
    def fit(self, train, val=None, *, checkpoint: str | Path | None = None, minutes: float | None = None,
            progress: bool = True, on_epoch_end=None, on_progress=None, should_stop=None, **config) -> list[dict]:
        """Train, resume from `checkpoint` if it holds an unfinished run (also one stopped mid-epoch), then
        calibrate thresholds on `val` (or on up to 200 training items when no validation set is given).

        `train` is a manifest path, manifest cases (streamed from disk), or images in memory. `config` overrides
        settings such as epochs, batch_size, learning_rate, num_workers or cache_mb. `minutes` bounds the wall
        time: it is checked after every optimiser step, and on expiry (or when `should_stop()` returns True) a
        mid-epoch checkpoint is written, the model calibrated and the history returned. `on_progress(Progress)`
        is called after every step (steps done, time left in the budget, estimated epoch time; see
        `medanomaly.training`). Returns the per-epoch history; a last record with "complete": False is the
        epoch the budget cut short. The loop itself lives in `medanomaly.training`."""
        from .training import fit_model

        unknown = sorted(set(config) - set(self.config))
        if unknown:
            raise ValueError(f"{self.name}: unknown config keys {unknown}")
        self.config.update(config)
        return fit_model(self, train, val, checkpoint=checkpoint, minutes=minutes, progress=progress,
                         on_epoch_end=on_epoch_end, on_progress=on_progress, should_stop=should_stop)

    # ----- calibrate -----
    def calibrate(self, val, source: str = "validation") -> dict:
        """Set the image and pixel thresholds from validation data (see calibration.py) and record how."""
        items = as_items(val)
        results = [self.predict(item.image) for item in items]
        self.calibrator = Calibration.from_validation(
            results, items, fpr=self.config["calibration_fpr"], pixel_fpr=self.config["calibration_pixel_fpr"],
            seed=int(self.config["seed"]), source=source)
        return self.calibration

    # The calibrator's parts under their long-standing names (clients and checkpoints use them).
    @property
    def thresholds(self) -> dict:
        return self.calibrator.thresholds

    @thresholds.setter
    def thresholds(self, value: dict) -> None:
        self.calibrator.thresholds = {"image": None, "pixel": None, **dict(value)}

    @property
    def calibration(self) -> dict:
        return self.calibrator.record

    @calibration.setter
    def calibration(self, value: dict) -> None:
        self.calibrator.record = dict(value)

    @property
    def stats(self) -> dict:
        return self.calibrator.stats

    @stats.setter
    def stats(self, value: dict) -> None:
        self.calibrator.stats = dict(value)

    # ----- save / load -----
    def save(self, path: str | Path) -> Path:
        state = {key: value.detach().cpu() for key, value in self.network.state_dict().items()}
        self._weights_sha = weights_digest(state)
        payload = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "package_version": __version__,
            "model": self.name,
            "model_code_version": self.version,
            "model_version": self.model_version,
            "weights_sha256": self._weights_sha,
            "config": dict(self.config),
            "preprocessing": self.preprocessing_params(),
            **self.calibrator.to_dict(),  # "thresholds", "calibration", "stats"
            "train_state": {**self.train_state, "optimizer": self._optimizer_state},
            "state_dict": state,
        }
        return atomic_torch_save(payload, path)

    def _load_payload(self, payload: dict) -> None:
        if payload["model"] != self.name:
            raise CheckpointError(f"checkpoint holds model {payload['model']!r}, not {self.name!r}")
        try:
            self.network.load_state_dict(payload["state_dict"])
        except RuntimeError as error:
            raise CheckpointError(f"checkpoint weights do not fit {self.name} with this config: {error}") from error
        self.network.to(self.device)
        self.calibrator = Calibration.from_dict(payload)
        train_state = dict(payload["train_state"])
        self._optimizer_state = train_state.pop("optimizer", None)
        self.train_state = train_state
        self._weights_sha = payload.get("weights_sha256")

    def _resume_from(self, path: str | Path) -> None:
        payload = read_checkpoint(path)
        self._load_payload(payload)
        self.train_state["finished"] = False


def load(path: str | Path, **overrides) -> AnomalyModel:
    """A model exactly as saved: weights, config, thresholds, statistics. `overrides` may change run-time
    settings such as the device."""
    from .registry import create

    payload = read_checkpoint(path)
    model = create(payload["model"], **{**payload["config"], **overrides})
    model._load_payload(payload)
    return model
