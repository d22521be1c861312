"""Trials side by side on one device, each its own process as Ray runs them: how the total throughput grows with
their number, beside plain-matmul processes that show how far the machine itself scales."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import statistics
import time

import torch

from bench.common import bench_config, emit, summary, synthetic_split, timed_epoch
from models.registry import build_trainer
from tuner.trial.device import limit_threads, pick_device


def _training_work(cfg: dict, warmup_steps: int, seed: int):
    """A trial's work: its trainer, warmed up; returns run(deadline) -> images trained until then."""
    device = pick_device(cfg.device)
    batch_size = cfg.batch_size
    trainer = build_trainer(cfg, device, steps_per_epoch=1000)
    split = synthetic_split(8 * batch_size, device, seed)
    timed_epoch(trainer, split, batch_size, warmup_steps, epoch=0)

    def run(deadline: float) -> int:
        steps = 0

        def batches():
            nonlocal steps
            for epoch in itertools.count(1):
                for batch in split.batches(batch_size, train=True, seed=seed, epoch=epoch):
                    if time.monotonic() >= deadline:
                        return
                    steps += 1
                    yield batch

        trainer.train_epoch(batches())  # ends with a host sync: the GPU's queue is drained before it returns
        return steps * batch_size

    return run


REFERENCE_N = 512  # the reference matmul: 3 x 1 MB fp32, a CPU core's own arithmetic more than its memory


def _matmul_work(cfg: dict, warmup_steps: int, seed: int):
    """The machine's own scaling, no trainer: square matmuls in a loop ("images" counts matmuls)."""
    a, b = torch.randn(REFERENCE_N, REFERENCE_N), torch.randn(REFERENCE_N, REFERENCE_N)
    for _ in range(10):
        a @ b

    def run(deadline: float) -> int:
        count = 0
        while time.monotonic() < deadline:
            a @ b
            count += 1
        return count

    return run


def _timed_process(work, cfg: dict, threads: int, seconds: float, warmup_steps: int, seed: int, barrier, results):
    """One process of a concurrency measurement: set up and warm up `work`, wait for the others, run it for
    `seconds`; report what it did, its start and end, and the CPU time it got."""
    try:
        limit_threads(threads)
        run = work(cfg, warmup_steps, seed)
        barrier.wait(timeout=600)
        start, cpu = time.monotonic(), time.process_time()
        images = run(start + seconds)
        results.put({"images": images, "start": start, "end": time.monotonic(), "cpu_s": time.process_time() - cpu})
    except BaseException as error:  # reported by the parent as one line
        results.put({"error": f"{type(error).__name__}: {error}"})


def run_concurrent(
    cfg: dict, trials: int, threads: int, seconds: float, warmup_steps: int = 1, work=_training_work
) -> dict:
    """`trials` processes training `cfg` at once on one device: total and per-trial images/s, and `cpu_busy`, the
    CPU time they got over what the cores they asked for could give (well under 1: someone else held them)."""
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked into; spawn also matches Ray's workers
    barrier, results = context.Barrier(trials), context.Queue()
    processes = [
        context.Process(
            target=_timed_process, daemon=True, args=(work, cfg, threads, seconds, warmup_steps, seed, barrier, results)
        )
        for seed in range(trials)
    ]
    for process in processes:
        process.start()
    reports = [results.get(timeout=600 + seconds) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    errors = [r["error"] for r in reports if "error" in r]
    if errors:
        raise RuntimeError(f"a concurrent trial failed: {errors[0]}")
    wall = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    cores = min(trials * threads, os.cpu_count() or 1)
    return {
        "total_images_per_s": round(sum(r["images"] for r in reports) / wall, 1),
        "per_trial_images_per_s": [round(r["images"] / (r["end"] - r["start"]), 1) for r in reports],
        "cpu_busy": round(sum(r["cpu_s"] for r in reports) / (wall * cores), 2),
        "images_per_cpu_s": round(sum(r["images"] for r in reports) / sum(r["cpu_s"] for r in reports), 1),
    }


def bench_concurrency(
    model, trainer, width, batch_size, counts, threads, seconds, rounds, device, out=None
) -> list[dict]:
    """Total images/s with N trials sharing the device, N in `counts`, each with `threads` CPU threads; on a
    multi-core CPU also one trial given every core, the alternative to running trials side by side.

    `rounds` times over, so that each ratio pairs measurements taken a minute apart at most (a shared machine's speed
    drifts more than that between the start and the end of the section); rows give the median, min and max."""
    cfg = bench_config(trainer, model, width, batch_size, str(device))
    plan = [(1, threads)] + [(n, threads) for n in counts if n != 1]  # one trial first: the baseline
    cores = os.cpu_count() or 1
    on_cpu = torch.device(device).type == "cpu"
    if on_cpu and cores > threads:
        plan.append((1, cores))
    measured = {entry: [] for entry in plan}
    reference = {entry: [] for entry in plan if on_cpu and entry[1] == threads}
    for _ in range(rounds):
        for entry in plan:
            measured[entry].append(run_concurrent(cfg, *entry, seconds))
            if entry in reference:
                # The same N processes doing plain matmuls, right after: what this machine gives N processes at all
                # (a VM's second core may be a hyperthread, or shared with other VMs). `vs_machine` divides it out:
                # ~1 means the trials scale as well as the hardware lets anything scale.
                reference[entry].append(run_concurrent(cfg, *entry, seconds / 2, work=_matmul_work))
    single, ref_single = measured[plan[0]], reference.get(plan[0])
    rows = []
    for (trials, threads_each), runs in measured.items():
        ratio = lambda key, base, these=runs: summary([r[key] / b[key] for r, b in zip(these, base)])  # noqa: E731
        # vs_one_trial: total images/s over one trial's; per_cpu_s_vs_one_trial: the same per CPU-second the trials
        # got, which a busy neighbour does not change: ~1 means N trials on N free cores give N times the images
        row = {
            "bench": "concurrency",
            "model": model,
            "trainer": trainer,
            "width": width,
            "batch_size": batch_size,
            "device": str(device),
            "trials": trials,
            "threads_per_trial": threads_each,
            "seconds": seconds,
            "rounds": rounds,
            "total_images_per_s": summary([r["total_images_per_s"] for r in runs], 1),
            "per_trial_images_per_s": runs[-1]["per_trial_images_per_s"],
            "cpu_busy": round(statistics.median(r["cpu_busy"] for r in runs), 2),
            "images_per_cpu_s": round(statistics.median(r["images_per_cpu_s"] for r in runs), 1),
            "vs_one_trial": ratio("total_images_per_s", single),
            "per_cpu_s_vs_one_trial": ratio("images_per_cpu_s", single),
        }
        if (trials, threads_each) in reference:
            machine = [
                r["total_images_per_s"] / b["total_images_per_s"]
                for r, b in zip(reference[(trials, threads_each)], ref_single)
            ]
            trial = [r["total_images_per_s"] / b["total_images_per_s"] for r, b in zip(runs, single)]
            row["machine_vs_one_process"] = summary(machine)
            row["vs_machine"] = summary([t / m for t, m in zip(trial, machine)])
        rows.append(emit(row, out))
    return rows
