"""What runs in one stage process of layer-parallel DGL (models/pipeline.py), and what sets the stages up: the
balanced partition of blocks, their measured cost, and the state each stage owns."""

from __future__ import annotations

import copy
import queue
import time
import traceback

import torch
import torch.multiprocessing as mp

from models import TrialConfig
from models.catalog import IMAGE_CHANNELS, IMAGE_SIZE, NUM_CLASSES
from models.optim import make_optimizer
from models.trainer_base import NAN_CHECK_EVERY, _hits
from models.trainers import DGL, BlockWithHead

POLL_S = 0.5  # how often a blocked queue operation checks that the other side is alive
UNSTEADY_STEPS = 2  # an epoch's first steps, left out of a stage's timing (a new process allocates and warms up)


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


def block_costs(trainer: DGL, batch_size: int, repeats: int = 5) -> list[float]:
    """Seconds of one training step of each block with its head (forward, backward, optimizer step: a wide head's
    step is a good part of its block's cost), on copies, so the trainer's parameters, BatchNorm statistics and the
    global RNG stay untouched: the least of `repeats` timings after one untimed step (first-touch allocations)."""
    generator = torch.Generator().manual_seed(0)
    h = torch.randn(batch_size, IMAGE_CHANNELS, IMAGE_SIZE, IMAGE_SIZE, generator=generator).to(trainer.device)
    y = torch.randint(0, NUM_CLASSES, (batch_size,), generator=generator).to(trainer.device)
    costs = []
    for block, head, sim_conv in zip(trainer.network.blocks, trainer.heads, trainer.sim_convs):
        module = BlockWithHead(copy.deepcopy(block), copy.deepcopy(head), copy.deepcopy(sim_conv)).train()
        optimizer = make_optimizer(module.parameters(), trainer.cfg)
        timings = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            with trainer.amp():
                out, logits, _ = module(h)
            optimizer.zero_grad(set_to_none=True)
            trainer.ce(logits, y).backward()
            optimizer.step()
            if trainer.on_cuda:
                torch.cuda.synchronize(trainer.device)
            timings.append(time.perf_counter() - start)
        costs.append(min(timings[1:]))
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
        # copied: Optimizer.load_state_dict keeps a tensor already on the right device, and one received from
        # another process would alias that process's memory (CUDA IPC), gone when it exits
        trainer.optimizers[i].load_state_dict(copy.deepcopy(opt_state))
    for i, sched_state in state["schedulers"].items():
        trainer.schedulers[i].load_state_dict(sched_state)


class Link:
    """A bounded channel of (activations, labels) batches between two processes on one machine's CPU: `depth`
    slots of shared memory made once, so a batch costs a copy in and a copy out. A tensor put on a
    torch.multiprocessing queue instead moves to a new shared-memory segment every time, which measured 4-10 ms
    of the sender's CPU per 2-4 MB batch, in a stage step of ~150 ms. `put`/`get` time out like a queue's
    (queue.Full / queue.Empty); None is the end-of-epoch marker."""

    def __init__(self, context, shape: tuple[int, ...], depth: int):
        self.x = torch.empty((depth, *shape)).share_memory_()
        self.y = torch.empty((depth, shape[0]), dtype=torch.long).share_memory_()
        self.free, self.full = context.Queue(), context.Queue()  # slot numbers: writable / holding a batch
        for slot in range(depth):
            self.free.put(slot)

    def put(self, item, timeout: float) -> None:
        if item is None:
            return self.full.put(None)
        x, y = item
        try:
            slot = self.free.get(timeout=timeout)
        except queue.Empty:
            raise queue.Full from None
        self.x[slot, : len(y)].copy_(x)
        self.y[slot, : len(y)].copy_(y)
        self.full.put((slot, len(y)))

    def get(self, timeout: float):
        message = self.full.get(timeout=timeout)
        if message is None:
            return None
        slot, n = message
        item = self.x[slot, :n].clone(), self.y[slot, :n].clone()  # the slot is the sender's again at once
        self.free.put(slot)
        return item

    def cancel_join_thread(self) -> None:
        self.free.cancel_join_thread()
        self.full.cancel_join_thread()

    def close(self) -> None:
        self.free.close()
        self.full.close()


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


def _timed(operation, waited: dict, key: str, *args):
    start = time.perf_counter()
    try:
        return operation(*args)
    finally:
        waited[key] += time.perf_counter() - start


def run_stage(
    index: int,
    blocks: list[int],
    cfg: TrialConfig,
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
            waited = {"input_s": 0.0, "output_s": 0.0}  # starved of input / held up by the next stage
            steady = {"busy_s": 0.0, "steps": 0}  # working, past each epoch's first steps (allocations, caches)
            while (item := _timed(_get, waited, "input_s", inbox, alive)) is not None:
                step_started, output_waited = time.perf_counter(), waited["output_s"]
                h, y = (t.to(trainer.device) for t in item)
                logits = []
                for i in blocks:
                    h, block_logits, loss = trainer.block_step(i, h, y)
                    trainer.schedulers[i].step()
                    logits.append(block_logits)
                if outbox is not None:  # its own labels: torch will not send on a CUDA tensor it received
                    _timed(_put, waited, "output_s", outbox, (h.detach(), y.clone()), alive)
                hits = _hits(logits, y)
                correct = hits if correct is None else correct + hits
                loss_sum += loss.detach().float() * len(y)
                seen, step = seen + len(y), step + 1
                if last and step % NAN_CHECK_EVERY == 0 and not torch.isfinite(loss_sum):
                    diverged.set()  # the main process stops feeding batches
                if step > UNSTEADY_STEPS:
                    steady["busy_s"] += time.perf_counter() - step_started - (waited["output_s"] - output_waited)
                    steady["steps"] += 1
            if outbox is not None:
                _put(outbox, None, alive)
            results.put(
                (
                    "done",
                    index,
                    {
                        "state": blocks_state(trainer, blocks),
                        "correct": correct,
                        "seen": seen,
                        "loss_sum": loss_sum,
                        "waited": waited,
                        "steps": step,
                        "step_s": steady["busy_s"] / steady["steps"] if steady["steps"] else None,
                    },
                )
            )
    except SystemExit:
        raise
    except BaseException:  # whatever it was, the main process must hear of it
        results.put(("error", index, traceback.format_exc()))
        raise SystemExit(1) from None
