"""Layer-parallel DGL: the blocks of one network train at the same time, as a synchronous pipeline of processes.

A DGL block never waits for a gradient from above, so block i can learn from batch t while block i+1 learns from
batch t-1. `stages: S` splits the K blocks into S contiguous stages, balanced by their measured cost, and runs each
stage in its own process (its own CPU threads, or its own GPU where several are visible). Stage s takes a batch's
detached activations and labels from stage s-1, updates its blocks with `DGL.block_step` (the step sequential DGL
takes) and passes its last block's output on, through bounded queues. Stage s therefore sees, for every batch, the
very input sequential DGL gives it — the previous block's output under that block's weights before it stepped on
that batch — and ends with the same parameters (bit for bit on a CPU at equal thread counts: tests/test_pipeline.py).
Only dropout differs: each stage draws its masks from its own stream, seeded by (seed, epoch, stage).

The main process keeps a full DGL copy: it feeds the batches, and after each epoch gathers the stages' state into
it, so `evaluate`, `state_dict` and `load_state_dict` are DGL's own and a checkpoint resumes exactly. Stages get
their state at the start of every epoch; nothing lives only in them between epochs.

Transport: torch.multiprocessing queues (spawn). A CPU tensor put on one moves to shared memory and a CUDA tensor
travels by CUDA IPC, so an activation is never serialised, and it is the least code that spans the cores and GPUs
of one machine. Stages do not span machines: a trial's stages share a node (tuner/search.py asks Ray for them as
one bundle). A stage that dies, raises or stalls fails the epoch with PipelineError, and every stage is stopped;
a stage whose parent is gone exits by itself, so nothing is left behind.
"""

from __future__ import annotations

import copy
import queue
import time
import traceback

import torch
import torch.multiprocessing as mp

from models.optim import make_optimizer
from models.trainer_base import NAN_CHECK_EVERY, _hits
from models.trainers import DGL, BlockWithHead

QUEUE_DEPTH = 2  # batches in flight between two stages: enough to hide jitter, little memory
POLL_S = 0.5  # how often a blocked queue operation checks that the other side is alive
STALL_S = 600.0  # no progress for this long: a stage is alive but stuck


class PipelineError(RuntimeError):
    """A stage process died, raised, or stopped making progress; the epoch did not complete."""


def balanced_partition(costs: list[float], stages: int) -> list[list[int]]:
    """Contiguous groups of block indices, `stages` of them, minimising the most expensive group (exact, O(S K^2))."""
    k = len(costs)
    prefix = [0.0]
    for cost in costs:
        prefix.append(prefix[-1] + cost)
    # best[s][j]: the least possible max-group cost for the first j blocks in s groups; cut[s][j]: where group s starts
    best = [[float("inf")] * (k + 1) for _ in range(stages + 1)]
    cut = [[0] * (k + 1) for _ in range(stages + 1)]
    best[0][0] = 0.0
    for s in range(1, stages + 1):
        for j in range(s, k + 1):
            for i in range(s - 1, j):
                value = max(best[s - 1][i], prefix[j] - prefix[i])
                if value < best[s][j]:
                    best[s][j], cut[s][j] = value, i
    groups, j = [], k
    for s in range(stages, 0, -1):
        groups.append(list(range(cut[s][j], j)))
        j = cut[s][j]
    return groups[::-1]


def block_costs(trainer: DGL, batch_size: int, repeats: int = 3) -> list[float]:
    """Seconds of one training step of each block with its head (forward, backward, optimizer step: a wide head's
    step is a good part of its block's cost), on copies, so the trainer's parameters, BatchNorm statistics and the
    global RNG stay untouched: the least of `repeats` timings."""
    generator = torch.Generator().manual_seed(0)
    h = torch.randn(batch_size, 3, 32, 32, generator=generator).to(trainer.device)
    y = torch.randint(0, 10, (batch_size,), generator=generator).to(trainer.device)
    costs = []
    for block, head, sim_conv in zip(trainer.network.blocks, trainer.heads, trainer.sim_convs):
        module = BlockWithHead(copy.deepcopy(block), copy.deepcopy(head), copy.deepcopy(sim_conv)).train()
        optimizer = make_optimizer(module.parameters(), trainer.cfg)
        timings = []
        for _ in range(repeats):
            start = time.perf_counter()
            with trainer.amp():
                out, logits, _ = module(h)
            optimizer.zero_grad(set_to_none=True)
            trainer.ce(logits, y).backward()
            optimizer.step()
            if trainer.on_cuda:
                torch.cuda.synchronize(trainer.device)
            timings.append(time.perf_counter() - start)
        costs.append(min(timings))
        h = out.detach()
    return costs


def owner(key: str, num_blocks: int) -> int:
    """The block a key of `DGL.parts.state_dict()` belongs to (the classifier is the last block's head)."""
    parts = key.split(".")
    if parts[:2] == ["network", "blocks"] or parts[0] in ("heads", "sim_convs"):
        return int(parts[2] if parts[0] == "network" else parts[1])
    if parts[:2] == ["network", "classifier"]:
        return num_blocks - 1
    raise KeyError(f"pipelined DGL does not know which block owns '{key}'")


def blocks_state(trainer: DGL, blocks: list[int]) -> dict:
    """What a stage trains: its blocks' parameters and buffers, optimizers and schedules."""
    num_blocks = len(trainer.network.blocks)
    return {
        "parts": {k: v for k, v in trainer.parts.state_dict().items() if owner(k, num_blocks) in blocks},
        "optimizers": {i: trainer.optimizers[i].state_dict() for i in blocks},
        "schedulers": {i: trainer.schedulers[i].state_dict() for i in blocks},
    }


