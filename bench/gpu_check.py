"""The GPU check: how fast the trainers run on one CUDA GPU, and whether a small Ray Tune search shares it well.
Start it through bench/gpu_check.sh (its header says how); a few minutes on one data-centre GPU. Every row is one
JSON line on stdout and in OUT/gpu_check.jsonl, by its `bench` key:

  peak         a large bf16 matrix product (8192^3): the TFLOP/s that model FLOP utilisation divides by
  flops        training FLOPs per image, counted by torch's FlopCounterMode (on the CPU, a batch of 4): the network
               alone, forward + backward (what MFU counts), and one step of each trainer (heads, SG modules too)
  gpu_trainer  each trainer on vgg16 (width 1) at batch 128 and 512, bf16 autocast, channels_last: images/s, peak
               memory, mfu = network FLOPs/image x images/s / peak, hfu, the same with the trainer's FLOPs, and
               host_syncs_per_epoch, the times a 20-step epoch made the host wait for the GPU (sync debug mode)
  variant      backprop at batch 512 without cudnn.benchmark (the trainers turn it on), and with compile=True
  concurrency  1, 2, 4 dgl trials (processes) sharing the GPU at batch 128: total images/s
  search       a 4-trial Ray Tune search (tuner.trial.trainable.train_trial) at 0.25 GPU per trial, 2 epochs, on the
               CIFAR-10 folder given with --data-dir (random images without one): per-trial images/s and val_acc,
               wall time, peak device memory in use
  extra        dgl at batch 128 with compile=True, only if the time budget has room left
  summary      the device, and the targets the trainers are held to: backprop MFU at batch 512 >= 0.35, dgl <= 1.3 x
               backprop's time per image

Each section runs in a process of its own under a hard time limit (LIMITS_S; --limit-s lowers them all), killed
with whatever it started (Ray's processes too) when it overruns. A section that fails or overruns leaves a
{"bench": ..., "error": ...} row and the others still run, so one run gives every number it can. The check ends
with one table, a line per section (ok, error, timeout, skipped, left out), and exits 0 only if every section it
was asked for measured: 1 otherwise, a machine without a CUDA device included (every section then says so),
2 for a bad flag. --dry-run: every step on the CPU and tiny (narrow vgg16, batch 8/16, a small fp32 matrix), to
check the script where there is no GPU.

This process imports torch and the standard library only: what a section needs beyond (numpy, pydantic, Ray)
is imported in the section's process, and a missing package is that section's error, not a crash of the check.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from tuner.text import plural, text_table

ROOT = Path(__file__).resolve().parents[1]

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
# seconds each section may take, start-up included (imports, Ray, compiling); on one H100/H200 the check is ~5 min
LIMITS_S = {"peak": 60, "trainers": 300, "variants": 300, "concurrency": 120, "search": 300, "extra": 240}
SECTIONS = tuple(LIMITS_S)
TARGET_MFU, TARGET_DGL_COST = 0.35, 1.30


class Rows:
    """Rows as they come: printed, appended to OUT/gpu_check.jsonl (which every section's process appends to), and
    kept for the summary."""

    def __init__(self, out: Path, fresh: bool):
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "gpu_check.jsonl"
        if fresh:
            self.path.write_text("")
        self.rows = self.read()

    def read(self) -> list[dict]:
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

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
# one section, in its own process


def run_here(name: str, args) -> int:
    s = DRY if args.dry_run else GPU
    # few threads on a CPU: on a small shared machine an extra OpenMP thread waits on a busy core at every op
    torch.set_num_threads(min(s["threads"], os.cpu_count() or 1))
    rows = Rows(Path(args.out), fresh=False)
    try:
        inject_fault(name)
        from bench.gpu_sections import SECTIONS as RUNS  # numpy, pydantic, Ray: see bench/gpu_check.sh

        RUNS[name](rows, s, torch.device(s["device"]), args)
    except Exception as error:  # the check goes on with the other sections
        missing = "; bench/make_gpu_carry.sh carries it" if isinstance(error, ImportError) else ""
        rows.emit({"bench": name, "error": f"{type(error).__name__}: {str(error).strip()[:500]}{missing}"})
        return 1
    return 0


def inject_fault(name: str) -> None:
    """For the tests: DT_GPU_CHECK_FAULT=raise:SECTION or stall:SECTION (comma-separated) makes a section fail or
    hang, as a real failure would."""
    for fault in filter(None, os.environ.get("DT_GPU_CHECK_FAULT", "").split(",")):
        action, section = fault.split(":")
        if section == name and action == "raise":
            raise RuntimeError("DT_GPU_CHECK_FAULT: injected failure")
        if section == name and action == "stall":
            time.sleep(3600)


# ----------------------------------------------------------------------------------------------------------------
# the check: every section in turn, then the summary


def run_child(name: str, args, rows: Rows, limit_s: float) -> tuple[str, str]:
    """(status, detail) of one section run in a process of its own, killed with its process group past limit_s."""
    cmd = [sys.executable, "-m", "bench.gpu_check", "--section", name, "--out", args.out]
    cmd += (["--dry-run"] if args.dry_run else []) + (["--data-dir", args.data_dir] if args.data_dir else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    known = len(rows.read())
    child = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
    try:
        code = child.wait(timeout=limit_s)
    except (subprocess.TimeoutExpired, KeyboardInterrupt) as stop:
        os.killpg(child.pid, signal.SIGKILL)  # Ray's processes, or compile workers, go with it
        child.wait()
        if isinstance(stop, KeyboardInterrupt):
            raise
        code = None
    new = rows.read()[known:]
    rows.rows.extend(new)
    if code is None:
        rows.emit({"bench": name, "error": f"timed out: killed after {limit_s:.0f} s"})
        return "timeout", f"killed after {limit_s:.0f} s"
    errors = [r["error"] for r in new if "error" in r]
    if code != 0 or errors:
        return "error", (errors[0] if errors else f"exit code {code}, no row")
    skipped = [r["skipped"] for r in new if r.get("bench") == name and "skipped" in r]
    return ("skipped", skipped[0]) if skipped else ("ok", plural(len(new), "row"))


def summary_row(rows: Rows, s: dict, started: float, statuses: dict, device_name: str) -> dict:
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
    return rows.emit(
        {
            "bench": "summary",
            "device": device_name,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "total_s": round(time.time() - started, 1),
            "sections": {name: status for name, (status, _, _) in statuses.items()},
            **targets,
        }
    )


def parse_args(argv):
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
    parser.add_argument("--limit-s", type=float, help="seconds; no section may take longer (default: LIMITS_S)")
    parser.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)  # how the check runs one section
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.section:
        return run_here(args.section, args)
    skip = {name.strip() for name in args.skip.split(",") if name.strip()}
    if skip - set(SECTIONS):
        print(f"error: --skip: '{args.skip}' must be a comma-separated list of {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    if args.limit_s is not None and args.limit_s <= 0:
        print(f"error: --limit-s {args.limit_s:g}: a number of seconds above 0", file=sys.stderr)
        return 2
    cuda = args.dry_run or torch.cuda.is_available()
    if not cuda:
        print("# no CUDA device is visible: every section is skipped (--dry-run runs them on the CPU)", flush=True)
    started, rows, statuses = time.time(), Rows(Path(args.out), fresh=True), {}
    for name in SECTIONS:
        section_started = time.time()
        if name in skip:
            status, detail = "left out", "--skip"
        elif name == "extra" and (args.dry_run or time.time() - started >= args.budget_s):
            status, detail = "left out", "dry run" if args.dry_run else f"past --budget-s {args.budget_s:g}"
        elif not cuda:
            status, detail = "skipped", "no CUDA device is visible"
            rows.emit({"bench": name, "skipped": detail})
        else:
            status, detail = run_child(name, args, rows, min(LIMITS_S[name], args.limit_s or LIMITS_S[name]))
        statuses[name] = (status, time.time() - section_started, detail)
    device_name = "cpu (dry run)" if args.dry_run else torch.cuda.get_device_name(0) if cuda else "no CUDA device"
    summary_row(rows, DRY if args.dry_run else GPU, started, statuses, device_name)
    table = [[name, status, f"{seconds:.0f}", detail[:100]] for name, (status, seconds, detail) in statuses.items()]
    print("\n".join(["", f"GPU check on {device_name}:", *text_table(["section", "status", "s", "detail"], table)]))
    return 0 if all(status in ("ok", "left out") for status, _, _ in statuses.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
