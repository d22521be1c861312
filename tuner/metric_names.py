"""The names of the metrics a trial reports, made in one place: `val_acc`, `train_loss`, and per block of a
local-learning trainer `block3_val_acc` (block K is the network's own classifier). `tuner.epoch` names what the
trainers measure with these; the tracker, the report and the benches read them back with these."""

from __future__ import annotations

import re

_BLOCK = re.compile(r"block(\d+)_(\w+)_acc")


def split_metric(split: str, name: str) -> str:
    """`val` + `loss` -> `val_loss`."""
    return f"{split}_{name}"


def block_metric(block: int, split: str) -> str:
    """The accuracy of block `block`'s classifier (1-based) on `split`: `block3_val_acc`."""
    return f"block{block}_{split}_acc"


def is_block_metric(key: str) -> bool:
    return _BLOCK.fullmatch(key) is not None


def block_accuracies(metrics: dict, split: str) -> list:
    """[block 1, block 2, ...] from `metrics`, stopping at the first block missing."""
    values, block = [], 1
    while block_metric(block, split) in metrics:
        values.append(metrics[block_metric(block, split)])
        block += 1
    return values
