"""The sections of the GPU check that measure one trainer, or the device itself (bench/gpu_check.py runs each in
a process of its own; the ones on GPU sharing are bench/gpu_sharing.py). Each takes the check's rows, its settings
(gpu_check.GPU or DRY), the device and the parsed flags."""

from __future__ import annotations

from bench.gpu_probes import measure, peak_tflops, training_flops_per_image
from bench.gpu_sharing import dgl_config, section_concurrency, section_search
from models.registry import TRAINERS
from tuner.config.schema import resolve


def section_peak(rows, s: dict, device, args) -> None:
    tflops = peak_tflops(device, s["peak_n"], s["peak_dtype"])
    dtype = str(s["peak_dtype"]).replace("torch.", "")
    rows.emit({"bench": "peak", "device": str(device), "n": s["peak_n"], "dtype": dtype, "tflops": round(tflops, 4)})


def section_trainers(rows, s: dict, device, args) -> None:
    peak = (rows.find(bench="peak") or {}).get("tflops")  # from the peak section, when it ran
    for trainer in TRAINERS:
        cfg = resolve({"trainer": trainer, "model": s["model"], "width": s["width"], "epochs": 100})
        network_flops, trainer_flops = training_flops_per_image(cfg)
        rows.emit(
            {
                "bench": "flops",
                "trainer": trainer,
                "model": s["model"],
                "width": s["width"],
                "network_train_gflops_per_image": round(network_flops / 1e9, 4),
                "trainer_train_gflops_per_image": round(trainer_flops / 1e9, 4),
            }
        )
        for batch_size in s["batch_sizes"]:
            measured = measure(cfg.updated(batch_size=batch_size), device, s["steps"], s["warmup_steps"], s["repeats"])
            utilisation = {}
            if peak:
                utilisation = {
                    "mfu": round(network_flops * measured["images_per_s"] / (peak * 1e12), 4),
                    "hfu": round(trainer_flops * measured["images_per_s"] / (peak * 1e12), 4),
                }
            rows.emit(
                {
                    "bench": "gpu_trainer",
                    "trainer": trainer,
                    "model": s["model"],
                    "width": s["width"],
                    "batch_size": batch_size,
                    "device": str(device),
                    **measured,
                    **utilisation,
                }
            )


def section_variants(rows, s: dict, device, args) -> None:
    """Backprop at the larger batch without cuDNN's autotuner (the trainers turn it on for a GPU), and compiled."""
    batch_size = s["batch_sizes"][-1]
    cfg = resolve(
        {"trainer": "backprop", "model": s["model"], "width": s["width"], "epochs": 100, "batch_size": batch_size}
    )
    common = {
        "bench": "variant",
        "trainer": "backprop",
        "model": s["model"],
        "width": s["width"],
        "batch_size": batch_size,
        "device": str(device),
    }
    steps = (s["steps"], s["warmup_steps"], s["repeats"])
    rows.emit({**common, "variant": "cudnn_benchmark_off", **measure(cfg, device, *steps, cudnn_benchmark=False)})
    if args.dry_run:  # inductor's C++ build on a CPU takes minutes; the GPU run measures it
        rows.emit({**common, "variant": "compile", "skipped": "dry run"})
    else:
        rows.emit({**common, "variant": "compile", **measure(cfg.updated(compile=True), device, *steps)})


def section_extra(rows, s: dict, device, args) -> None:
    cfg = dgl_config(s, device, compile=True)
    measured = measure(cfg, device, s["steps"], s["warmup_steps"], s["repeats"])
    rows.emit(
        {
            "bench": "extra",
            "variant": "compile",
            "trainer": "dgl",
            "batch_size": cfg.batch_size,
            "device": str(device),
            **measured,
        }
    )


def section_concurrency_rows(rows, s: dict, device, args) -> None:
    section_concurrency(rows.emit, s, device)


def section_search_rows(rows, s: dict, device, args) -> None:
    section_search(rows.emit, s, device, args.data_dir, args.dry_run)


SECTIONS = {
    "peak": section_peak,
    "trainers": section_trainers,
    "variants": section_variants,
    "concurrency": section_concurrency_rows,
    "search": section_search_rows,
    "extra": section_extra,
}
