"""The networks of models/catalog.py, built by name into a sequence of blocks.

A network is a list of conv *units* (conv-BN-ReLU, with the max-pool that follows it, as in timm's VGG cfgs),
grouped into `num_blocks` contiguous *blocks* — the unit that local learning trains on its own — and a
classifier. Backprop sees the same modules; only the grouping matters to the local trainers, and one block is
ordinary backprop.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn

from models.catalog import CFGS, HIDDEN, IMAGE_CHANNELS, IMAGE_SIZE, KERNEL, NUM_CLASSES


def scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def conv_units(name: str, width: float = 1.0, dropout: float = 0.0) -> tuple[list[nn.Sequential], int, int]:
    """The conv units of `name`, and the (channels, spatial size) that come out of the last one."""
    if name not in CFGS:
        raise ValueError(f"unknown model '{name}'; allowed: {', '.join(CFGS)}")
    kernel = KERNEL.get(name, 3)
    units: list[nn.Sequential] = []
    in_channels, size = IMAGE_CHANNELS, IMAGE_SIZE
    for item in CFGS[name]:
        if item == "M":
            units[-1].append(nn.MaxPool2d(2))
            size //= 2
            continue
        out_channels = scaled(item, width)
        unit = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        units.append(unit)
        in_channels = out_channels
    if dropout > 0:
        for unit in units:
            unit.append(nn.Dropout(dropout))
    return units, in_channels, size


def group_units(units: list, num_blocks: int) -> list[nn.Sequential]:
    """Contiguous groups, as even as possible (earlier groups take the remainder)."""
    if not 1 <= num_blocks <= len(units):
        raise ValueError(f"num_blocks must be between 1 and {len(units)} for this model, got {num_blocks}")
    size, extra = divmod(len(units), num_blocks)
    blocks, start = [], 0
    for i in range(num_blocks):
        end = start + size + (1 if i < extra else 0)
        blocks.append(nn.Sequential(*[layer for unit in units[start:end] for layer in unit]))
        start = end
    return blocks


def mlp(in_features: int, hidden: list[int], batchnorm: bool) -> nn.Sequential:
    """Flatten -> [Linear (BN) ReLU] per hidden width -> Linear to the classes."""
    layers: list[nn.Module] = [nn.Flatten()]
    for width in hidden:
        layers += [nn.Linear(in_features, width, bias=not batchnorm)]
        layers += [nn.BatchNorm1d(width)] if batchnorm else []
        layers += [nn.ReLU(inplace=True)]
        in_features = width
    layers.append(nn.Linear(in_features, NUM_CLASSES))
    return nn.Sequential(*layers)


class Network(nn.Module):
    """`blocks` run in order, then `classifier`. `block_shapes[i]` is (channels, size) after block i."""

    def __init__(self, blocks: Sequence[nn.Module], classifier: nn.Module, block_shapes: list[tuple[int, int]]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.classifier = classifier
        self.block_shapes = block_shapes

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.classifier(x)


def build_network(name: str, width: float = 1.0, num_blocks: int | None = None, dropout: float = 0.0) -> Network:
    """`num_blocks` None: one block per conv unit (the write-up's DGL setting)."""
    units, channels, size = conv_units(name, width, dropout)
    blocks = group_units(units, num_blocks or len(units))
    classifier = mlp(channels * size * size, [scaled(h, width) for h in HIDDEN.get(name, [])], batchnorm=False)
    return Network(blocks, classifier, block_output_shapes(blocks))


def block_output_shapes(blocks) -> list[tuple[int, int]]:
    """(channels, spatial size) after each block, read off the modules (no forward pass needed)."""
    shapes, channels, size = [], IMAGE_CHANNELS, IMAGE_SIZE
    for block in blocks:
        for layer in block:
            if isinstance(layer, nn.Conv2d):
                channels = layer.out_channels
            elif isinstance(layer, nn.MaxPool2d):
                size //= 2
        shapes.append((channels, size))
    return shapes
