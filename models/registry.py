"""The trainer a config names: the one place that builds them (models/catalog.py names them and what they read)."""

from __future__ import annotations

from models import TrialConfig
from models.pipeline import PipelinedDGL
from models.synthetic_gradients import CDNI, DNI
from models.trainer_base import Trainer
from models.trainers import DGL, Backprop

TRAINERS = {"backprop": Backprop, "dgl": DGL, "dni": DNI, "cdni": CDNI}  # in models/catalog.py's order (a test pins it)


def build_trainer(cfg: TrialConfig, device, steps_per_epoch: int) -> Trainer:
    """`cfg` is a tuner.config.schema.TrialConfig; DGL with `stages` > 1 runs as a pipeline of processes."""
    if cfg.trainer == "dgl" and cfg.stages > 1:
        return PipelinedDGL(cfg, device, steps_per_epoch)
    return TRAINERS[cfg.trainer](cfg, device, steps_per_epoch)
