"""What sits beside a block in local learning: DGL's auxiliary classifiers and DNI's synthetic-gradient modules."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.networks import NUM_CLASSES, mlp


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


def aux_head(family: str, channels: int, size: int, width: int, depth: int, pool: int) -> nn.Sequential:
    """A DGL auxiliary classifier for a block output of shape (channels, size, size).

    - `mlp`:    average-pool to pool x pool -> MLP with `depth` hidden layers of `width` (BN, ReLU); the write-up's head.
    - `mlp_sr`: DGL's own default ("MLP-SR"): pool to a quarter of the size, `depth` 1x1 conv-BN-ReLU at the block's
                width, pool to 2x2, then a 3-layer MLP (two hidden layers of `width`).
    - `conv`:   `depth` 3x3 conv-BN-ReLU of `width` channels -> average-pool to pool x pool -> linear.
    """
    pool = min(pool, size)
    if family == "mlp":
        return nn.Sequential(nn.AdaptiveAvgPool2d(pool), *mlp(channels * pool * pool, [width] * depth, batchnorm=True))
    if family == "mlp_sr":
        layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(math.ceil(size / 4))]
        for _ in range(depth):
            layers += conv_bn_relu(channels, channels, 1)
        pooled = min(2, math.ceil(size / 4))
        layers.append(nn.AdaptiveAvgPool2d(pooled))
        return nn.Sequential(*layers, *mlp(channels * pooled * pooled, [width, width], batchnorm=True))
    if family == "conv":
        layers, in_channels = [], channels
        for _ in range(depth):
            layers += conv_bn_relu(in_channels, width, 3)
            in_channels = width
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(pool), nn.Flatten(),
                             nn.Linear(in_channels * pool * pool, NUM_CLASSES))
    raise ValueError(f"unknown aux_head '{family}'; allowed: mlp, mlp_sr, conv")


class SyntheticGradient(nn.Module):
    """DNI: predicts dLoss/d(block output) from the block output, same shape.

    Conv-BN-ReLU-Conv-BN-ReLU-Conv, channels and size preserved. The last conv starts at zero, so the first
    synthetic gradients are zero rather than noise (as in Jaderberg et al.). With `conditioned` (cDNI), the one-hot
    label goes through a Linear and is added, broadcast over space, to the first conv's output.
    """

    def __init__(self, channels: int, conditioned: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.label_context = nn.Linear(NUM_CLASSES, channels, bias=False) if conditioned else None
        self.rest = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
                                  *conv_bn_relu(channels, channels, 3),
                                  nn.Conv2d(channels, channels, 3, padding=1))
        nn.init.zeros_(self.rest[-1].weight)
        nn.init.zeros_(self.rest[-1].bias)

    def forward(self, h: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        z = self.conv1(h)
        if self.label_context is not None:
            # Linear(one_hot(y)) without bias is column y of its weight: looked up directly. F.one_hot reads the labels'
            # min and max back to the host to check them (on the CPU), a wait per step that an epoch must not have
            context = F.embedding(labels, self.label_context.weight.t()).to(z.dtype)
            z = z + context[:, :, None, None]
        return self.rest(z)
