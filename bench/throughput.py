"""How fast a trial trains. One JSON line per row on stdout; a short summary on stderr.

    python bench/throughput.py --quick                      # CPU, ~6 minutes: the ratios below, narrow networks
    python bench/throughput.py --device cuda --models vgg16 --width 1 --batch-size 128

Rows, by their `bench` key:
  trainer      images/s of each trainer, and of `plain` (a hand-written loop: the same network, SGD, cross-entropy,
               nothing else) on the same device-resident, augmented batches. Median of --repeats rounds; within a
               round the trainers take turns, so a busy neighbour slows all of them alike.
  vs_backprop  each method's time per image over backprop's on the same network, paired round by round: the cost of
               aux heads / synthetic-gradient modules. `plain` over backprop is the cost of our trainer machinery.
  ray          the same trainer inside a Ray Tune trial (tuner.trial.train_trial, its reported images_per_s on
               warm epochs) against the same trainer outside Ray and the plain loop, same threads, same data; and
               what Tune adds to every epoch (report + checkpoint), in seconds.
  concurrency  total images/s with 1, 2, 4 trials at once on one device, each its own process, as Ray runs them;
               on a CPU beside the same number of plain-matmul processes: how far this machine scales at all.

Timing excludes warm-up steps. `cpu_busy` is CPU time / (wall time x threads): well under 1 on a CPU device means
the process waited for a core that someone else held, and its numbers are slow for that reason.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable, as `python -m bench.throughput` does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bench.common import (
    PlainLoop,
    bench_config,
    emit,
    make_runner,
    report_collector,
    summary,
    synthetic_arrays,
    synthetic_split,
    timed_epoch,
)
from bench.concurrency import bench_concurrency
from models.networks import CFGS
from models.trainers import TRAINERS, build_trainer
from tuner.data import Split
from tuner.device import limit_threads, pick_device
from tuner.errors import ConfigError, error_line
from tuner.schema import check_value

SECTIONS = ("trainers", "ray", "concurrency")

# --quick: narrow networks and few steps, sized for a 2-core CPU; ratios, not absolute speed, are what it is for
QUICK = dict(
    models=["basiccnn", "vgg16"],
    width=0.25,
    batch_size=128,
    steps=4,
    warmup_steps=1,
    repeats=3,
    threads=1,
    concurrency=[1, 2, 4],
    concurrency_s=6.0,
    concurrency_rounds=2,
    ray_epochs=4,
    ray_images=1536,
    ray_rounds=3,
)
FULL = dict(
    models=["basiccnn", "vgg16"],
    width=1.0,
    batch_size=128,
    steps=20,
    warmup_steps=3,
    repeats=3,
    threads=None,
    concurrency=[1, 2, 4],
    concurrency_s=20.0,
    concurrency_rounds=2,
    ray_epochs=4,
    ray_images=10240,
    ray_rounds=2,
)


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += not func.is_view  # views launch nothing; everything else is a kernel, or a host op, or both
        return func(*args, **(kwargs or {}))


def ops_per_step(runner, split: Split, batch_size: int) -> int:
    """aten ops (views excepted) one training step dispatches, data pipeline included: the cost a step pays in
    launches and host overhead whatever the work in them. Unlike time, a count is not disturbed by neighbours."""
    with _CountOps() as counter:
        timed_epoch(runner, split, batch_size, 1, epoch=0)
    return counter.ops


def bench_trainers(
    models, trainers, width, batch_size, steps, warmup_steps, repeats, device, threads, compile_=False, out=None
) -> list[dict]:
    """`trainer` rows for plain + each trainer on each model, then `vs_backprop` rows (paired per round)."""
    rows = []
    names = ["plain", *trainers]
    for model in models:
        split = synthetic_split(steps * batch_size, device)
        cfg = bench_config("backprop", model, width, batch_size, str(device), compile=compile_)
        runners = {name: make_runner(name, cfg, device) for name in names}
        for runner in runners.values():
            timed_epoch(runner, split, batch_size, warmup_steps, epoch=0)
        ops = {name: ops_per_step(runner, split, batch_size) for name, runner in runners.items()}
        times = {name: [] for name in names}
        for round_ in range(repeats):
            for name, runner in runners.items():
                times[name].append(timed_epoch(runner, split, batch_size, steps, epoch=round_ + 1))
        common = {
            "model": model,
            "width": width,
            "batch_size": batch_size,
            "device": str(device),
            "threads": threads,
            "compile": compile_,
            "steps": steps,
            "repeats": repeats,
        }
        for name in names:
            ips = [t["images"] / t["wall_s"] for t in times[name]]
            busy = [t["cpu_s"] / (t["wall_s"] * threads) for t in times[name]]
            rows.append(
                emit(
                    {
                        "bench": "trainer",
                        "trainer": name,
                        **common,
                        "images_per_s": summary(ips, 1),
                        "ops_per_step": ops[name],
                        "cpu_busy": round(statistics.median(busy), 2),
                    },
                    out,
                )
            )
        if "backprop" in names:
            for name in names:
                if name == "backprop":
                    continue
                cost = [t["wall_s"] / b["wall_s"] for t, b in zip(times[name], times["backprop"])]
                rows.append(
                    emit(
                        {
                            "bench": "vs_backprop",
                            "trainer": name,
                            **common,
                            "cost_ratio": summary(cost),
                            "overhead_pct": round(100 * (statistics.median(cost) - 1), 1),
                        },
                        out,
                    )
                )
        del runners
    return rows


def bench_ray(model, trainer, width, batch_size, epochs, images, rounds, device, threads, out=None) -> list[dict]:
    """The same trainer inside a Ray Tune trial and outside it (and the plain loop), on the same data."""
    import ray
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from tuner.cluster import init_ray
    from tuner.data import make_splits
    from tuner.epoch import run_epoch
    from tuner.trial import train_trial

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
        collect = report_collector()
        with tempfile.TemporaryDirectory(prefix="dt-bench-ray-") as storage:
            tuner = tune.Tuner(
                tune.with_resources(tune.with_parameters(train_trial, arrays=arrays), {"cpu": threads, "gpu": gpus}),
                param_space=cfg.model_dump(),
                tune_config=tune.TuneConfig(num_samples=1),
                run_config=tune.RunConfig(
                    name="throughput", storage_path=storage, verbose=0, callbacks=[collect, JsonLoggerCallback()]
                ),
            )
            result = tuner.fit()[0]
        if result.error is not None:
            raise RuntimeError(f"the Ray trial failed: {error_line(str(result.error))}")
        warm = [r for r in collect.reports if r["epoch"] >= 2]
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


# ----------------------------------------------------------------------------------------------------------------
# command line


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python bench/throughput.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="CPU-sized defaults: " + json.dumps(QUICK))
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated: " + ", ".join(SECTIONS))
    parser.add_argument("--models", help="comma-separated: " + ", ".join(CFGS))
    parser.add_argument("--trainers", default=",".join(TRAINERS), help="comma-separated: " + ", ".join(TRAINERS))
    parser.add_argument("--width", type=float)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--steps", type=int, help="timed steps per trainer per round")
    parser.add_argument("--warmup-steps", type=int)
    parser.add_argument("--repeats", type=int, help="rounds; each row gives their median, min and max")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: all cores; --quick: 1)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the trainers and the plain loop")
    parser.add_argument("--concurrency", help="comma-separated numbers of concurrent trials (default 1,2,4)")
    parser.add_argument("--concurrency-s", type=float, help="seconds each concurrency measurement trains")
    parser.add_argument("--concurrency-rounds", type=int, help="times the concurrency plan is measured")
    parser.add_argument("--concurrency-trainer", default="dgl")
    parser.add_argument("--ray-trainer", default="dgl")
    parser.add_argument("--ray-epochs", type=int, help="epochs of the Ray trial (the first is warm-up); >= 2")
    parser.add_argument("--ray-images", type=int, help="training images per epoch in the Ray comparison")
    parser.add_argument("--ray-rounds", type=int, help="Ray trials, each between two measurements outside Ray")
    parser.add_argument("--out", help="also append the JSON lines to this file")
    return parser.parse_args(argv)


def _names(text: str, allowed, flag: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    bad = [name for name in names if name not in allowed]
    if bad or not names:
        raise ConfigError(f"{flag}: '{text}' must be a comma-separated list of {', '.join(allowed)}")
    return names


def settings(args) -> dict:
    """The flags, over the --quick or full defaults, checked; ConfigError names the bad flag."""
    chosen = dict(QUICK if args.quick else FULL)
    for key in chosen:
        value = getattr(args, key, None)
        if value is not None:
            chosen[key] = value
    if isinstance(chosen["models"], str):
        chosen["models"] = _names(chosen["models"], CFGS, "--models")
    if isinstance(chosen["concurrency"], str):
        try:
            chosen["concurrency"] = [int(n) for n in chosen["concurrency"].split(",")]
        except ValueError:
            chosen["concurrency"] = [0]
        if not all(1 <= n <= 64 for n in chosen["concurrency"]):
            raise ConfigError(f"--concurrency: '{args.concurrency}' must be comma-separated integers in [1, 64]")
    chosen["sections"] = _names(args.sections, SECTIONS, "--sections")
    chosen["trainers"] = _names(args.trainers, TRAINERS, "--trainers")
    chosen["concurrency_trainer"] = _names(args.concurrency_trainer, TRAINERS, "--concurrency-trainer")[0]
    chosen["ray_trainer"] = _names(args.ray_trainer, TRAINERS, "--ray-trainer")[0]
    chosen["width"] = check_value("width", chosen["width"], "--width")
    chosen["batch_size"] = check_value("batch_size", chosen["batch_size"], "--batch-size")
    for key in ("steps", "warmup_steps", "repeats", "ray_images", "ray_rounds", "concurrency_rounds"):
        if chosen[key] < (0 if key == "warmup_steps" else 1):
            raise ConfigError(f"--{key.replace('_', '-')} must be a positive integer, got {chosen[key]}")
    if chosen["ray_epochs"] < 2:
        raise ConfigError(f"--ray-epochs must be at least 2 (the first is warm-up), got {chosen['ray_epochs']}")
    if chosen["ray_images"] < chosen["batch_size"]:
        raise ConfigError(f"--ray-images {chosen['ray_images']} must be at least --batch-size {chosen['batch_size']}")
    if chosen["concurrency_s"] <= 0:
        raise ConfigError(f"--concurrency-s must be positive, got {chosen['concurrency_s']}")
    chosen["device"] = pick_device(check_value("device", args.device, "--device"))
    if chosen["threads"] is not None and chosen["threads"] < 1:
        raise ConfigError(f"--threads must be a positive integer, got {chosen['threads']}")
    chosen["threads"] = chosen["threads"] or os.cpu_count() or 1
    chosen["compile"], chosen["out"] = args.compile, args.out
    return chosen


def _spread(value: dict) -> str:
    return f"{value['median']:.2f} ({value['min']:.2f}-{value['max']:.2f})"


def report(rows: list[dict]) -> None:
    """The ratios a reader compares, one line each, on stderr (stdout holds only JSON lines)."""
    for row in rows:
        if row["bench"] == "vs_backprop":
            c = row["cost_ratio"]
            print(
                f"# {row['model']:9s} {row['trainer']:8s} time/image vs backprop {c['median']:.2f} "
                f"(min {c['min']:.2f}, max {c['max']:.2f})",
                file=sys.stderr,
            )
        elif row["bench"] == "ray":
            a, b = row["ray_vs_outside"], row["ray_vs_plain"]
            print(
                f"# ray trial images/s vs the same trainer outside Ray {a['median']:.3f} (min {a['min']:.3f}, max "
                f"{a['max']:.3f}), vs the plain loop {b['median']:.3f} (min {b['min']:.3f}, max {b['max']:.3f}); "
                f"Tune adds {row['tune_cost_per_epoch_s']['median']:.3f} s per epoch (report + "
                f"{row['checkpoint_mb']} MB checkpoint)",
                file=sys.stderr,
            )
        elif row["bench"] == "concurrency":
            print(
                f"# {row['trials']} trial(s) x {row['threads_per_trial']} thread(s): "
                f"{row['total_images_per_s']['median']:.0f} img/s in total, {_spread(row['vs_one_trial'])} x one "
                f"trial; per CPU-second {_spread(row['per_cpu_s_vs_one_trial'])} (cpu_busy {row['cpu_busy']})"
                + (
                    f"; plain matmuls in as many processes: {_spread(row['machine_vs_one_process'])} x one"
                    if "vs_machine" in row
                    else ""
                ),
                file=sys.stderr,
            )


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        s = settings(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    limit_threads(s["threads"])
    rows = []
    if "trainers" in s["sections"]:
        rows += bench_trainers(
            s["models"],
            s["trainers"],
            s["width"],
            s["batch_size"],
            s["steps"],
            s["warmup_steps"],
            s["repeats"],
            s["device"],
            s["threads"],
            s["compile"],
            s["out"],
        )
    if "ray" in s["sections"]:
        rows += bench_ray(
            s["models"][0],
            s["ray_trainer"],
            s["width"],
            s["batch_size"],
            s["ray_epochs"],
            s["ray_images"],
            s["ray_rounds"],
            s["device"],
            s["threads"],
            s["out"],
        )
    if "concurrency" in s["sections"]:
        rows += bench_concurrency(
            s["models"][-1],
            s["concurrency_trainer"],
            s["width"],
            s["batch_size"],
            s["concurrency"],
            s["threads"],
            s["concurrency_s"],
            s["concurrency_rounds"],
            s["device"],
            s["out"],
        )
    report(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
