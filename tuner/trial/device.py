"""Where a run trains, and how many CPU threads it may use."""

from __future__ import annotations

import os

import torch


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from tuner.errors import ConfigError

        raise ConfigError("'device' is cuda but no CUDA device is visible; use device=auto or device=cpu")
    return torch.device(name)


def limit_threads(cpus: float | None) -> int:
    """Give torch as many threads as CPUs this process was granted, so concurrent trials don't oversubscribe."""
    threads = max(1, int(cpus)) if cpus else (os.cpu_count() or 1)
    torch.set_num_threads(threads)
    return threads


def limit_gpu_memory(device: torch.device, gpus: float | None) -> float | None:
    """Hold a trial granted a fraction of a GPU to that fraction of its memory; returns the cap, or None.

    Ray's GPU fractions are a scheduling label: four 0.25 trials share one device and nothing stops one of them from
    allocating the rest. Capped, a trial that outgrows its share (a wide aux head, compile's autotuning) gets a CUDA
    out-of-memory error in its own process, and fails alone, instead of running its neighbours out of memory and
    failing them. The cap covers PyTorch's caching allocator, not the CUDA context (~0.5 GB per process)."""
    if device.type != "cuda" or not gpus or gpus >= 1:
        return None
    # torch.device("cuda") has no index, which this function refuses: None means the current device
    torch.cuda.set_per_process_memory_fraction(float(gpus), device.index)
    return float(gpus)
