"""Generative Contribution Mappings network: a pretrained ImageNet encoder cut at its 16x16x112 stage (for a
256x256x3 input) and a decoder that paints one class weight map (CWM) per class at the input's size.

The class score is linear in the CWM: the class contribution map is CCM_k = input * CWM_k, and the logit of
class k is the mean of CCM_k over space and channels. The explanation is therefore exact: the logit is the sum
of what each pixel contributes, and CWM_k says how much each pixel's intensity counts for class k.

The encoder is EfficientNet-Lite0 with its ImageNet weights (`nets.pretrained_encoder`, the B0 stage layout, so the
paper's 112-channel stage at 1/16 of the input exists), frozen as in the paper: only the decoder trains. With
`fine_tune_encoder=True` the encoder trains too."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution, UpSample
from torch import nn

from .pretrained_encoder import PretrainedEncoder

# EfficientNet's 7 stages; the output of stage 5 is the 112-channel map at 1/16 of the input.
STAGE_TO_112 = 5


def separable_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """Depthwise 3x3 then pointwise 1x1, followed by BatchNorm and ReLU."""
    return nn.Sequential(
        Convolution(2, in_channels, in_channels, kernel_size=3, groups=in_channels, bias=False, conv_only=True),
        Convolution(2, in_channels, out_channels, kernel_size=1, norm="BATCH", act="RELU"),
    )


class GenerativeContributionNet(nn.Module):
    """(N, C, S, S) in [0, 1] -> (logits (N, K), class weight maps (N, K, S, S)); S a multiple of 16. The encoder
    normalises the [0, 1] input with the ImageNet statistics itself; the logits use the [0, 1] input.

    Decoder: a 3x3 conv at the encoder's resolution, four rounds of bilinear x2 upsampling each followed by a
    separable conv (512, 256, 128, 64 channels by default), a final 3x3 conv to K maps. Every conv has
    BatchNorm and ReLU, so the CWMs are non-negative. `cwm_activation="softplus"` replaces the last ReLU by a
    softplus: the CWMs stay positive, but a class whose map reached zero everywhere can still learn (with the
    ReLU such a class map is dead for good: zero map, zero logit, zero gradient)."""

    def __init__(self, num_classes: int, in_channels: int = 3, bottleneck_channels: int = 112,
                 decoder_channels: Sequence[int] = (512, 256, 128, 64), cwm_activation: str = "relu",
                 encoder_weights=None, fine_tune_encoder: bool = False):
        super().__init__()
        if cwm_activation not in ("relu", "softplus"):
            raise ValueError(f"cwm_activation must be 'relu' or 'softplus', got {cwm_activation!r}")
        if len(decoder_channels) != 4:
            raise ValueError("the decoder upsamples x16 in four rounds: give four decoder channel counts")
        if in_channels not in (1, 3):
            raise ValueError(f"the ImageNet encoder reads 1 (grey, repeated) or 3 channels, got {in_channels}")
        self.encoder = PretrainedEncoder((STAGE_TO_112,), encoder_weights, trainable=fine_tune_encoder)
        layers = [Convolution(2, self.encoder.out_channels[0], bottleneck_channels, kernel_size=3, norm="BATCH",
                              act="RELU")]
        channels = bottleneck_channels
        for out in decoder_channels:
            layers += [UpSample(2, scale_factor=2, mode="nontrainable", interp_mode="bilinear", align_corners=False),
                       separable_conv(channels, out)]
            channels = out
        if cwm_activation == "relu":
            layers.append(Convolution(2, channels, num_classes, kernel_size=3, norm="BATCH", act="RELU"))
        else:
            layers += [Convolution(2, channels, num_classes, kernel_size=3, norm="BATCH", act=None), nn.Softplus()]
        self.decoder = nn.Sequential(*layers)

    def class_weight_maps(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x)[0])

    @staticmethod
    def contribution_maps(x: torch.Tensor, cwm: torch.Tensor) -> torch.Tensor:
        """CCM (N, K, C, S, S) = input * CWM of each class."""
        return x.unsqueeze(1) * cwm.unsqueeze(2)

    @staticmethod
    def class_scores(x: torch.Tensor, cwm: torch.Tensor) -> torch.Tensor:
        """Mean of the CCM over channels and space, without materialising the (N, K, C, S, S) tensor."""
        return torch.einsum("nchw,nkhw->nk", x, cwm) / (x.shape[1] * x.shape[2] * x.shape[3])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cwm = self.class_weight_maps(x)
        return self.class_scores(x, cwm), cwm
