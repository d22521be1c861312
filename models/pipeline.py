"""Layer-parallel DGL: the blocks of one network train at the same time, as a synchronous pipeline of processes.

A DGL block never waits for a gradient from above, so block i can learn from batch t while block i+1 learns from
batch t-1. `stages: S` splits the K blocks into S contiguous stages, balanced by their measured cost, and runs each
stage in its own process (its own CPU threads, or its own GPU where several are visible). Stage s takes a batch's
detached activations and labels from stage s-1, updates its blocks with `DGL.block_step` (the step sequential DGL
takes) and passes its last block's output on, through bounded links. Stage s therefore sees, for every batch, the
very input sequential DGL gives it — the previous block's output under that block's weights before it stepped on
that batch — and ends with the same parameters (bit for bit on a CPU at equal thread counts: tests/test_pipeline.py).
Only dropout differs: each stage draws its masks from its own stream, seeded by (seed, epoch, stage).

The main process keeps a full DGL copy: it feeds the batches, and after each epoch gathers the stages' state into
it, so `evaluate`, `state_dict` and `load_state_dict` are DGL's own and a checkpoint resumes exactly. Stages get
their state at the start of every epoch; nothing lives only in them between epochs.

Transport: torch.multiprocessing (spawn). Between CPU stages a link is a few slots of shared memory made once
(`Link`); where a stage is on a GPU, activations travel on queues by CUDA IPC. An activation is never serialised,
and it is the least code that spans the cores and GPUs of one machine. Stages do not span machines: a trial's stages
share a node (tuner/search/driver.py asks Ray for them as one bundle). A stage that dies, raises or stalls fails the
epoch with PipelineError, and every stage is stopped; a stage whose parent is gone exits by itself, so nothing is left
behind.
"""

from __future__ import annotations

import queue
import time

import torch
import torch.multiprocessing as mp

from models import TrialConfig
from models.catalog import IMAGE_CHANNELS, IMAGE_SIZE
from models.pipeline_stage import (
    POLL_S,
    Link,
    balanced_partition,
    block_costs,
    blocks_state,
    load_blocks_state,
    run_stage,
)
from models.trainers import DGL

QUEUE_DEPTH = 2  # batches in flight between two stages: enough to hide jitter, little memory
STALL_S = 600.0  # no progress for this long: a stage is alive but stuck
REBALANCE_AFTER_STEPS = 8  # an epoch at least this long times the stages well enough to move a cut (its first
# steps left out: models/pipeline_stage.py UNSTEADY_STEPS)
REBALANCE_GAIN = 0.03  # move a cut only for a slowest stage at least this much faster (a restart costs seconds)


class PipelineError(RuntimeError):
    """A stage process died, raised, or stopped making progress; the epoch did not complete."""


# ------------------------------------------------------------------------------------------------ the trainer
def stage_devices(device: torch.device, stages: int) -> list[str]:
    """One GPU per stage where several are visible (round robin), else every stage on the trainer's device."""
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    return [f"cuda:{s % count}" for s in range(stages)] if count > 1 else [str(device)] * stages


def joined_hits(done: list[dict], device: torch.device) -> torch.Tensor | None:
    """The stages' correct-prediction counts per block, in block order, on `device`: each moved there before they
    are joined, as with one GPU per stage each is on its own."""
    if any(result["correct"] is None for result in done):
        return None
    return torch.cat([result["correct"].to(device) for result in done])


