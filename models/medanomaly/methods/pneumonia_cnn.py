"""The pneumonia paper's CNN baseline: a small supervised classifier of normal vs pneumonia films, trained with a
class-balanced loss; its anomaly map is Grad-CAM (`monai.visualize.GradCAM`) on the last conv layer.

Everything but the network comes from the shared classifier base: score = P(pneumonia), per-class probabilities
in `meta["class_probabilities"]`, maps back on the film's grid."""
from __future__ import annotations

import torch

from ..classifier import ClassifierModel
from ..nets.pneumonia_cnn import SmallPneumoniaCNN
from ..registry import register


@register("pneumonia-cnn")
class PneumoniaCNNModel(ClassifierModel):
    description = ("Small CNN baseline (pneumonia paper): 3 conv + max-pool, batch norm, FC, dropout 0.5, FC; "
                   "class-balanced loss. Map: Grad-CAM; score: P(pneumonia).")
    default_config = {
        **ClassifierModel.default_config,
        "classes": ["normal", "pneumonia"],
        "image_size": 224,
        "channels": [16, 32, 64],
        "hidden": 64,
        "dropout": 0.5,
        "gradcam_layer": "features.conv3",
        "batch_size": 32,
        "learning_rate": 1e-3,
        "epochs": 10,
    }

    smoke_config = {**ClassifierModel.smoke_config, "channels": [4, 8, 8], "hidden": 8}

    def build_network(self) -> torch.nn.Module:
        return SmallPneumoniaCNN(int(self.config["image_size"]), int(self.config["input_channels"]),
                                 self.config["channels"], int(self.config["hidden"]), len(self.config["classes"]),
                                 float(self.config["dropout"]))
