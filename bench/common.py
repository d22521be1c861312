"""What the benchmarks share (bench/throughput.py, bench/gpu_check.py): synthetic data on the device, the plain
training loop a trainer is measured against, a timed epoch, and the row format."""

from __future__ import annotations

import contextlib
import itertools
import json
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from models.networks import build_network
from models.registry import build_trainer
from models.trainer_base import seed_process
from tuner.config.schema import resolve
from tuner.trial.data import Split


def emit(row: dict, out=None) -> dict:
    line = json.dumps(row)
    print(line, flush=True)
    if out is not None:
        with open(out, "a") as f:
            f.write(line + "\n")
    return row


# ----------------------------------------------------------------------------------------------------------------
# what is timed


def synthetic_split(n: int, device, seed: int = 0) -> Split:
    """n random uint8 images and labels on the device: speed does not depend on what the pixels show."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)
    y = torch.randint(0, 10, (n,), generator=generator)
    return Split(x.to(device), y.to(device))


def synthetic_arrays(n_train: int, n_test: int, seed: int = 0) -> dict:
    """The same, as numpy arrays in tuner.trial.data.load_arrays' format (what a Ray trial is handed)."""
    rng = np.random.default_rng(seed)
    return {
        "train_x": rng.integers(0, 256, (n_train, 3, 32, 32), dtype=np.uint8),
        "train_y": rng.permutation(np.arange(n_train) % 10).astype(np.int64),
        "test_x": rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8),
        "test_y": np.arange(n_test, dtype=np.int64) % 10,
    }


def bench_config(trainer: str, model: str, width: float, batch_size: int, device: str, **extra) -> dict:
    # epochs only sets the cosine schedule's length: long, so the learning rate stays away from 0 while timing
    return resolve(
        {
            "trainer": trainer,
            "model": model,
            "width": width,
            "batch_size": batch_size,
            "epochs": 100,
            "device": device,
            **extra,
        },
        where="bench",
    )


class PlainLoop:
    """The baseline a trainer is measured against: the network, SGD, cross-entropy and nothing else — no metrics,
    no schedule. bf16 autocast and channels_last on CUDA, as the trainers use; compiled when the config says so."""

    def __init__(self, cfg: dict, device):
        self.cfg, self.device = cfg, torch.device(device)
        self.on_cuda = self.device.type == "cuda"
        seed_process(cfg.seed, self.device)  # as a trainer does: the same initial weights
        memory_format = torch.channels_last if self.on_cuda else torch.contiguous_format
        self.network = build_network(cfg.model, cfg.width, 1).to(self.device, memory_format=memory_format)
        self.forward = torch.compile(self.network) if cfg.compile else self.network
        self.optimizer = torch.optim.SGD(
            self.network.parameters(),
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
        )

    def train_epoch(self, batches) -> dict:
        self.network.train()
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.on_cuda else contextlib.nullcontext()
        loss = torch.zeros(())
        for x, y in batches:
            if self.on_cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast:
                loss = F.cross_entropy(self.forward(x).float(), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return {"train_loss": loss.item()}  # one host sync at the end, as a trainer's epoch has


def make_runner(name: str, cfg: dict, device):
    """`plain` or one of the trainers, for the same config."""
    if name == "plain":
        return PlainLoop(cfg, device)
    return build_trainer(cfg.updated(trainer=name), device, steps_per_epoch=1000)


def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed_epoch(runner, split: Split, batch_size: int, steps: int, epoch: int) -> dict:
    """`steps` training steps through runner.train_epoch, data pipeline included: images, wall and CPU seconds."""
    device = split.x.device
    batches = itertools.islice(split.batches(batch_size, train=True, seed=0, epoch=epoch), steps)
    synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    runner.train_epoch(batches)
    synchronize(device)
    return {"images": steps * batch_size, "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}


def summary(values: list[float], digits: int = 3) -> dict:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


# ----------------------------------------------------------------------------------------------------------------
# sections


def report_collector():
    """A Tune callback that keeps every trial report as the driver receives it, with the trial's id and the
    driver's clock (result files are off: tuner.search.ray_cluster sets TUNE_DISABLE_AUTO_CALLBACK_LOGGERS)."""
    from ray import tune

    class Collect(tune.Callback):
        def __init__(self):
            self.reports = []

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.reports.append({**result, "trial_id": trial.trial_id, "received": time.time()})

    return Collect()


def fit_in_temp_storage(trainable, resources: dict, param_space: dict, name: str, **tune_config) -> tuple:
    """A Tune run whose storage is a temporary folder, removed after: (results, the reports as the driver got them)."""
    import tempfile

    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    collect = report_collector()
    with tempfile.TemporaryDirectory(prefix=f"dt-{name}-") as storage:
        tuner = tune.Tuner(
            tune.with_resources(trainable, resources),
            param_space=param_space,
            tune_config=tune.TuneConfig(**tune_config),
            run_config=tune.RunConfig(
                name=name, storage_path=storage, verbose=0, callbacks=[collect, JsonLoggerCallback()]
            ),
        )
        results = tuner.fit()
    return results, collect.reports
