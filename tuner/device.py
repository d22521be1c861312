"""Where a run trains, and how many CPU threads it may use."""

from __future__ import annotations

import os

import torch


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from tuner.config import ConfigError
        raise ConfigError("'device' is cuda but no CUDA device is visible; use device=auto or device=cpu")
    return torch.device(name)


def limit_threads(cpus: float | None) -> int:
    """Give torch as many threads as CPUs this process was granted, so concurrent trials don't oversubscribe."""
    threads = max(1, int(cpus)) if cpus else (os.cpu_count() or 1)
    torch.set_num_threads(threads)
    return threads
