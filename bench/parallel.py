"""What layer-parallel DGL buys: images/s of pipelined DGL (models/pipeline.py) against sequential DGL and backprop.
One JSON line per row on stdout; the ratios on stderr.

    python -m bench.parallel --quick                  # CPU: VGG16 at width 0.25 on 2 cores, a few minutes
    python -m bench.parallel --sections gpu           # one stage per visible GPU; says so and skips without one

Rows, by their `bench` key:
  parallel        images/s of one runner, median (min, max) over --rounds. On a CPU: sequential DGL at 1 and at
                  --cores threads, pipelined DGL with --cores stages x 1 thread, backprop at --cores threads. On GPUs:
                  sequential DGL and backprop on one GPU, pipelined DGL with one stage per GPU.
  parallel_ratio  pipelined images/s over each other runner's, paired round by round, median (min, max).
  parallel_setup  the stage partition (as cut from the blocks timed alone, and as the stages re-cut it after the
                  warm-up epoch, from what they measured running together), each stage's share of an epoch spent
                  waiting for input and on the next stage, and the load average before and after: other
                  processes on the machine slow every runner, and the load says how much there was.

Within a round the runners take turns, so a busy neighbour slows all of them alike. A runner's timed epochs exclude
its warm-up steps; a pipelined epoch includes its fill and drain (S-1 batches) and the stages' state exchange, which
an epoch of CIFAR-10 (351 batches) amortises far better than the few steps timed here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch

from bench.common import bench_config, emit, summary, synthetic_split, timed_epoch
from models.catalog import CFGS
from models.pipeline import REBALANCE_AFTER_STEPS
from models.registry import build_trainer
from tuner.config.schema import check_value
from tuner.errors import ConfigError

SECTIONS = ("cpu", "gpu")
QUICK = {"model": "vgg16", "width": 0.25, "batch_size": 128, "steps": 8, "warmup_steps": 2, "rounds": 3, "cores": 2}
FULL = {"model": "vgg16", "width": 0.25, "batch_size": 128, "steps": 48, "warmup_steps": 8, "rounds": 5, "cores": 2}
DEFAULT_HEAD = "flatten_mlp"  # the write-up's DGL head, the config default


class Runner:
    """A trainer and the CPU threads it trains with (set before each of its epochs: the runners share a process)."""

    def __init__(self, name: str, cfg: dict, device, threads: int | None):
        self.name, self.threads = name, threads
        if threads:
            torch.set_num_threads(threads)  # a pipelined trainer shares out the threads it is built under
        self.trainer = build_trainer(cfg, device, steps_per_epoch=1000)

    def epoch(self, split, batch_size: int, steps: int, epoch: int) -> dict:
        if self.threads:
            torch.set_num_threads(self.threads)
        return timed_epoch(self.trainer, split, batch_size, steps, epoch)

    def close(self) -> None:
        if hasattr(self.trainer, "close"):
            self.trainer.close()


def cpu_runners(s: dict) -> list[Runner]:
    cores, base = s["cores"], {"model": s["model"], "width": s["width"], "batch_size": s["batch_size"], "device": "cpu"}
    head = {"aux_head": s["aux_head"]}
    return [
        Runner("dgl_1_thread", bench_config("dgl", **head, **base), "cpu", 1),
        Runner(f"dgl_{cores}_threads", bench_config("dgl", **head, **base), "cpu", cores),
        Runner(f"pipelined_{cores}_stages_x_1_thread", bench_config("dgl", stages=cores, **head, **base), "cpu", cores),
        Runner(f"backprop_{cores}_threads", bench_config("backprop", **base), "cpu", cores),
    ]


def gpu_runners(s: dict) -> list[Runner]:
    gpus, base = torch.cuda.device_count(), {"model": s["model"], "width": s["width"], "batch_size": s["batch_size"]}
    head = {"aux_head": s["aux_head"]}
    runners = [
        Runner("dgl_1_gpu", bench_config("dgl", device="cuda", **head, **base), "cuda", None),
        Runner("backprop_1_gpu", bench_config("backprop", device="cuda", **base), "cuda", None),
    ]
    # one GPU: two stages share it (kernels of two processes overlap only where the GPU has room for both)
    stages = max(gpus, 2)
    runners.insert(
        1,
        Runner(
            f"pipelined_{stages}_stages_on_{gpus}_gpus",
            bench_config("dgl", device="cuda", stages=stages, **head, **base),
            "cuda",
            None,
        ),
    )
    return runners


def measure(section: str, runners: list[Runner], s: dict, device, out=None) -> list[dict]:
    split = synthetic_split(s["batch_size"] * max(s["steps"], s["warmup_steps"], REBALANCE_AFTER_STEPS), device)
    load_before = os.getloadavg()
    pipelined = next(r for r in runners if r.name.startswith("pipelined"))
    first_partition = pipelined.trainer.partition
    # warm-up: allocations, caches; for the pipelined runner an epoch long enough to move its cuts by what its
    # stages measured together, then one to restart them there, so no timed epoch pays for a process start
    for runner in runners:
        runner.epoch(split, s["batch_size"], max(s["warmup_steps"], REBALANCE_AFTER_STEPS), epoch=0)
    pipelined.epoch(split, s["batch_size"], 1, epoch=0)
    speeds = {runner.name: [] for runner in runners}
    idle = []  # per round, each stage's share of the epoch spent starved of input / held up by the next stage
    for round_ in range(s["rounds"]):
        for runner in runners:
            timing = runner.epoch(split, s["batch_size"], s["steps"], epoch=round_ + 1)
            speeds[runner.name].append(timing["images"] / timing["wall_s"])
            if runner is pipelined:
                idle.append([{k: v / timing["wall_s"] for k, v in w.items()} for w in runner.trainer.stage_waits])
    rows = [
        emit(
            {
                "bench": "parallel_setup",
                "section": section,
                "model": s["model"],
                "width": s["width"],
                "batch_size": s["batch_size"],
                "aux_head": s["aux_head"],
                "partition": [[b + 1 for b in p] for p in pipelined.trainer.partition],
                "partition_timed_alone": [[b + 1 for b in p] for p in first_partition],
                "stage_devices": pipelined.trainer.stage_devices,
                "stage_threads": pipelined.trainer.stage_threads,
                # median over rounds of the share of an epoch each stage waited: for its input, then on its output
                "stage_idle": [
                    [round(statistics.median(r[st][k] for r in idle), 3) for k in ("input_s", "output_s")]
                    for st in range(len(idle[0]))
                ],
                "load_average_before": [round(v, 2) for v in load_before],
                "load_average_after": [round(v, 2) for v in os.getloadavg()],
                "cpu_count": os.cpu_count(),
                "torch": torch.__version__,
            },
            out,
        )
    ]
    for name, values in speeds.items():
        rows.append(
            emit(
                {
                    "bench": "parallel",
                    "section": section,
                    "runner": name,
                    "steps": s["steps"],
                    "rounds": s["rounds"],
                    "images_per_s": summary(values, 1),
                },
                out,
            )
        )
    for name, values in speeds.items():
        if name != pipelined.name:
            ratios = [p / v for p, v in zip(speeds[pipelined.name], values)]
            rows.append(
                emit(
                    {
                        "bench": "parallel_ratio",
                        "section": section,
                        "runner": pipelined.name,
                        "over": name,
                        "ratio": summary(ratios),
                    },
                    out,
                )
            )
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.parallel", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and rounds: " + json.dumps(QUICK))
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated: " + ", ".join(SECTIONS))
    parser.add_argument("--model", help="one of " + ", ".join(CFGS))
    parser.add_argument("--width", type=float)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--steps", type=int, help="timed steps per runner per round")
    parser.add_argument("--warmup-steps", type=int)
    parser.add_argument("--rounds", type=int, help="rounds; each row gives their median, min and max")
    parser.add_argument("--aux-head", default=DEFAULT_HEAD, help="DGL's auxiliary head family (models/heads.py)")
    parser.add_argument("--cores", type=int, help="CPU section: cores = threads of the sequential runners = stages")
    parser.add_argument("--out", help="also append the JSON lines to this file")
    return parser.parse_args(argv)


def settings(args) -> dict:
    """The flags over the --quick or full defaults, checked; ConfigError names the bad flag."""
    chosen = dict(QUICK if args.quick else FULL)
    for key in chosen:
        if getattr(args, key, None) is not None:
            chosen[key] = getattr(args, key)
    chosen["model"] = check_value("model", chosen["model"], "--model")
    chosen["width"] = check_value("width", chosen["width"], "--width")
    chosen["batch_size"] = check_value("batch_size", chosen["batch_size"], "--batch-size")
    chosen["aux_head"] = check_value("aux_head", args.aux_head, "--aux-head")
    for key, least in (("steps", 1), ("rounds", 1), ("cores", 2), ("warmup_steps", 0)):
        if chosen[key] < least:
            raise ConfigError(f"--{key.replace('_', '-')} must be an integer >= {least}, got {chosen[key]}")
    sections = [name.strip() for name in args.sections.split(",") if name.strip()]
    if not sections or any(name not in SECTIONS for name in sections):
        raise ConfigError(f"--sections: '{args.sections}' must be a comma-separated list of {', '.join(SECTIONS)}")
    chosen["sections"], chosen["out"] = sections, args.out
    return chosen


def report(rows: list[dict]) -> None:
    for row in rows:
        if row["bench"] == "parallel_setup":
            print(
                f"# {row['section']}: {row['model']} width {row['width']}, stages {row['partition']} (timed alone: "
                f"{row['partition_timed_alone']}), load average "
                f"{row['load_average_before']} -> {row['load_average_after']}; each stage's share of an epoch "
                f"waiting for input / on the next stage: {row['stage_idle']}",
                file=sys.stderr,
            )
        elif row["bench"] == "parallel":
            v = row["images_per_s"]
            print(f"# {row['runner']:34s} {v['median']:8.1f} img/s ({v['min']:.1f}-{v['max']:.1f})", file=sys.stderr)
        elif row["bench"] == "parallel_ratio":
            r = row["ratio"]
            print(f"# pipelined / {row['over']:24s} {r['median']:.2f} ({r['min']:.2f}-{r['max']:.2f})", file=sys.stderr)
        elif row["bench"] == "parallel_skipped":
            print(f"# {row['section']}: skipped ({row['reason']})", file=sys.stderr)


def main(argv=None) -> int:
    try:
        s = settings(parse_args(argv))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rows = []
    for section in s["sections"]:
        if section == "gpu" and not torch.cuda.is_available():
            rows.append(emit({"bench": "parallel_skipped", "section": "gpu", "reason": "no CUDA device"}, s["out"]))
            continue
        try:
            runners = cpu_runners(s) if section == "cpu" else gpu_runners(s)
        except ConfigError as error:  # e.g. more stages than the model has blocks
            print(f"error: {error}", file=sys.stderr)
            return 2
        try:
            rows += measure(section, runners, s, "cpu" if section == "cpu" else "cuda", s["out"])
        finally:
            for runner in runners:
                runner.close()
    report(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
