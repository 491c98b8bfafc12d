"""The chest X-ray VAE paper's supervised baseline: a small CNN, normal vs abnormal, on 100x100 films, Adam."""
from __future__ import annotations

import torch

from ..classifier import ClassifierModel
from ..nets.small_cnn import SmallChestCNN
from ..registry import register


@register("cxr-cnn")
class SmallChestCNNClassifier(ClassifierModel):
    description = ("Small supervised CNN (Conv32-Conv32-MaxPool-Dropout-FC128-Dropout-Softmax) on 100x100 films, "
                   "normal vs abnormal. Score: P(abnormal); map: Grad-CAM of the last convolution.")
    default_config = {
        **ClassifierModel.default_config,
        "classes": ["normal", "abnormal"],
        "image_size": 100,
        "input_channels": 1,
        "gradcam_layer": "features.1",  # the second convolution's block (conv + ReLU)
        "learning_rate": 1e-3,
        "batch_size": 32,
    }

    def build_network(self) -> torch.nn.Module:
        return SmallChestCNN(len(self.config["classes"]), int(self.config["input_channels"]),
                             int(self.config["image_size"]))
