"""Images/s of each trainer and of a plain hand-written loop on the same batches, and each method's cost per image
over backprop's, paired round by round: the `trainer` and `vs_backprop` rows of bench/throughput.py."""

from __future__ import annotations

import statistics

from torch.utils._python_dispatch import TorchDispatchMode

from bench.common import bench_config, emit, make_runner, summary, synthetic_split, timed_epoch
from tuner.trial.data import Split


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