class PipelinedDGL(DGL):
    """DGL with `stages` > 1: the same trainer interface; each epoch's training runs in the stage processes."""

    def __init__(self, cfg: TrialConfig, device, steps_per_epoch: int):
        super().__init__(cfg, device, steps_per_epoch)
        self.steps_per_epoch = steps_per_epoch
        self.stage_devices = stage_devices(self.device, cfg.stages)
        # this process's threads shared out: in a Ray trial, the CPUs granted (S x the per-stage CPUs)
        self.stage_threads = max(1, torch.get_num_threads() // cfg.stages)
        self.block_costs = self._costs_as_a_stage_runs()
        self.partition = balanced_partition(self.block_costs, cfg.stages)
        self.rebalanced = False  # once, after the first epoch long enough to time
        self.processes: list = []
        self.stages_current = False  # whether the stages hold this trainer's state (then it need not travel)

    def _costs_as_a_stage_runs(self) -> list[float]:
        """Each block's step cost, timed with the threads a stage will have: early (wide, high-resolution) blocks
        gain more from extra threads than late ones, so costs timed with all of this process's threads would
        balance the stages for a machine they do not run on."""
        threads = torch.get_num_threads()
        torch.set_num_threads(self.stage_threads)
        try:
            return block_costs(self, self.cfg.batch_size)
        finally:
            torch.set_num_threads(threads)

    def describe(self, s: int) -> str:
        first, last = self.partition[s][0] + 1, self.partition[s][-1] + 1
        return f"stage {s} (block {first})" if first == last else f"stage {s} (blocks {first}-{last})"

    def _start(self) -> None:
        context = mp.get_context("spawn")  # CUDA cannot be used in a forked child, and spawn is the same everywhere
        stages = len(self.partition)
        self.jobs = [context.Queue() for _ in range(stages)]
        self.links = [self._link(context, s) for s in range(stages)]  # links[s] feeds stage s
        self.results, self.diverged = context.Queue(), context.Event()
        self.processes = [
            context.Process(
                target=run_stage,
                name=f"dgl-stage-{s}",
                daemon=True,
                args=(
                    s,
                    blocks,
                    self.cfg,
                    self.stage_devices[s],
                    self.steps_per_epoch,
                    self.stage_threads,
                    self.jobs[s],
                    self.links[s],
                    self.links[s + 1] if s + 1 < stages else None,
                    self.results,
                    self.diverged,
                ),
            )
            for s, blocks in enumerate(self.partition)
        ]
        for process in self.processes:
            process.start()
        self.stages_current = False

    def _link(self, context, s: int):
        """What feeds stage s: shared-memory slots between CPU processes; a queue where CUDA tensors travel (by
        CUDA IPC, no copy through the host)."""
        if self.device.type == "cuda":  # then every stage is on a GPU (stage_devices)
            return context.Queue(maxsize=QUEUE_DEPTH)
        first = self.partition[s][0]
        channels, size = (IMAGE_CHANNELS, IMAGE_SIZE) if first == 0 else self.network.block_shapes[first - 1]
        return Link(context, (self.cfg.batch_size, channels, size, size), QUEUE_DEPTH)

    def train_epoch(self, batches) -> dict:
        self.parts.train()
        if not self.processes:
            self._start()
        threads = torch.get_num_threads()
        # while the stages train, this process only prepares and hands over batches: with one thread, no idle
        # worker thread of its own spins on a core a stage needs
        torch.set_num_threads(1)
        try:
            self.diverged.clear()
            for s, blocks in enumerate(self.partition):
                state = None if self.stages_current else blocks_state(self, blocks)
                self.jobs[s].put({"epoch": self.epoch, "state": state})
            for x, y in batches:
                if self.diverged.is_set():
                    break
                self._send((self._input(x), y))
            self._send(None)
            done = self._gather()
        except BaseException:
            self.close(kill=True)  # Ctrl-C or a failure: no stage outlives the epoch it was started for
            raise
        finally:
            torch.set_num_threads(threads)
        for result in done:
            load_blocks_state(self, result["state"])
        self.stage_waits = [result["waited"] for result in done]  # the last epoch's, for bench/parallel.py
        self.epoch, self.stages_current = self.epoch + 1, True
        if not self.rebalanced and done[0]["steps"] >= REBALANCE_AFTER_STEPS:
            self.rebalance([result["step_s"] for result in done])
        seen = done[-1]["seen"]
        metrics = {"train_loss": done[-1]["loss_sum"].item() / max(seen, 1)}
        metrics.update(self._accuracies(joined_hits(done, self.device), seen, "train_acc"))
        return metrics

    def rebalance(self, step_s: list[float]) -> bool:
        """Re-partition by what the stages measured while running together. Blocks timed alone do not slow down
        alike once two stages share a machine's caches and memory (measured: one stage 8%, the other 17% slower),
        so each block's cost is scaled by its stage's busy seconds per step over its blocks' timed-alone sum. When
        another cut promises a slowest stage at least REBALANCE_GAIN faster, the stages stop and restart with it
        next epoch: what they compute does not depend on where the cuts are, only how long it takes."""
        self.rebalanced = True
        scaled = list(self.block_costs)
        for blocks, busy in zip(self.partition, step_s):
            alone = sum(self.block_costs[i] for i in blocks)
            for i in blocks:
                scaled[i] *= busy / alone if alone > 0 else 1.0
        partition = balanced_partition(scaled, len(self.partition))
        slowest = max(sum(scaled[i] for i in blocks) for blocks in partition)
        if partition == self.partition or slowest > (1 - REBALANCE_GAIN) * max(step_s):
            return False
        self.close()
        self.block_costs, self.partition = scaled, partition
        return True

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.stages_current = False

    def _send(self, item) -> None:
        start = time.monotonic()
        while True:
            try:
                return self.links[0].put(item, timeout=POLL_S)
            except queue.Full:
                self._check(start)

    def _gather(self) -> list[dict]:
        done: dict[int, dict] = {}
        start = time.monotonic()
        while len(done) < len(self.processes):
            try:
                kind, s, payload = self.results.get(timeout=POLL_S)
            except queue.Empty:
                self._check(start)
                continue
            if kind == "error":
                self._fail(f"{self.describe(s)} raised: {payload.strip().splitlines()[-1]}")
            done[s], start = payload, time.monotonic()
        return [done[s] for s in range(len(self.processes))]

    def _check(self, since: float) -> None:
        for s, process in enumerate(self.processes):
            if process.exitcode is not None:
                self._fail(f"{self.describe(s)} died (exit code {process.exitcode})")
        if time.monotonic() - since > STALL_S:
            self._fail(f"no stage made progress for {STALL_S:.0f} s")

    def _fail(self, message: str) -> None:
        try:  # a stage that raised said what before it exited: that is the better message
            kind, s, payload = self.results.get(timeout=0.2)
            if kind == "error":
                message = f"{self.describe(s)} raised: {payload.strip().splitlines()[-1]}"
        except (queue.Empty, OSError, ValueError):
            pass
        self.close(kill=True)
        raise PipelineError(f"pipelined DGL: {message}; epoch {self.epoch + 1} did not complete")

    def close(self, kill: bool = False) -> None:
        """Stop the stage processes (at once with kill=True; else after the epoch in hand) and wait for them."""
        processes, self.processes = self.processes, []
        for process, jobs in zip(processes, getattr(self, "jobs", [])):
            if not kill and process.is_alive():
                jobs.put(None)
        for process in processes:
            if process.pid is None:  # never started
                continue
            process.join(timeout=0 if kill else 30)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()
        for q in [*getattr(self, "jobs", []), *getattr(self, "links", []), getattr(self, "results", None)]:
            if q is not None:
                q.cancel_join_thread()  # what this process still holds for a stage that is gone: drop it at exit
                q.close()

    def __del__(self):
        if getattr(self, "processes", None):
            self.close(kill=False)
