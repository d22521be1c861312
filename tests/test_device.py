"""Where a trial runs and what it may use of the machine: threads per granted CPU, memory per granted GPU share."""

import torch

from tuner.trial.device import limit_gpu_memory, limit_threads


def test_threads_follow_the_cpus_granted():
    before = torch.get_num_threads()
    try:
        assert limit_threads(1.0) == 1 and torch.get_num_threads() == 1
        assert limit_threads(0.5) == 1  # a fraction of a CPU still needs a thread
        assert limit_threads(None) >= 1  # outside Ray: every core
    finally:
        torch.set_num_threads(before)


def test_a_gpu_share_caps_the_trials_memory(monkeypatch):
    calls = []
    monkeypatch.setattr(
        torch.cuda, "set_per_process_memory_fraction", lambda fraction, device=None: calls.append((fraction, device))
    )
    assert limit_gpu_memory(torch.device("cuda"), 0.25) == 0.25
    assert limit_gpu_memory(torch.device("cuda:1"), 0.5) == 0.5
    assert calls == [(0.25, None), (0.5, 1)]  # a float, and the device index (None: the current device)
    # a whole GPU, no GPU granted, or a CPU trial: nothing to cap
    assert limit_gpu_memory(torch.device("cuda"), 1.0) is None
    assert limit_gpu_memory(torch.device("cuda"), None) is None
    assert limit_gpu_memory(torch.device("cpu"), 0.25) is None
    assert len(calls) == 2
