"""What sits beside a block in local learning: DGL's auxiliary classifiers and DNI's synthetic-gradient modules.

Head families, each named for where it comes from (`aux_head`):
- `flatten_mlp`: the write-up's head (AlonNT/Thesis, vgg.py `get_blocks` -> utils.py `get_mlp`): the whole block
                 output flattened, no pooling, no batch norm: Flatten -> [Linear(., aux_width) -> ReLU] x aux_depth
                 -> Linear(., 10). The write-up used aux_width 512, aux_depth 1.
- `mlp_sr`:      eugenium/DGL's MLP-SR (auxiliary_nets_study/models.py, `auxillary_classifier2` with aux_type
                 'mlp-sr'): fixed by the block's shape, no free width or depth.
- `nokland`:     Nøkland & Eidnes' prediction decoder (anokland/local-loss, train.py `LocalLossBlockConv`):
                 average-pool until C*h*w <= 4096 (`--dim-in-decoder`), then one zero-initialised Linear to the
                 classes. Its similarity loss adds a learned 3x3 conv, `similarity_conv` below.
- `pooled_mlp`:  this project's variant: adaptive average-pool to aux_pool x aux_pool -> [Linear -> BN -> ReLU] x
                 aux_depth of aux_width -> Linear.
- `conv`:        this project's variant: [3x3 conv -> BN -> ReLU] x aux_convs of aux_width channels -> adaptive
                 average-pool to aux_pool x aux_pool -> Linear.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import TrialConfig
from models.catalog import HEAD_FAMILIES, NUM_CLASSES
from models.networks import mlp

NOKLAND_DECODER_INPUTS = 4096  # anokland/local-loss train.py: --dim-in-decoder default


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


def flatten_mlp(channels: int, size: int, width: int, depth: int) -> nn.Sequential:
    """The write-up's head: every activation of the block output feeds the first Linear (biases, no BN)."""
    layers: list[nn.Module] = [nn.Flatten()]
    in_features = channels * size * size
    for _ in range(depth):
        layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True)]
        in_features = width
    return nn.Sequential(*layers, nn.Linear(in_features, NUM_CLASSES))


def mlp_sr(channels: int, size: int) -> nn.Sequential:
    """eugenium/DGL's MLP-SR: average-pool to ceil(size/4), three [1x1 conv -> BN -> ReLU] at the block's width,
    average-pool to 2x2, then three [Linear -> BN1d -> ReLU] of 4C units and a Linear to the classes. (The reference
    also builds a BatchNorm2d that its forward never uses when it has an MLP; it is left out here.)"""
    layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(math.ceil(size / 4))]
    for _ in range(3):
        layers += conv_bn_relu(channels, channels, 1)
    layers.append(nn.AdaptiveAvgPool2d(2))
    layers.append(nn.Flatten())
    features = 4 * channels
    for _ in range(3):
        layers += [nn.Linear(features, features), nn.BatchNorm1d(features), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.Linear(features, NUM_CLASSES))


def nokland_pool(channels: int, size: int, target: int = NOKLAND_DECODER_INPUTS) -> tuple[int, int, int, int]:
    """Nøkland's average-pool kernel for the decoder: doubled (height first, then width) until C*h*w <= target.
    Returns (kernel_h, kernel_w, out_h, out_w), as `LocalLossBlockConv.__init__` resolves them."""
    ks_h = ks_w = 1
    out_h = out_w = size
    inputs = channels * out_h * out_w
    while inputs > target and ks_h < size:
        ks_h *= 2
        out_h = math.ceil(size / ks_h)
        inputs = channels * out_h * out_w
        if inputs > target:
            ks_w *= 2
            out_w = math.ceil(size / ks_w)
            inputs = channels * out_h * out_w
    return ks_h, ks_w, out_h, out_w


