"""The names of the metrics a trial reports, made in one place: `val_acc`, `train_loss`, `scheduled_lr`, and per
block of a local-learning trainer `blocks/val_acc_b03` (block K is the network's own classifier). `tuner.trial.epoch`
names what the trainers measure with these; the tracker, the report and the benches read them back with these.

Per-block names carry a `blocks/` prefix and a zero-padded block number because MLflow's chart view groups charts
into sections by the prefix before `/` and sorts them by name: the blocks get a section of their own, in depth order.
"""

from __future__ import annotations

import re

BLOCK_PREFIX = "blocks/"
SCHEDULED_LR = "scheduled_lr"  # the optimiser's learning rate this epoch; the searched `lr` is its peak (a param)
_BLOCK = re.compile(r"blocks/(\w+)_acc_b(\d+)")


def split_metric(split: str, name: str) -> str:
    """`val` + `loss` -> `val_loss`."""
    return f"{split}_{name}"


def block_metric(block: int, split: str) -> str:
    """The accuracy of block `block`'s classifier (1-based) on `split`: `blocks/val_acc_b03`."""
    return f"{BLOCK_PREFIX}{split}_acc_b{block:02d}"


def is_block_metric(key: str) -> bool:
    return _BLOCK.fullmatch(key) is not None


def block_accuracies(metrics: dict, split: str) -> list:
    """[block 1, block 2, ...] from `metrics`, stopping at the first block missing."""
    values, block = [], 1
    while block_metric(block, split) in metrics:
        values.append(metrics[block_metric(block, split)])
        block += 1
    return values
