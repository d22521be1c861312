"""How fast a trial trains. One JSON line per row on stdout; a short summary on stderr.

    python -m bench.throughput --quick                      # CPU, ~6 minutes: the ratios below, narrow networks
    python -m bench.throughput --device cuda --models vgg16 --width 1 --batch-size 128

Rows, by their `bench` key:
  trainer      images/s of each trainer, and of `plain` (a hand-written loop: the same network, SGD, cross-entropy,
               nothing else) on the same device-resident, augmented batches. Median of --repeats rounds; within a
               round the trainers take turns, so a busy neighbour slows all of them alike.
  vs_backprop  each method's time per image over backprop's on the same network, paired round by round: the cost of
               aux heads / synthetic-gradient modules. `plain` over backprop is the cost of our trainer machinery.
  ray          the same trainer inside a Ray Tune trial (tuner.trial.trainable.train_trial, its reported images_per_s on
               warm epochs) against the same trainer outside Ray and the plain loop, same threads, same data; and
               what Tune adds to every epoch (report + checkpoint), in seconds.
  concurrency  total images/s with 1, 2, 4 trials at once on one device, each its own process, as Ray runs them;
               on a CPU beside the same number of plain-matmul processes: how far this machine scales at all.

Timing excludes warm-up steps. `cpu_busy` is CPU time / (wall time x threads): well under 1 on a CPU device means
the process waited for a core that someone else held, and its numbers are slow for that reason.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from bench.concurrency import bench_concurrency
from bench.ray_overhead import bench_ray
from bench.trainer_speed import bench_trainers
from models.catalog import CFGS
from models.registry import TRAINERS
from tuner.config.schema import check_value
from tuner.errors import ConfigError
from tuner.trial.device import limit_threads, pick_device

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


# ----------------------------------------------------------------------------------------------------------------
# command line


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.split("\n\n")[0])
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
