"""Optimizers and learning-rate schedules, one pair per independently trained part of a network."""

from __future__ import annotations

import math

import torch

from models import TrialConfig
from models.catalog import OPTIMIZERS


def make_optimizer(params, cfg: TrialConfig) -> torch.optim.Optimizer:
    params = list(params)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov and cfg.momentum > 0,
        )
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer '{cfg.optimizer}'; allowed: {', '.join(OPTIMIZERS)}")


def lr_factor(step: int, cfg: TrialConfig, steps_per_epoch: int) -> float:
    """Multiplier on the base learning rate after `step` optimizer steps: linear warmup, then the schedule."""
    total = cfg.epochs * steps_per_epoch
    warmup = min(cfg.warmup_epochs * steps_per_epoch, total - 1)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    if cfg.schedule == "step":
        return cfg.lr_gamma ** ((step // steps_per_epoch) // cfg.lr_step_epochs)
    return 1.0


def make_lr_schedule(optimizer, cfg: TrialConfig, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per batch. LambdaLR's state_dict holds the step count, so a checkpoint resumes the schedule."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg, steps_per_epoch))
