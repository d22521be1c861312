"""The Ray Tune trial: build the trainer, resume from its last checkpoint, then one epoch at a time —
train, evaluate, report, checkpoint.

Learning is defined in `models/`; this file only adapts it to Tune. The CIFAR-10 arrays arrive through
`tune.with_parameters`, i.e. Ray's object store: read once by the driver, shared zero-copy by the trials of a
node, never re-read per trial or per epoch.

A trial checkpoints after every epoch, so whatever interrupts it (a retried error, a killed worker, a resumed
search) costs at most the epoch in progress.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path

import ray
import torch
from ray import tune

from models.registry import build_trainer
from tuner.config.schema import TrialConfig, resolve
from tuner.ray_adaptations.environment import prepare_environment
from tuner.trial.data import make_splits
from tuner.trial.device import limit_gpu_memory, limit_threads, pick_device
from tuner.trial.epoch import evaluate_split, run_epoch, steps_per_epoch

CHECKPOINT_FILE = "trainer.pt"


def granted(resource: str) -> float | None:
    """How much of a resource ("CPU", "GPU") Ray granted this trial; None outside a Ray worker."""
    try:
        return ray.get_runtime_context().get_assigned_resources().get(resource)
    except Exception:  # outside a Ray worker
        return None


def save_checkpoint(trainer, directory: str) -> None:
    torch.save(trainer.state_dict(), Path(directory) / CHECKPOINT_FILE)


def checkpoint_bytes(cfg: TrialConfig) -> int:
    """About what save_checkpoint writes for a config: parameters, buffers and the optimizer's state per parameter
    (SGD's momentum buffer, AdamW's two moments), counted on the meta device, where nothing is allocated."""
    with torch.device("meta"):
        trainer = build_trainer(cfg.updated(stages=1, compile=False), "meta", steps_per_epoch=1)
    params = sum(p.numel() * p.element_size() for p in trainer.parts.parameters())
    buffers = sum(b.numel() * b.element_size() for b in trainer.parts.buffers())
    state_per_param = 2 if cfg.optimizer == "adamw" else int(cfg.momentum > 0)
    return params * (1 + state_per_param) + buffers


def load_checkpoint(trainer, checkpoint: tune.Checkpoint) -> None:
    """Read to the host, then loaded: Optimizer.load_state_dict moves each state tensor to its parameter's device,
    except Adam's `step` counts, which belong on the CPU (on a GPU, each step would wait on the host to read them)."""
    with checkpoint.as_directory() as directory:
        state = torch.load(Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
    trainer.load_state_dict(state)


def finite_only(metrics: dict) -> dict:
    """NaN/inf values are dropped from what is reported: ASHA, Optuna and MLflow each choke on them differently."""
    return {k: v for k, v in metrics.items() if not (isinstance(v, float) and not math.isfinite(v))}


def build_trial(config: dict, arrays: dict, gpu_share: float | None = None):
    """The trainer and its data for a trial config (also used by the driver to evaluate the best checkpoint).
    `gpu_share`: the fraction of a GPU Ray granted the trial, which caps its GPU memory before anything is allocated."""
    cfg = resolve(config)
    device = pick_device(cfg.device)
    limit_gpu_memory(device, gpu_share)
    data = make_splits(arrays, val_size=cfg.val_size, train_subset=cfg.train_subset, seed=cfg.split_seed, device=device)
    return build_trainer(cfg, device, steps_per_epoch(data.train, cfg.batch_size)), data


def train_trial(config: dict, arrays: dict, evaluate_test: bool = False) -> None:
    """`evaluate_test`: also measure the test split after every epoch -- only a study's confirm stage, which
    re-trains configs already chosen; a search never reads the test split."""
    prepare_environment()  # this runs in a Ray worker process: its loggers are its own
    limit_threads(granted("CPU"))  # two 1-CPU trials on 2 cores: one thread each, no oversubscription
    trainer, data = build_trial(config, arrays, gpu_share=granted("GPU"))
    cfg = trainer.cfg
    trial_id = tune.get_context().get_trial_id()
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        load_checkpoint(trainer, checkpoint)
        print(f"trial {trial_id}: resumed from its epoch-{trainer.epoch} checkpoint", flush=True)
    tags = {"trainer": cfg.trainer, "model": cfg.model}
    while trainer.epoch < cfg.epochs:
        inject_fault(trial_id, cfg, trainer.epoch + 1)
        metrics = {**run_epoch(trainer, data), **tags}
        if evaluate_test and not metrics["diverged"]:
            metrics.update(evaluate_split(trainer, data.test, "test"))
        if metrics["diverged"]:
            tune.report(finite_only(metrics))  # no checkpoint: a diverged state is worth nothing
            return
        metrics["finished"] = trainer.epoch >= cfg.epochs
        with tempfile.TemporaryDirectory(prefix="dt-ckpt-") as directory:
            save_checkpoint(trainer, directory)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))


# ------------------------------------------------------------------------------------------------ test hook
# Fault injection for the resume tests, off unless DT_FAULT is set. DT_FAULT holds `;`-separated faults
#   ACTION:KEY=VALUE:epoch=N[:times=K]
# fired as epoch N of a trial whose config has KEY=VALUE starts, on its first K attempts (default: every attempt).
# ACTION is `raise` (the trial raises) or `stall` (it sleeps STALL_S seconds, for the test to kill something
# meanwhile). Each firing leaves a file `<trial id>-<action>-<n>` holding the worker's pid in DT_FAULT_DIR,
# which is required: the attempts of a trial span worker processes and driver sessions.
STALL_S = 300


def inject_fault(trial_id: str, cfg: TrialConfig, epoch: int) -> None:
    spec = os.environ.get("DT_FAULT")
    if not spec:
        return
    for fault in filter(None, (part.strip() for part in spec.split(";"))):
        action, match, at_epoch, *times = fault.split(":")
        key, value = match.split("=", 1)
        if str(getattr(cfg, key)) != value or epoch != int(at_epoch.removeprefix("epoch=")):
            continue
        marker_dir = Path(os.environ["DT_FAULT_DIR"])
        fired = len(list(marker_dir.glob(f"{trial_id}-{action}-*")))
        if times and fired >= int(times[0].removeprefix("times=")):
            continue
        (marker_dir / f"{trial_id}-{action}-{fired + 1}").write_text(str(os.getpid()))
        if action == "raise":
            raise RuntimeError(f"DT_FAULT: injected failure at epoch {epoch}")
        time.sleep(STALL_S)
