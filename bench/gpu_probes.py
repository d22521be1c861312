"""What the GPU check measures on one trainer, or on the device itself: the peak matrix-product rate, training
FLOPs per image, host syncs per epoch, images/s and memory, the memory all processes hold together."""

from __future__ import annotations

import itertools
import shutil
import statistics
import subprocess
import threading
import time
import warnings

import torch
import torch.nn.functional as F

from bench.common import make_runner, synchronize, synthetic_split, timed_epoch
from models.networks import build_network
from models.registry import build_trainer


def peak_tflops(device, n: int, dtype) -> float:
    """TFLOP/s of an n x n x n matrix product: mean of 10 after 3 warm-ups."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    synchronize(device)
    return 2 * n**3 * 10 / (time.perf_counter() - start) / 1e12


def training_flops_per_image(cfg: dict, batch: int = 4) -> tuple[float, float]:
    """(network, trainer) training FLOPs per image, counted on the CPU: the network alone, forward + backward, and
    one step of cfg's trainer. FlopCounterMode counts matrix products and convolutions, backward included (no
    gradient for the input image, as in training), not the elementwise ops."""
    from torch.utils.flop_counter import FlopCounterMode

    cpu_cfg = cfg.updated(device="cpu", compile=False)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    network = build_network(cfg.model, cfg.width, 1)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(network(x), y).backward()
    network_flops = counter.get_total_flops() / batch
    trainer = build_trainer(cpu_cfg, "cpu", steps_per_epoch=1)
    with FlopCounterMode(display=False) as counter:
        trainer.train_step(x, y)
    return network_flops, counter.get_total_flops() / batch


def host_syncs(runner, split, batch_size: int, steps: int, device) -> int | None:
    """Times one epoch of `steps` steps made the host wait for the GPU (item(), tolist(), a copy to the host...), as
    CUDA's sync debug mode reports them; None off CUDA. The trainers promise no wait inside an epoch: the metrics are
    read once at its end (a few syncs), plus a NaN check every NAN_CHECK_EVERY steps."""
    if device.type != "cuda":
        return None
    batches = itertools.islice(split.batches(batch_size, train=True, seed=0, epoch=99), steps)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            runner.train_epoch(batches)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def measure(cfg: dict, device, steps: int, warmup_steps: int, repeats: int, cudnn_benchmark: bool = True) -> dict:
    """images/s of one trainer alone on the device (median of `repeats`), its peak memory, its warm-up time.
    cudnn_benchmark=False: without cuDNN's autotuner, which a trainer turns on for a GPU."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    batch_size = cfg.batch_size
    runner = make_runner(cfg.trainer, cfg, device)
    torch.backends.cudnn.benchmark = cudnn_benchmark and device.type == "cuda"
    split = synthetic_split(steps * batch_size, device)
    warmup = timed_epoch(runner, split, batch_size, warmup_steps, epoch=0)  # compile and autotuning happen here
    ips = [
        t["images"] / t["wall_s"]
        for t in (timed_epoch(runner, split, batch_size, steps, epoch=r + 1) for r in range(repeats))
    ]
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    syncs = host_syncs(runner, split, batch_size, steps, device)
    del runner, split
    return {
        "images_per_s": round(statistics.median(ips), 1),
        "spread": [round(min(ips), 1), round(max(ips), 1)],
        "warmup_s": round(warmup["wall_s"], 2),
        "peak_mem_gib": None if memory is None else round(memory, 2),
        "host_syncs_per_epoch": syncs,
        "steps_per_epoch": steps,
    }


class DeviceMemoryPoller:
    """The most GPU memory in use while it runs, all processes together (nvidia-smi, twice a second): Ray's GPU
    fractions are a scheduling label, nothing isolates one trial's memory from another's."""

    def __init__(self):
        self.peak_mib, self._stop = None, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.5):
            try:
                text = subprocess.run(
                    ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                ).stdout
                used = max(int(v) for v in text.split())
                self.peak_mib = max(self.peak_mib or 0, used)
            except (OSError, ValueError, subprocess.SubprocessError):
                pass

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
