"""What Ray Tune adds to a trial: the same trainer inside a Tune trial and outside it (and the plain loop), on the same
data, and Tune's fixed cost per epoch (report + checkpoint). The `ray` rows of bench/throughput.py."""

from __future__ import annotations

import io
import statistics

import torch

from bench.common import PlainLoop, bench_config, emit, fit_in_temp_storage, summary, synthetic_arrays, timed_epoch
from models.registry import build_trainer
from tuner.errors import error_line
from tuner.trial.device import limit_threads


def bench_ray(model, trainer, width, batch_size, epochs, images, rounds, device, threads, out=None) -> list[dict]:
    """The same trainer inside a Ray Tune trial and outside it (and the plain loop), on the same data."""
    import ray
    from ray import tune

    from tuner.search.ray_cluster import init_ray
    from tuner.trial.data import make_splits
    from tuner.trial.epoch import run_epoch
    from tuner.trial.trainable import train_trial

    val_size = max(100, images // 10)
    arrays = synthetic_arrays(images + val_size, 100)
    cfg = bench_config(trainer, model, width, batch_size, str(device), epochs=epochs, val_size=val_size)
    gpus = 1 if torch.device(device).type == "cuda" else 0
    limit_threads(threads)  # outside Ray as inside: train_trial gives torch as many threads as the trial has CPUs

    def outside() -> tuple[list[float], list[float], list[float]]:
        data = make_splits(arrays, val_size=val_size, train_subset=None, seed=0, device=device)
        trainer_, plain = build_trainer(cfg, device, len(data.train) // batch_size), PlainLoop(cfg, device)
        trainer_ips, epoch_s, plain_ips = [], [], []
        for epoch in range(epochs):
            metrics = run_epoch(trainer_, data)
            timing = timed_epoch(plain, data.train, batch_size, len(data.train) // batch_size, epoch)
            if epoch > 0:  # the first epoch is warm-up
                trainer_ips.append(metrics["images_per_s"])
                epoch_s.append(metrics["epoch_s"])
                plain_ips.append(timing["images"] / timing["wall_s"])
        return trainer_ips, epoch_s, plain_ips

    def in_ray() -> tuple[list[float], list[float]]:
        results, reports = fit_in_temp_storage(
            tune.with_parameters(train_trial, arrays=arrays),
            {"cpu": threads, "gpu": gpus},
            cfg.model_dump(),
            "throughput",
            num_samples=1,
        )
        result = results[0]
        if result.error is not None:
            raise RuntimeError(f"the Ray trial failed: {error_line(str(result.error))}")
        warm = [r for r in reports if r["epoch"] >= 2]
        # images_per_s times the training loop alone; time_this_iter_s is the epoch + validation + report + checkpoint,
        # so time_this_iter_s - epoch_s is what Tune adds to each epoch whatever its length: a fixed cost
        return (
            [r["images_per_s"] for r in warm],
            [r["time_this_iter_s"] for r in warm],
            [r["time_this_iter_s"] - r["epoch_s"] for r in warm],
        )

    # Ray is started first, so that both sides run beside its (idle) daemons and the driver; what differs is the
    # trial's process and Tune's session, reports and checkpoints. Outside, trial, outside, trial, outside: each
    # trial is compared with the measurements on either side of it, as the machine's load drifts.
    checkpoint = io.BytesIO()
    torch.save(build_trainer(cfg, "cpu", 1).state_dict(), checkpoint)  # what train_trial writes every epoch
    checkpoint_mb = checkpoint.getbuffer().nbytes / 2**20
    init_ray()
    sides = [outside()]
    trials = []
    for _ in range(rounds):
        trials.append(in_ray())
        sides.append(outside())
    ray.shutdown()
    median = statistics.median
    vs_outside = [median(t[0]) / median(a[0] + b[0]) for t, a, b in zip(trials, sides, sides[1:])]
    vs_plain = [median(t[0]) / median(a[2] + b[2]) for t, a, b in zip(trials, sides, sides[1:])]
    flat = lambda parts, i: [v for part in parts for v in part[i]]  # noqa: E731
    row = {
        "bench": "ray",
        "model": model,
        "trainer": trainer,
        "width": width,
        "batch_size": batch_size,
        "device": str(device),
        "threads": threads,
        "train_images": images,
        "epochs": epochs,
        "rounds": rounds,
        "images_per_s": {
            "ray": summary(flat(trials, 0), 1),
            "outside": summary(flat(sides, 0), 1),
            "plain": summary(flat(sides, 2), 1),
        },
        "ray_vs_outside": summary(vs_outside),
        "ray_vs_plain": summary(vs_plain),
        "epoch_s": {"ray": summary(flat(trials, 1)), "outside": summary(flat(sides, 1))},
        # per epoch: the trial's report and checkpoint (torch.save, then Ray copies it into the storage path)
        "tune_cost_per_epoch_s": summary(flat(trials, 2)),
        "checkpoint_mb": round(checkpoint_mb, 2),
    }
    return [emit(row, out)]
