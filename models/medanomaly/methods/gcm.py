"""Generative Contribution Mappings (GCM): a chest-film classifier whose explanation is part of its score.

The network paints a class weight map (CWM) per class; the class logit is the mean of input x CWM. So a CWM is
not a post-hoc heat map: it is exactly how much each pixel's intensity adds to that class's score.

What the server gets: score = 1 - P(normal class); map = the abnormal classes' CWMs weighted by their
probabilities, sum_k P(k) CWM_k over k != normal (one map that is bright where an abnormality the model
believes in is drawn, and faint on a film it calls normal); every class's CWM in extras as "cwm_<class>"
(lower case, non-alphanumerics as "_": "cwm_no_finding"); per-class probabilities in meta.
`save_explanation` writes the paper's figure: the predicted class's CWM coloured over the film.

Pretrained encoder: ImageNet weights cannot be downloaded here. Give a local file in config `encoder_weights`
(a state dict of MONAI's EfficientNetBN / EfficientNetBNFeatures("efficientnet-b0"), or the original
EfficientNet-B0 ImageNet file, optionally wrapped as {"state_dict": ...} or prefixed "encoder."/"module.");
it is loaded by key when a fresh training run starts, and what matched, was missing or was unexpected is
recorded in `model.encoder_weights_report` and in the checkpoint's stats. Without a file the encoder trains
from scratch."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from ..base import as_medical_image
from ..classifier import ClassifierModel
from ..errors import CheckpointError
from ..nets.gcm import GenerativeContributionNet
from ..registry import register


def class_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_")


@register("gcm")
class GenerativeContributionModel(ClassifierModel):
    description = ("Generative Contribution Mappings: EfficientNet-B0 encoder (to 16x16x112) and a decoder that "
                   "paints one class weight map per class; logit = mean(input x CWM). Score: 1 - P(normal); "
                   "map: abnormal CWMs weighted by their probabilities; all CWMs in extras.")
    version = "1"
    default_config = {
        **ClassifierModel.default_config,
        "classes": ["No Finding", "Cardiomegaly", "Pneumothorax", "Effusion"],
        "image_size": 256,  # the paper's 256x256x3 input; any multiple of 16 works
        "input_channels": 3,
        "bottleneck_channels": 112,
        "decoder_channels": [512, 256, 128, 64],
        # The paper ends on BatchNorm + ReLU; "softplus" (default) keeps the maps positive without letting a class
        # map die: with the ReLU, 2 of the 4 NIH class maps were zero everywhere after 5 epochs (see nets/gcm.py).
        "cwm_activation": "softplus",
        "encoder_weights": None,  # path of a local EfficientNet-B0 state dict; None trains from scratch
        "optimizer": "sgd",  # the paper: SGD, learning rate 0.1, batch 32
        "learning_rate": 0.1,
        "momentum": 0.0,
        "batch_size": 32,
    }
    preprocessing_keys = ClassifierModel.preprocessing_keys

    def __init__(self, **config):
        super().__init__(**config)
        if int(self.config["image_size"]) % 16:
            raise ValueError(f"gcm: image_size must be a multiple of 16, got {self.config['image_size']}")
        self.encoder_weights_report: dict | None = None

    def build_network(self) -> torch.nn.Module:
        return GenerativeContributionNet(len(self.config["classes"]), int(self.config["input_channels"]),
                                         int(self.config["bottleneck_channels"]), self.config["decoder_channels"],
                                         self.config["cwm_activation"])

    def make_optimizer(self) -> torch.optim.Optimizer:
        if self.config["optimizer"] == "sgd":
            return torch.optim.SGD(self.network.parameters(), lr=self.config["learning_rate"],
                                   momentum=self.config["momentum"])
        if self.config["optimizer"] == "adam":
            return torch.optim.Adam(self.network.parameters(), lr=self.config["learning_rate"])
        raise ValueError(f"gcm: optimizer must be 'sgd' or 'adam', got {self.config['optimizer']!r}")

    # ----- pretrained encoder from a local file -----
    def load_encoder_weights(self, path: str | Path | None = None) -> dict:
        """Load EfficientNet-B0 weights into the encoder by key; returns (and keeps) what matched and what not."""
        path = Path(path if path is not None else self.config["encoder_weights"] or "")
        if not path.is_file():
            raise CheckpointError(f"gcm: encoder weights file {path} does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any unreadable file gets the same typed error
            raise CheckpointError(f"gcm: cannot read encoder weights {path}: {error}") from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise CheckpointError(f"gcm: {path} does not hold a state dict")
        state = {re.sub(r"^(module\.|encoder\.)+", "", key): value for key, value in state.items()}
        own = self.network.encoder.state_dict()
        matched = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
        if not matched:
            raise CheckpointError(f"gcm: no key of {path} fits the EfficientNet-B0 encoder "
                                  f"(e.g. {sorted(state)[:3]}; expected e.g. {sorted(own)[:3]})")
        self.network.encoder.load_state_dict(matched, strict=False)
        self._weights_sha = None
        self.encoder_weights_report = {
            "path": str(path),
            "loaded": len(matched),
            "missing_keys": sorted(set(own) - set(matched)),
            "unexpected_keys": sorted(set(state) - set(own)),
            "shape_mismatch": sorted(k for k in state if k in own and k not in matched),
        }
        return self.encoder_weights_report

    def fit(self, train, val=None, **kwargs):
        path = kwargs.get("encoder_weights", self.config["encoder_weights"])
        if path and self.train_state["epoch"] == 0:  # a resumed run keeps its own weights
            self.load_encoder_weights(path)
        return super().fit(train, val, **kwargs)

    def calibrate(self, val, source: str = "validation") -> dict:
        calibration = super().calibrate(val, source)
        if self.encoder_weights_report is not None:
            self.stats["encoder_weights"] = {k: v if not isinstance(v, list) else len(v)
                                             for k, v in self.encoder_weights_report.items()}
        return calibration

    # ----- scores and maps -----
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)[0]

    def classify_batch(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, dict]:
        with torch.no_grad():
            logits, cwm = self.network(x)
        probabilities = torch.softmax(logits, dim=1).cpu().numpy()
        cwm = cwm.cpu().numpy()  # (N, K, S, S)
        abnormal = self.abnormal_indices
        combined = np.einsum("na,nahw->nhw", probabilities[:, abnormal], cwm[:, abnormal])
        extras = {f"cwm_{class_slug(name)}": cwm[:, k] for k, name in enumerate(self.classes)}
        return probabilities, combined, extras

    def save_explanation(self, image, path: str | Path, title: str | None = None) -> Path:
        """PNG of the predicted class's CWM in colour over the film (a volume: its most abnormal slice)."""
        from ..visualize import save_overlay

        image = as_medical_image(image)
        result = self.predict(image)
        predicted = result.meta["predicted_class"]
        cwm = result.extras[f"cwm_{class_slug(predicted)}"]
        probability = result.meta["class_probabilities"][predicted]
        label = title if title is not None else f"GCM: {predicted} (P={probability:.2f}) CWM"
        # Colours span the film's own 1st-99.5th percentile of the CWM: where this class's weight is high here.
        return save_overlay(path, image.array, cwm, title=label)
