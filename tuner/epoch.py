"""One epoch, as every caller runs it: train on the training split, evaluate on validation, time it.

Metric names (`val_acc`, `block3_val_acc`, ...) come from `tuner.metric_names`; this is the one place they are
given to what the trainers measure, shared by `tuner.train` (no Ray) and the Ray trainable, so a run and a trial
report the same thing.
"""

from __future__ import annotations

import math
import time

import torch

from models.trainers import Trainer
from tuner.data import CifarData, Split
from tuner.metric_names import block_metric, split_metric


def steps_per_epoch(train: Split, batch_size: int) -> int:
    return train.num_batches(batch_size, train=True)


def evaluate_split(trainer: Trainer, split: Split, prefix: str) -> dict:
    """`prefix`_loss, `prefix`_acc and per-block `block{i}_{prefix}_acc`."""
    metrics = trainer.evaluate(split.batches(trainer.cfg.eval_batch_size, train=False))
    renamed = {}
    for key, value in metrics.items():
        if key.startswith("block"):  # the trainer's `block3_acc`
            renamed[block_metric(int(key[len("block"):].split("_", 1)[0]), prefix)] = value
        else:
            renamed[split_metric(prefix, key)] = value
    return renamed


def run_epoch(trainer: Trainer, data: CifarData) -> dict:
    """Train one epoch and validate. `diverged` is True when a loss stopped being finite."""
    cfg = trainer.cfg
    synchronize = torch.cuda.synchronize if trainer.on_cuda else (lambda: None)
    lr = trainer.current_lr()
    synchronize()
    start = time.perf_counter()
    epoch = trainer.epoch
    batches = data.train.batches(cfg.batch_size, train=True, seed=cfg.seed, epoch=epoch, augment=cfg.augment)
    train_metrics = trainer.train_epoch(batches)
    synchronize()
    train_seconds = time.perf_counter() - start
    metrics = {"epoch": trainer.epoch, "lr": lr, **train_metrics, **evaluate_split(trainer, data.val, "val")}
    metrics["epoch_s"] = time.perf_counter() - start
    images = min(len(data.train), steps_per_epoch(data.train, cfg.batch_size) * cfg.batch_size)
    metrics["images_per_s"] = images / max(train_seconds, 1e-9)
    metrics["diverged"] = not all(math.isfinite(metrics[k]) for k in ("train_loss", "val_loss"))
    return metrics
