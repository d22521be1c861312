"""How DGL trials share one GPU, for bench/gpu_check.py: the `concurrency` rows (1, 2, 4 trial processes at once)
and the `search` rows (a small Ray Tune search, a quarter GPU per trial, on the CIFAR-10 folder given with --data-dir,
or on random images without one)."""

from __future__ import annotations

import sys
import time

from bench.common import fit_in_temp_storage, synthetic_arrays
from bench.concurrency import run_concurrent
from bench.gpu_probes import DeviceMemoryPoller
from tuner.config.schema import resolve
from tuner.errors import DataError, error_line
from tuner.trial.data import load_arrays

SEARCH_LRS = [0.01, 0.02, 0.05, 0.1]


def dgl_config(s: dict, device, width: float | None = None, **extra):
    """The DGL trial these rows measure: the check's network at its first batch size."""
    fields = {"trainer": "dgl", "model": s["model"], "width": s["width"] if width is None else width, "epochs": 100}
    return resolve({**fields, "batch_size": s["batch_sizes"][0], "device": str(device), **extra})


def section_concurrency(emit, s: dict, device) -> None:
    cfg = dgl_config(s, device)
    single = None
    for trials in s["concurrency"]:
        measured = run_concurrent(cfg, trials, threads=1, seconds=s["concurrency_s"])
        single = single or measured["total_images_per_s"]
        emit(
            {
                "bench": "concurrency",
                "trainer": "dgl",
                "model": s["model"],
                "width": s["width"],
                "batch_size": cfg.batch_size,
                "device": str(device),
                "trials": trials,
                "seconds": s["concurrency_s"],
                **measured,
                "vs_one_trial": round(measured["total_images_per_s"] / single, 3),
            }
        )


def search_arrays(data_dir: str | None, dry: bool) -> tuple[dict, str]:
    if data_dir:
        try:
            return load_arrays(data_dir), str(data_dir)
        except DataError as error:
            print(f"# no CIFAR-10 subset ({error}); searching on random images", file=sys.stderr)
    n = 500 if dry else 5000
    return synthetic_arrays(n, 100), "synthetic"


def section_search(emit, s: dict, device, data_dir: str | None, dry: bool) -> None:
    """`emit` takes each row (bench/gpu_check.py's Rows.emit)."""
    try:
        import ray
        from ray import tune
    except ImportError as error:
        emit(
            {
                "bench": "search",
                "skipped": f"ray is not importable here ({error}); install the project "
                f"(pip install -e .) or see bench/gpu_check.sh",
            }
        )
        return
    from tuner.search.ray_cluster import init_ray
    from tuner.trial.trainable import train_trial

    arrays, source = search_arrays(data_dir, dry)
    base = dgl_config(
        s,
        device,
        width=s["search_width"],
        epochs=2,
        train_subset=s["search_train"],
        val_size=s["search_val"],
        eval_batch_size=500,
    )
    resources = {"cpu": s["search_cpus"], "gpu": s["search_gpus"]}
    init_ray()
    started = time.time()
    with DeviceMemoryPoller() as memory:
        results, received = fit_in_temp_storage(
            tune.with_parameters(train_trial, arrays=arrays),
            resources,
            {**base.model_dump(), "lr": tune.grid_search(SEARCH_LRS)},
            "gpu_check_search",
            max_concurrent_trials=len(SEARCH_LRS),
        )
    wall = time.time() - started
    ray.shutdown()
    errors = [error_line(str(r.error)) for r in results if r.error is not None]
    spans = []
    for trial_id in sorted({r["trial_id"] for r in received}):
        reports = [r for r in received if r["trial_id"] == trial_id]
        first, last = reports[0], reports[-1]
        spans.append((first["received"] - first["time_this_iter_s"], last["received"]))
        emit(
            {
                "bench": "search_trial",
                "trial_id": trial_id,
                "lr": last.get("config", {}).get("lr"),
                "epochs": last["epoch"],
                "val_acc": round(last["val_acc"], 4),
                "images_per_s": [round(r["images_per_s"], 1) for r in reports],
                "epoch_s": [round(r["epoch_s"], 2) for r in reports],
            }
        )
    overlap = max((sum(1 for a, b in spans if a <= t < b) for t, _ in spans), default=0)
    emit(
        {
            "bench": "search",
            "trials": len(spans),
            "resources_per_trial": resources,
            "data": source,
            "width": s["search_width"],
            "epochs": 2,
            "wall_s": round(wall, 1),
            "most_trials_at_once": overlap,
            "peak_device_mem_gib": None if memory.peak_mib is None else round(memory.peak_mib / 1024, 2),
            "errors": errors,
        }
    )
