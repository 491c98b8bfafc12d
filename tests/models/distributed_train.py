"""Launched by test_distributed.py under torchrun: the real command line `medanomaly train`, with one more model
registered, a small autoencoder normalised per film (GroupNorm) instead of per batch. Its loss is then the same on
any split of a batch, so two processes must match one process up to float rounding; with BatchNorm, each process
would normalise over its own half of the batch (torch has no SyncBatchNorm on CPUs)."""
import sys

from torch import nn

from medanomaly.cli import main
from medanomaly.methods.autoencoder import ConvAutoEncoderModel
from medanomaly.registry import register


@register("ae-groupnorm")
class GroupNormAutoEncoder(ConvAutoEncoderModel):
    def build_network(self) -> nn.Module:
        first, second = self.config["channels"][:2]
        return nn.Sequential(
            nn.Conv2d(1, first, 3, padding=1), nn.GroupNorm(4, first), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(first, second, 3, padding=1), nn.GroupNorm(4, second), nn.ReLU(),
            nn.Upsample(scale_factor=2), nn.Conv2d(second, 1, 3, padding=1), nn.Sigmoid())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
