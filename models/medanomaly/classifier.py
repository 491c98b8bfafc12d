"""Shared base of the supervised image classifiers (GCM, DenseNet-121, small CNNs).

A classifier learns K named classes, one of which is "normal". What the server gets is the same as for every
other model: `score` = P(abnormal) = 1 - P(normal class), a map on the input's grid, and the per-class
probabilities in `meta["class_probabilities"]`.

A subclass fills `build_network` (a torch module mapping (N, C, S, S) to (N, K) logits) and sets the
Grad-CAM target layer in its `default_config["gradcam_layer"]` (a name from `network.named_modules()`).
It may override `logits` (when the network returns more than logits) and `classify_batch` (a map other
than Grad-CAM, e.g. GCM's class weight maps). Everything else lives here:

- preprocessing: intensities to [0, 1] by percentile clipping, resized keeping the aspect ratio and padded
  with the minimum to image_size^2, the grey channel replicated when the network wants 3 channels;
- labels: an item's label is a class name (case-insensitive), or 0/1 for normal/abnormal when there are two
  classes. Multi-label items ("Cardiomegaly|Effusion") are left out of training (they still count in
  validation, where `is_abnormal` is what matters);
- loss: cross entropy weighted by class (balanced weights n / (K * n_k) from the training labels, computed
  in `select_training_items`, the one hook that sees every training item before the samples are made);
- map: Grad-CAM (`monai.visualize.GradCAM`) of the most probable abnormal class, raw (not rescaled per image,
  so that maps of different films share one scale and the pixel threshold calibrated on normal films means
  the same everywhere), resized back onto the slice's grid.

A volume is scored slice by slice like every model (the score is the most abnormal slice's); in training each of
its slices takes the volume's label, so classifiers are meant for films and labelled 2D slices.

Minimal subclass:

    @register("my-cnn")
    class MyClassifier(ClassifierModel):
        default_config = {**ClassifierModel.default_config, "classes": ["normal", "pneumonia"],
                          "image_size": 224, "gradcam_layer": "features.3"}

        def build_network(self):
            return MyNet(in_channels=self.config["input_channels"], num_classes=len(self.config["classes"]))
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .base import AnomalyModel, SliceScores, slices_of
from .data.manifest import NORMAL_LABEL_NAMES
from .errors import ManifestError
from .modalities import CHEST, CHEST_FILM_MODALITIES
from .preprocess import ResizeInfo, resize_keep_aspect, to_unit_range, undo_resize


BATCHNORM_FILMS = 256  # training films whose statistics the BatchNorm refresh after training uses


class ClassifierModel(AnomalyModel):
    kind = "classifier"
    supervised = True
    # Every classifier here reads chest films (their classes are chest findings); one for other films overrides.
    modalities = CHEST_FILM_MODALITIES
    body_parts = CHEST
    default_config = {
        "classes": ["normal", "abnormal"],  # class names; the normal one is `normal_class`, else the first
        "normal_class": None,
        "image_size": 224,
        "clip_percentiles": [0.5, 99.5],
        "input_channels": 1,  # 3 replicates the grey film into RGB for ImageNet-style networks
        "class_weighting": "balanced",  # "balanced" (n / (K * n_k)) or "none"
        "gradcam_layer": None,  # module name for Grad-CAM; subclasses set it
        # After training, re-estimate BatchNorm running statistics on the training films (one forward pass).
        # Why: networks with a slow BN momentum (MONAI's EfficientNet uses 0.01) keep near-initial running
        # statistics after a short run, and then score differently in eval mode than they trained.
        "refresh_batchnorm": True,
    }
    preprocessing_keys = ("image_size", "clip_percentiles", "input_channels")
    smoke_config = {"classes": ["normal", "pneumonia"], "image_size": 32, "epochs": 1, "batch_size": 6}

    def __init__(self, **config):
        super().__init__(**config)
        classes = [str(name) for name in self.config["classes"]]
        if len(classes) < 2 or len(set(name.lower() for name in classes)) != len(classes):
            raise ValueError(f"{self.name}: `classes` needs at least two distinct names, got {classes}")
        normal = self.config["normal_class"]
        lowered = [name.lower() for name in classes]
        if normal is not None and str(normal).lower() not in lowered:
            raise ValueError(f"{self.name}: normal_class {normal!r} is not one of {classes}")
        self.classes = classes
        self.normal_index = 0 if normal is None else lowered.index(str(normal).lower())
        self.abnormal_indices = [k for k in range(len(classes)) if k != self.normal_index]
        self.class_weights: torch.Tensor | None = None  # set from the training labels in select_training_items
        self._training_items: list | None = None  # kept from select_training_items until calibrate
        self.class_counts: dict[str, int] = {}
        self._gradcam = None

    # ----- labels -----
    def class_index(self, label) -> int | None:
        """The class index of a single-label item; None for a multi-label one. Unknown names raise ManifestError."""
        names = [name.strip() for name in str(label).split("|") if name.strip()]
        if len(names) != 1:
            return None
        name = names[0].lower()
        lowered = [c.lower() for c in self.classes]
        if name in lowered:
            return lowered.index(name)
        if name in ("0", "1", "false", "true"):
            if name in ("0", "false"):
                return self.normal_index
            if len(self.abnormal_indices) == 1:
                return self.abnormal_indices[0]
            raise ManifestError(f"{self.name}: label 1 is ambiguous with classes {self.classes}; name the class")
        if name in NORMAL_LABEL_NAMES:
            return self.normal_index
        raise ManifestError(f"{self.name}: label {label!r} is not one of the classes {self.classes}")

    def select_training_items(self, items: list) -> list:
        """Single-label items only; the class weights of the loss come from their labels."""
        chosen = [item for item in items if self.class_index(item.label) is not None]
        counts = np.bincount([self.class_index(item.label) for item in chosen], minlength=len(self.classes))
        self.class_counts = {name: int(n) for name, n in zip(self.classes, counts)}
        if self.config["class_weighting"] == "balanced" and chosen:
            weights = np.where(counts > 0, counts.sum() / (len(self.classes) * np.maximum(counts, 1)), 1.0)
            self.class_weights = torch.as_tensor(weights, dtype=torch.float32, device=self.device)
        elif self.config["class_weighting"] not in ("balanced", "none"):
            raise ValueError(f"{self.name}: class_weighting must be 'balanced' or 'none'")
        else:
            self.class_weights = None
        # The BatchNorm refresh after training reads these films again: a seeded sample of them is enough for
        # running statistics, and keeps that pass (memory and time) bounded on a 50,000-film training set.
        refresh = np.random.default_rng(int(self.config["seed"])).permutation(len(chosen))[:BATCHNORM_FILMS]
        self._training_items = [chosen[k] for k in sorted(refresh)]
        return chosen

    # ----- preprocessing -----
    def preprocess(self, slice_2d: np.ndarray) -> tuple[np.ndarray, ResizeInfo]:
        """(C, S, S) float32 in [0, 1] and how to put a map back on the slice's grid."""
        low, high = self.config["clip_percentiles"]
        unit, _ = to_unit_range(slice_2d, low, high)
        square, info = resize_keep_aspect(unit, int(self.config["image_size"]))
        return np.repeat(square[None], int(self.config["input_channels"]), axis=0), info

    def training_samples(self, item, rng=None) -> list[tuple[np.ndarray, ...]]:
        index = self.class_index(item.label)
        if index is None:
            return []
        target = np.asarray(index, dtype=np.int64)
        return [(self.preprocess(s)[0], target) for s in slices_of(item.image.array)]

    # ----- network outputs -----
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, K) class logits; override when the network returns more than that."""
        return self.network(x)

    def training_loss(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(x), target, weight=self.class_weights)

    def target_classes(self, probabilities: np.ndarray) -> np.ndarray:
        """The class each map explains: the most probable abnormal class of each slice."""
        abnormal = np.asarray(self.abnormal_indices)
        return abnormal[np.argmax(probabilities[:, abnormal], axis=1)]

    def gradcam(self, x: torch.Tensor, target: np.ndarray) -> torch.Tensor:
        """Raw Grad-CAM maps (N, S, S) of the given class per image at the input's size (MONAI GradCAM)."""
        from monai.visualize import GradCAM

        layer = self.config["gradcam_layer"]
        if not layer or layer not in dict(self.network.named_modules()):
            raise ValueError(f"{self.name}: gradcam_layer {layer!r} is not a module of the network")
        if self._gradcam is None or self._gradcam[0] != layer:
            # Built once: MONAI's hooks stay on the module, so one instance per model, not one per call.
            cam = GradCAM(nn_module=_LogitsOnly(self), target_layers=f"model.{layer}", postprocessing=lambda m: m)
            self._gradcam = (layer, cam)
        cam = self._gradcam[1]
        maps = torch.zeros((x.shape[0],) + tuple(x.shape[2:]), device=x.device)
        with torch.enable_grad():  # a caller's no_grad must not silence the gradients Grad-CAM needs
            for k in np.unique(target):  # MONAI's GradCAM takes one class index per call
                rows = torch.as_tensor(np.flatnonzero(target == k), device=x.device)
                maps[rows] = cam(x[rows], class_idx=int(k))[:, 0].detach()
        return maps

    def classify_batch(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, dict]:
        """-> (class probabilities (N, K), maps (N, S, S) on the square input, extras {name: (N, S, S)}).

        Default: softmax of `logits`, and Grad-CAM of each film's most probable abnormal class. A subclass whose
        network yields its own maps overrides this (one forward pass for both)."""
        with torch.no_grad():
            probabilities = torch.softmax(self.logits(x), dim=1).cpu().numpy()
        return probabilities, self.gradcam(x, self.target_classes(probabilities)).cpu().numpy(), {}

    # ----- scoring -----
    def score_slices(self, slices: list[np.ndarray]) -> SliceScores:
        prepared = [self.preprocess(s) for s in slices]
        batch_size = int(self.config["predict_batch_size"])
        probabilities, maps, extras = [], [], {}
        for start in range(0, len(prepared), batch_size):
            chunk = prepared[start:start + batch_size]
            x = torch.as_tensor(np.stack([square for square, _ in chunk]), device=self.device)
            p, chunk_maps, chunk_extras = self.classify_batch(x)
            probabilities.append(p)
            maps += [undo_resize(m, info) for m, (_, info) in zip(chunk_maps, chunk)]
            for name, values in chunk_extras.items():
                extras.setdefault(name, []).extend(undo_resize(m, info) for m, (_, info) in zip(values, chunk))
        probabilities = np.concatenate(probabilities)
        scores = 1.0 - probabilities[:, self.normal_index]
        per_slice = [{name: float(p) for name, p in zip(self.classes, row)} for row in probabilities]
        top = int(np.argmax(scores))
        meta = {
            "class_probabilities": per_slice[top],  # of the film, or of the volume's most abnormal slice
            "predicted_class": self.classes[int(np.argmax(probabilities[top]))],
            "normal_class": self.classes[self.normal_index],
        }
        if len(slices) > 1:
            meta["slice_class_probabilities"] = per_slice
        return SliceScores(scores=scores, maps=maps, extras=extras, meta=meta)

    @torch.no_grad()
    def refresh_batchnorm(self, items: list) -> None:
        """Recompute every BatchNorm's running mean and variance as the average over the items' films."""
        squares = [self.preprocess(s)[0] for item in items for s in slices_of(item.image.array)]
        batches = [torch.as_tensor(np.stack(squares[i:i + int(self.config["batch_size"])]))
                   for i in range(0, len(squares), int(self.config["batch_size"]))]
        torch.optim.swa_utils.update_bn(batches, self.network, device=self.device)
        self.network.eval()
        self._weights_sha = None

    def calibrate(self, val, source: str = "validation") -> dict:
        # fit() calls calibrate right after the last epoch: the moment to settle the BatchNorm statistics.
        if self._training_items and self.config["refresh_batchnorm"]:
            self.refresh_batchnorm(self._training_items)
        self._training_items = None
        calibration = super().calibrate(val, source)
        if self.class_counts:
            self.stats["training_class_counts"] = dict(self.class_counts)
        return calibration


class _LogitsOnly(torch.nn.Module):
    """The model's `logits` as a module, for Grad-CAM when the network's forward returns more than logits."""

    def __init__(self, model: ClassifierModel):
        super().__init__()
        self.model = model.network
        self._logits = model.logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._logits(x)