def load_blocks_state(trainer: DGL, state: dict) -> None:
    _, unexpected = trainer.parts.load_state_dict(state["parts"], strict=False)
    assert not unexpected, unexpected
    for i, opt_state in state["optimizers"].items():
        trainer.optimizers[i].load_state_dict(opt_state)
    for i, sched_state in state["schedulers"].items():
        trainer.schedulers[i].load_state_dict(sched_state)


# ------------------------------------------------------------------------------------------------ a stage process
def _get(q, alive):
    while True:
        try:
            return q.get(timeout=POLL_S)
        except queue.Empty:
            if not alive():
                raise SystemExit(1) from None


def _put(q, item, alive):
    while True:
        try:
            return q.put(item, timeout=POLL_S)
        except queue.Full:
            if not alive():
                raise SystemExit(1) from None


def run_stage(
    index: int,
    blocks: list[int],
    cfg: dict,
    device: str,
    steps_per_epoch: int,
    threads: int,
    jobs,
    inbox,
    outbox,
    results,
    diverged,
) -> None:
    """A stage's life: per epoch, load its state, train on what arrives until the end marker, send its state back."""
    parent = mp.parent_process()
    alive = parent.is_alive if parent is not None else (lambda: True)
    try:
        torch.set_num_threads(threads)
        trainer = DGL(cfg.updated(stages=1), device, steps_per_epoch)
        last = blocks[-1] == len(trainer.network.blocks) - 1
        while (job := _get(jobs, alive)) is not None:
            if job["state"] is not None:  # else it holds what it trained last epoch
                load_blocks_state(trainer, job["state"])
            torch.manual_seed(hash((cfg.seed, job["epoch"], index)) & (2**63 - 1))  # this stage's dropout stream
            trainer.parts.train()
            loss_sum, correct, seen, step = torch.zeros((), device=trainer.device), None, 0, 0
            while (item := _get(inbox, alive)) is not None:
                h, y = (t.to(trainer.device) for t in item)
                logits = []
                for i in blocks:
                    h, block_logits, loss = trainer.block_step(i, h, y)
                    trainer.schedulers[i].step()
                    logits.append(block_logits)
                if outbox is not None:
                    _put(outbox, (h.detach(), y), alive)
                hits = _hits(logits, y)
                correct = hits if correct is None else correct + hits
                loss_sum += loss.detach().float() * len(y)
                seen, step = seen + len(y), step + 1
                if last and step % NAN_CHECK_EVERY == 0 and not torch.isfinite(loss_sum):
                    diverged.set()  # the main process stops feeding batches
            if outbox is not None:
                _put(outbox, None, alive)
            results.put(
                (
                    "done",
                    index,
                    {"state": blocks_state(trainer, blocks), "correct": correct, "seen": seen, "loss_sum": loss_sum},
                )
            )
    except SystemExit:
        raise
    except BaseException:  # noqa: BLE001 - whatever it was, the main process must hear of it
        results.put(("error", index, traceback.format_exc()))
        raise SystemExit(1) from None


# ------------------------------------------------------------------------------------------------ the trainer
def stage_devices(device: torch.device, stages: int) -> list[str]:
    """One GPU per stage where several are visible (round robin), else every stage on the trainer's device."""
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    return [f"cuda:{s % count}" for s in range(stages)] if count > 1 else [str(device)] * stages


class PipelinedDGL(DGL):
    """DGL with `stages` > 1: the same trainer interface; each epoch's training runs in the stage processes."""

    def __init__(self, cfg: dict, device, steps_per_epoch: int):
        super().__init__(cfg, device, steps_per_epoch)
        self.steps_per_epoch = steps_per_epoch
        self.partition = balanced_partition(block_costs(self, cfg.batch_size), cfg.stages)
        self.stage_devices = stage_devices(self.device, cfg.stages)
        # this process's threads shared out: in a Ray trial, the CPUs granted (S x the per-stage CPUs)
        self.stage_threads = max(1, torch.get_num_threads() // cfg.stages)
        self.processes: list = []
        self.stages_current = False  # whether the stages hold this trainer's state (then it need not travel)

    def describe(self, s: int) -> str:
        first, last = self.partition[s][0] + 1, self.partition[s][-1] + 1
        return f"stage {s} (block {first})" if first == last else f"stage {s} (blocks {first}-{last})"

    def _start(self) -> None:
        context = mp.get_context("spawn")  # CUDA cannot be used in a forked child, and spawn is the same everywhere
        stages = len(self.partition)
        self.jobs = [context.Queue() for _ in range(stages)]
        self.links = [context.Queue(maxsize=QUEUE_DEPTH) for _ in range(stages)]  # links[s] feeds stage s
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

    def train_epoch(self, batches) -> dict:
        self.parts.train()
        if not self.processes:
            self._start()
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
        for result in done:
            load_blocks_state(self, result["state"])
        self.epoch, self.stages_current = self.epoch + 1, True
        correct = None if any(r["correct"] is None for r in done) else torch.cat([r["correct"] for r in done])
        seen = done[-1]["seen"]
        metrics = {"train_loss": done[-1]["loss_sum"].item() / max(seen, 1)}
        metrics.update(self._accuracies(correct if correct is None else correct.to(self.device), seen, "train_acc"))
        return metrics

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
        done, start = {}, time.monotonic()
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
