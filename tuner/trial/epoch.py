"""One epoch, as every caller runs it: train on the training split, evaluate on validation, time it.

Metric names (`val_acc`, `blocks/val_acc_b03`, ...) come from `tuner.trial.metric_names`; this is the one place they are
given to what the trainers measure, shared by `tuner.train` (no Ray) and the Ray trainable, so a run and a trial
report the same thing.
"""

from __future__ import annotations

import math
import time

import torch

from models.trainer_base import Trainer
from tuner.trial.data import CifarData, Split
from tuner.trial.metric_names import SCHEDULED_LR, block_metric, split_metric


def steps_per_epoch(train: Split, batch_size: int) -> int:
    return train.num_batches(batch_size, train=True)


def evaluate_split(trainer: Trainer, split: Split, prefix: str) -> dict:
    """`prefix`_loss, `prefix`_acc and per block `blocks/{prefix}_acc_b{i:02d}`."""
    metrics = trainer.evaluate(split.batches(trainer.cfg.eval_batch_size, train=False))
    return {_block_name(key, prefix) or split_metric(prefix, key): value for key, value in metrics.items()}


def _block_name(key: str, split: str) -> str | None:
    """The trainer's `block3_acc` / `block3_train_acc` as `blocks/{split}_acc_b03`; None for any other key."""
    if not key.startswith("block"):
        return None
    return block_metric(int(key[len("block") :].split("_", 1)[0]), split)


def run_epoch(trainer: Trainer, data: CifarData) -> dict:
    """Train one epoch and validate. `diverged` is True when a loss stopped being finite."""
    cfg = trainer.cfg

    def synchronize() -> None:  # the GPU's queued work done, for the clock
        if trainer.on_cuda:
            torch.cuda.synchronize()

    lr = trainer.current_lr()
    synchronize()
    start = time.perf_counter()
    epoch = trainer.epoch
    batches = data.train.batches(cfg.batch_size, train=True, seed=cfg.seed, epoch=epoch, augment=cfg.augment)
    train_metrics = {_block_name(key, "train") or key: value for key, value in trainer.train_epoch(batches).items()}
    synchronize()
    train_seconds = time.perf_counter() - start
    metrics = {"epoch": trainer.epoch, SCHEDULED_LR: lr, **train_metrics, **evaluate_split(trainer, data.val, "val")}
    metrics["epoch_s"] = time.perf_counter() - start
    images = min(len(data.train), steps_per_epoch(data.train, cfg.batch_size) * cfg.batch_size)
    metrics["images_per_s"] = images / max(train_seconds, 1e-9)
    metrics["diverged"] = not all(math.isfinite(metrics[k]) for k in ("train_loss", "val_loss"))
    return metrics