def nokland(channels: int, size: int) -> nn.Sequential:
    """Nøkland's decoder_y: AvgPool (his kernel and padding) -> Flatten -> Linear, weight initialised to zero."""
    ks_h, ks_w, out_h, out_w = nokland_pool(channels, size)
    layers: list[nn.Module] = []
    if ks_h > 1 or ks_w > 1:
        pad_h, pad_w = (ks_h * (out_h - size // ks_h)) // 2, (ks_w * (out_w - size // ks_w)) // 2
        layers.append(nn.AvgPool2d((ks_h, ks_w), padding=(pad_h, pad_w)))
    decoder = nn.Linear(channels * out_h * out_w, NUM_CLASSES)
    nn.init.zeros_(decoder.weight)
    return nn.Sequential(*layers, nn.Flatten(), decoder)


def similarity_conv(channels: int) -> nn.Conv2d:
    """Nøkland's `conv_loss`: the learned 3x3 conv whose output the similarity loss compares (no bias)."""
    return nn.Conv2d(channels, channels, 3, padding=1, bias=False)


def aux_head(cfg: TrialConfig, channels: int, size: int) -> nn.Sequential:
    """The DGL auxiliary classifier `cfg.aux_head` for a block output of shape (channels, size, size)."""
    family = cfg.aux_head
    if family == "flatten_mlp":
        return flatten_mlp(channels, size, cfg.aux_width, cfg.aux_depth)
    if family == "mlp_sr":
        return mlp_sr(channels, size)
    if family == "nokland":
        return nokland(channels, size)
    pool = min(cfg.aux_pool, size)
    if family == "pooled_mlp":
        return nn.Sequential(
            nn.AdaptiveAvgPool2d(pool), *mlp(channels * pool * pool, [cfg.aux_width] * cfg.aux_depth, batchnorm=True)
        )
    if family == "conv":
        layers, in_channels = [], channels
        for _ in range(cfg.aux_convs):
            layers += conv_bn_relu(in_channels, cfg.aux_width, 3)
            in_channels = cfg.aux_width
        return nn.Sequential(
            *layers, nn.AdaptiveAvgPool2d(pool), nn.Flatten(), nn.Linear(in_channels * pool * pool, NUM_CLASSES)
        )
    raise ValueError(f"unknown aux_head '{family}'; allowed: {', '.join(HEAD_FAMILIES)}")


class SyntheticGradient(nn.Module):
    """DNI: predicts dLoss/d(block output) from the block output, same shape.

    The write-up's module (AlonNT/Thesis, model.py `ConvSynthesizer`): Conv -> BN -> ReLU -> Conv -> BN -> ReLU ->
    Conv, channels and size preserved, biases on every conv, the last conv's weight initialised to zero (its bias
    keeps PyTorch's default, as there). With `conditioned` (cDNI) the one-hot label goes through a Linear (with
    bias) and is added, broadcast over space, to the first conv's output. The write-up's kernel is 5 (`sg_kernel`).

    `last_init`: "zero_weight" is the write-up's, and the reference code's too (eugenium/DGL
    dni_comparisons/cifar_cnn_dni.py and koz4k/dni-pytorch examples/mnist-cnn/main.py, `ConvSynthesizer`: "zero-
    initialize the last layer, as in the paper", the weight only). "zero" zeroes the bias as well, so a module
    starts at a zero synthetic gradient instead of a constant one set by a random bias.
    """

    def __init__(self, channels: int, conditioned: bool = False, kernel: int = 5, last_init: str = "zero_weight"):
        super().__init__()
        padding = kernel // 2
        self.conv1 = nn.Conv2d(channels, channels, kernel, padding=padding)
        self.label_context = nn.Linear(NUM_CLASSES, channels) if conditioned else None
        self.rest = nn.Sequential(
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, kernel, padding=padding),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        last = nn.Conv2d(channels, channels, kernel, padding=padding)
        self.rest.append(last)
        nn.init.zeros_(last.weight)
        if last_init == "zero" and last.bias is not None:  # typed Optional; this conv has one
            nn.init.zeros_(last.bias)

    def forward(self, h: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        z = self.conv1(h)
        if self.label_context is not None:
            assert labels is not None, "a conditioned (cDNI) module predicts from the labels too"
            # Linear(one_hot(y)) is column y of its weight plus its bias: looked up directly. F.one_hot reads the
            # labels' min and max back to the host to check them (on the CPU), a wait per step an epoch must not have
            context = F.embedding(labels, self.label_context.weight.t()) + self.label_context.bias
            z = z + context.to(z.dtype)[:, :, None, None]
        return self.rest(z)
