"""What every trainer shares: the epoch loop, accuracy counts, evaluation and exact checkpoints (models/trainers.py
has the methods). `batches` yields (x float, y int64) already on the trainer's device. Nothing in an epoch waits on
the host: metrics accumulate as device tensors and are read once at the end."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import TrialConfig
from models.networks import build_network
from models.optim import make_lr_schedule, make_optimizer

NAN_CHECK_EVERY = 50  # steps; one host sync this often lets a diverged run stop early without a sync per step


def _hits(logits: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    """Correct predictions of each head, in 4 ops whatever the number of heads (bench/README.md)."""
    return torch.stack(logits).argmax(2).eq(y).sum(1)


# What a trainer sets for the whole process: torch keeps these nowhere narrower. Named, so a reader sees them.


def seed_process(seed: int, device: torch.device) -> None:
    """Seed torch's global RNG, which parameter init and dropout draw from and a checkpoint saves and restores. A
    per-trainer torch.Generator cannot replace it: torch.nn layers initialise from the global RNG (their
    constructors take no generator), and dropout draws from it too.

    On a CPU also flush denormal floats to zero, a per-process switch: DNI's synthetic gradients sink into denormals,
    which x86 computes far more slowly (bench/README.md); float32 training loses nothing it could use. GPUs handle
    them at full speed. On a GPU, let cuDNN time its convolution algorithms once per shape and keep the fastest: a
    trainer's shapes are fixed per block, so it pays once (its picks may differ between runs in the last bits)."""
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(seed)


def allow_recompiles(num_blocks: int) -> None:
    """Raise dynamo's process-wide recompile limit to 4 entries per block. To dynamo every block is the same
    nn.Sequential code with its own shapes (one cache entry per block and mode); under the default limit a deep
    network's later blocks silently ran uncompiled (bench/README.md). Only ever raised, never lowered."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # torch < 2.6
    setattr(config, name, max(getattr(config, name), 4 * num_blocks))


class Trainer:
    per_block_metrics = False

    def __init__(self, cfg: TrialConfig, device: torch.device | str, steps_per_epoch: int):
        self.cfg, self.device = cfg, torch.device(device)
        self.on_cuda = self.device.type == "cuda"
        self.bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and self.on_cuda)
        seed_process(cfg.seed, self.device)
        self.network = build_network(cfg.model, cfg.width, self.num_blocks(cfg), cfg.dropout)
        self.parts = nn.ModuleDict({"network": self.network})  # everything with parameters, for state_dict
        param_groups = self.param_groups()  # one list of parameters per optimizer
        memory_format = torch.channels_last if self.on_cuda else torch.contiguous_format
        # Module.to takes memory_format (its docs); torch's overloads of `to` leave it out
        self.parts.to(self.device, memory_format=memory_format)  # type: ignore[call-overload]
        self.optimizers = [make_optimizer(params, cfg) for params in param_groups]
        self.schedulers = [make_lr_schedule(opt, cfg, steps_per_epoch) for opt in self.optimizers]
        if cfg.compile:
            allow_recompiles(len(self.network.blocks))
        self.blocks = [self.compiled(block) for block in self.network.blocks]  # compiled views; state stays in parts
        self.epoch = 0

    def compiled(self, module: nn.Module) -> Callable[..., Any]:
        """torch.compile'd when the config says so (a view sharing the module's parameters), else the module."""
        return torch.compile(module) if self.cfg.compile else module

    # --- what a method defines -----------------------------------------------------------------------------------
    def num_blocks(self, cfg: TrialConfig) -> int | None:
        return cfg.num_blocks

    def param_groups(self) -> list[list[nn.Parameter]]:
        """One list of parameters per optimizer (building whatever the method adds beside the network)."""
        raise NotImplementedError

    def train_step(self, x, y) -> tuple[list[torch.Tensor], torch.Tensor]:
        """One batch: update the parameters; return the logits of each reported head and the final loss."""
        raise NotImplementedError

    def eval_logits(self, x) -> list[torch.Tensor]:
        """Logits of each reported head, the network's own classifier last."""
        h = x
        for block in self.blocks:
            h = block(h)
        return [self.network.classifier(h)]

    # --- shared machinery ---------------------------------------------------------------------------------------
    def amp(self):
        """bf16 autocast where the config's precision says so (auto: on a GPU, whose tensor cores run bf16)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    def ce(self, logits, y):
        return F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.label_smoothing)

    def _input(self, x):
        return x.contiguous(memory_format=torch.channels_last) if self.on_cuda else x

    def current_lr(self) -> float:
        return self.optimizers[0].param_groups[0]["lr"]

    def train_epoch(self, batches) -> dict:
        self.parts.train()
        loss_sum = torch.zeros((), device=self.device)
        correct, seen = None, 0
        for step, (x, y) in enumerate(batches, start=1):
            logits, loss = self.train_step(self._input(x), y)
            for scheduler in self.schedulers:
                scheduler.step()
            hits = _hits(logits, y)
            correct = hits if correct is None else correct + hits
            loss_sum += loss.detach().float() * len(y)
            seen += len(y)
            if step % NAN_CHECK_EVERY == 0 and not torch.isfinite(loss_sum):
                break
        self.epoch += 1
        metrics = {"train_loss": loss_sum.item() / max(seen, 1)}
        metrics.update(self._accuracies(correct, seen, "train_acc"))
        return metrics

    @torch.no_grad()
    def evaluate(self, batches) -> dict:
        self.parts.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct, seen = None, 0
        for x, y in batches:
            with self.amp():
                logits = self.eval_logits(self._input(x))
            hits = _hits(logits, y)
            correct = hits if correct is None else correct + hits
            loss_sum += F.cross_entropy(logits[-1].float(), y, reduction="sum")
            seen += len(y)
        metrics = {"loss": loss_sum.item() / max(seen, 1)}
        metrics.update(self._accuracies(correct, seen, "acc"))
        return metrics

    def _accuracies(self, correct, seen, name) -> dict:
        if correct is None:
            return {name: 0.0}
        # from the integer counts, in Python floats: a float32 fraction shows as 0.33500000834 in MLflow
        accs = [hits / max(seen, 1) for hits in correct.tolist()]
        metrics = {name: accs[-1]}
        if self.per_block_metrics:
            metrics.update({f"block{i + 1}_{name}": acc for i, acc in enumerate(accs)})
        return metrics

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "parts": self.parts.state_dict(),
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "schedulers": [sched.state_dict() for sched in self.schedulers],
            "rng": torch.get_rng_state(),  # dropout masks; the data order is a function of (seed, epoch)
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.on_cuda else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]
        self.parts.load_state_dict(state["parts"])
        for opt, opt_state in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(opt_state)
        for sched, sched_state in zip(self.schedulers, state["schedulers"]):
            sched.load_state_dict(sched_state)
        torch.set_rng_state(state["rng"].cpu())
        if self.on_cuda and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), self.device)
