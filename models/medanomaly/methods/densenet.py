"""DenseNet-121 classifier: the GCM paper's baseline (MONAI DenseNet121, Adam 1e-5, random initialisation)."""
from __future__ import annotations

import torch
from monai.networks.nets import DenseNet121

from ..classifier import ClassifierModel
from ..registry import register


@register("densenet121")
class DenseNet121Classifier(ClassifierModel):
    description = ("DenseNet-121 classifier (MONAI), class-weighted cross entropy. Score: 1 - P(normal class); "
                   "map: Grad-CAM of the most probable abnormal class; per-class probabilities in meta.")
    default_config = {
        **ClassifierModel.default_config,
        "classes": ["No Finding", "Cardiomegaly", "Pneumothorax", "Effusion"],
        "image_size": 256,
        "input_channels": 3,  # the same replicated-grey input as GCM
        "gradcam_layer": "class_layers.relu",  # the last feature maps, after the final BatchNorm + ReLU
        "learning_rate": 1e-5,
        "batch_size": 16,
    }

    def build_network(self) -> torch.nn.Module:
        return DenseNet121(spatial_dims=2, in_channels=int(self.config["input_channels"]),
                           out_channels=len(self.config["classes"]))
