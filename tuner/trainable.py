"""The Ray Tune trial: build the trainer, resume from its last checkpoint, then one epoch at a time —
train, evaluate, report, checkpoint.

Learning is defined in `models/`; this file only adapts it to Tune. The CIFAR-10 arrays arrive through
`tune.with_parameters`, i.e. Ray's object store: read once by the driver, shared zero-copy by the trials of a
node, never re-read per trial or per epoch.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import ray
import torch
from ray import tune

from models.trainers import build_trainer
from tuner.cluster import quiet_environment
from tuner.config import resolve
from tuner.data import make_splits
from tuner.device import limit_threads, pick_device
from tuner.epoch import run_epoch, steps_per_epoch

CHECKPOINT_FILE = "trainer.pt"


def trial_cpus() -> float | None:
    """The CPUs Ray granted this trial (so two 1-CPU trials on 2 cores use one thread each)."""
    try:
        return ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # outside a Ray worker
        return None


def save_checkpoint(trainer, directory: str) -> None:
    torch.save(trainer.state_dict(), Path(directory) / CHECKPOINT_FILE)


def load_checkpoint(trainer, checkpoint: tune.Checkpoint) -> None:
    with checkpoint.as_directory() as directory:
        state = torch.load(Path(directory) / CHECKPOINT_FILE, map_location=trainer.device, weights_only=False)
    trainer.load_state_dict(state)


def finite_only(metrics: dict) -> dict:
    """NaN/inf values are dropped from what is reported: ASHA, Optuna and MLflow each choke on them differently."""
    return {k: v for k, v in metrics.items() if not (isinstance(v, float) and not math.isfinite(v))}


def build(config: dict, arrays: dict):
    """The trainer and its data for a trial config (also used by the driver to evaluate the best checkpoint)."""
    cfg = resolve(config)
    device = pick_device(cfg["device"])
    data = make_splits(arrays, val_size=cfg["val_size"], train_subset=cfg["train_subset"], seed=cfg["seed"],
                       device=device)
    return build_trainer(cfg, device, steps_per_epoch(data.train, cfg["batch_size"])), data


def train_trial(config: dict, arrays: dict) -> None:
    quiet_environment()  # this runs in a Ray worker process: its loggers are its own
    limit_threads(trial_cpus())
    trainer, data = build(config, arrays)
    cfg = trainer.cfg
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        load_checkpoint(trainer, checkpoint)
    tags = {"trainer": cfg["trainer"], "model": cfg["model"]}
    while trainer.epoch < cfg["epochs"]:
        metrics = {**run_epoch(trainer, data), **tags}
        if metrics["diverged"]:
            tune.report(finite_only(metrics))  # no checkpoint: a diverged state is worth nothing
            return
        metrics["finished"] = trainer.epoch >= cfg["epochs"]
        with tempfile.TemporaryDirectory(prefix="dt-ckpt-") as directory:
            save_checkpoint(trainer, directory)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
