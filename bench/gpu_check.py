"""The GPU check: how fast the trainers run on one CUDA GPU, and whether a small Ray Tune search shares it well.
Start it through bench/gpu_check.sh (its header says how); a few minutes on one data-centre GPU. Every row is one
JSON line on stdout and in OUT/gpu_check.jsonl, by its `bench` key:

  peak         a large bf16 matrix product (8192^3): the TFLOP/s that model FLOP utilisation divides by
  flops        training FLOPs per image, counted by torch's FlopCounterMode (on the CPU, a batch of 4): the network
               alone, forward + backward (what MFU counts), and one step of each trainer (heads, SG modules too)
  gpu_trainer  each trainer on vgg16 (width 1) at batch 128 and 512, bf16 autocast, channels_last: images/s, peak
               memory, mfu = network FLOPs/image x images/s / peak, hfu, the same with the trainer's FLOPs, and
               host_syncs_per_epoch, the times a 20-step epoch made the host wait for the GPU (sync debug mode)
  variant      backprop at batch 512 with cudnn.benchmark on, and with compile=True: measured, not assumed
  concurrency  1, 2, 4 dgl trials (processes) sharing the GPU at batch 128: total images/s
  search       a 4-trial Ray Tune search (tuner.trial.train_trial) at 0.25 GPU per trial, 2 epochs, on the
               CIFAR-10 folder given with --data-dir (random images without one): per-trial images/s and val_acc,
               wall time, peak device memory in use
  extra        dgl at batch 128 with compile=True, only if the time budget has room left
  summary      the device, and the targets the trainers are held to: backprop MFU at batch 512 >= 0.35, dgl <= 1.3 x
               backprop's time per image

A section that fails leaves an {"bench": ..., "error": ...} row and the others still run, so one run gives every
number it can. --dry-run: every step on the CPU and tiny (narrow vgg16, batch 8/16, a small fp32 matrix), to check
the script where there is no GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable, as `python -m bench.gpu_check` does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.gpu_probes import measure, peak_tflops, training_flops_per_image
from bench.gpu_sharing import dgl_config, section_concurrency, section_search
from models.registry import TRAINERS
from tuner.schema import resolve

GPU = dict(
    device="cuda",
    model="vgg16",
    width=1.0,
    batch_sizes=[128, 512],
    steps=20,
    warmup_steps=5,
    repeats=3,
    peak_n=8192,
    peak_dtype=torch.bfloat16,
    concurrency=[1, 2, 4],
    concurrency_s=8.0,
    search_width=1.0,
    search_train=None,
    search_val=1000,
    search_cpus=2.0,
    search_gpus=0.25,
    threads=4,
)
DRY = dict(
    device="cpu",
    model="vgg16",
    width=0.0625,
    batch_sizes=[8, 16],
    steps=2,
    warmup_steps=1,
    repeats=1,
    peak_n=256,
    peak_dtype=torch.float32,
    concurrency=[1, 2],
    concurrency_s=1.0,
    search_width=0.0625,
    search_train=400,
    search_val=100,
    search_cpus=0.5,
    search_gpus=0.0,
    threads=1,
)
SECTIONS = ("peak", "trainers", "variants", "concurrency", "search", "extra")
TARGET_MFU, TARGET_DGL_COST = 0.35, 1.30


class Rows:
    """Rows as they come: printed, appended to OUT/gpu_check.jsonl, kept for the summary."""

    def __init__(self, out: Path):
        out.mkdir(parents=True, exist_ok=True)
        self.path, self.rows = out / "gpu_check.jsonl", []
        self.path.write_text("")

    def emit(self, row: dict) -> dict:
        line = json.dumps(row)
        print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")
        self.rows.append(row)
        return row

    def find(self, **match) -> dict | None:
        return next((r for r in self.rows if all(r.get(k) == v for k, v in match.items())), None)


# ----------------------------------------------------------------------------------------------------------------
# sections


def section_trainers(rows: Rows, s: dict, device, peak: float | None) -> None:
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


def section_variants(rows: Rows, s: dict, device, dry: bool) -> None:
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
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        rows.emit(
            {
                **common,
                "variant": "cudnn_benchmark",
                **measure(cfg, device, s["steps"], s["warmup_steps"], s["repeats"]),
            }
        )
    finally:
        torch.backends.cudnn.benchmark = before
    if dry:  # inductor's C++ build on a CPU takes minutes; the GPU run measures it
        rows.emit({**common, "variant": "compile", "skipped": "dry run"})
    else:
        rows.emit(
            {
                **common,
                "variant": "compile",
                **measure(cfg.updated(compile=True), device, s["steps"], s["warmup_steps"], s["repeats"]),
            }
        )


def summary_row(rows: Rows, s: dict, device, started: float) -> dict:
    big, small = s["batch_sizes"][-1], s["batch_sizes"][0]
    backprop_big = rows.find(bench="gpu_trainer", trainer="backprop", batch_size=big) or {}
    targets = {f"backprop_mfu_at_{big}": backprop_big.get("mfu"), "mfu_target": TARGET_MFU}
    for batch_size in (small, big):
        bp = rows.find(bench="gpu_trainer", trainer="backprop", batch_size=batch_size)
        dgl = rows.find(bench="gpu_trainer", trainer="dgl", batch_size=batch_size)
        if bp and dgl:
            targets[f"dgl_time_per_image_vs_backprop_at_{batch_size}"] = round(
                bp["images_per_s"] / dgl["images_per_s"], 3
            )
    targets["dgl_target"] = TARGET_DGL_COST
    syncs = [
        r["host_syncs_per_epoch"]
        for r in rows.rows
        if r.get("bench") == "gpu_trainer" and r.get("host_syncs_per_epoch") is not None
    ]
    targets["most_host_syncs_per_epoch"] = max(syncs, default=None)  # a few at the epoch's end, none per step
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)"
    return rows.emit(
        {
            "bench": "summary",
            "device": name,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "total_s": round(time.time() - started, 1),
            **targets,
        }
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench_out/gpu_check", help="folder for gpu_check.jsonl")
    parser.add_argument("--data-dir", help="a CIFAR-10 folder for the search (e.g. bench/make_gpu_carry.sh's subset)")
    parser.add_argument("--dry-run", action="store_true", help="every step on the CPU, tiny")
    parser.add_argument("--skip", default="", help="comma-separated sections to leave out: " + ", ".join(SECTIONS))
    parser.add_argument(
        "--budget-s",
        type=float,
        default=180.0,
        help="seconds; the `extra` section (a DGL compile, minutes) starts only before this",
    )
    args = parser.parse_args(argv)
    skip = {name.strip() for name in args.skip.split(",") if name.strip()}
    if skip - set(SECTIONS):
        print(f"error: --skip: '{args.skip}' must be a comma-separated list of {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    s = DRY if args.dry_run else GPU
    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA device is visible; run with --dry-run to check the script on the CPU", file=sys.stderr)
        return 2
    started, device, rows = time.time(), torch.device(s["device"]), Rows(Path(args.out))
    # few threads on a CPU: on a small shared machine an extra OpenMP thread waits on a busy core at every op
    torch.set_num_threads(min(s["threads"], os.cpu_count() or 1))

    def section(name, run):
        if name in skip:
            return
        try:
            run()
        except Exception as error:  # keep what the other sections measure
            rows.emit({"bench": name, "error": f"{type(error).__name__}: {str(error).strip()[:500]}"})

    peak = {}

    def section_peak():
        tflops = peak_tflops(device, s["peak_n"], s["peak_dtype"])
        peak.update(
            rows.emit(
                {
                    "bench": "peak",
                    "device": str(device),
                    "n": s["peak_n"],
                    "dtype": str(s["peak_dtype"]).replace("torch.", ""),
                    "tflops": round(tflops, 4),
                }
            )
        )

    section("peak", section_peak)
    section("trainers", lambda: section_trainers(rows, s, device, peak.get("tflops")))
    section("variants", lambda: section_variants(rows, s, device, args.dry_run))
    section("concurrency", lambda: section_concurrency(rows.emit, s, device))
    section("search", lambda: section_search(rows.emit, s, device, args.data_dir, args.dry_run))
    if time.time() - started < args.budget_s and not args.dry_run:
        cfg = dgl_config(s, device, compile=True)
        section(
            "extra",
            lambda: rows.emit(
                {
                    "bench": "extra",
                    "variant": "compile",
                    "trainer": "dgl",
                    "batch_size": cfg.batch_size,
                    "device": str(device),
                    **measure(cfg, device, s["steps"], s["warmup_steps"], s["repeats"]),
                }
            ),
        )
    summary_row(rows, s, device, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
