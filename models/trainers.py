"""The four ways to train a network, behind one small interface.

    trainer = build_trainer(config, device, steps_per_epoch)
    trainer.train_epoch(batches)  -> {"train_loss", "train_acc", "block{i}_train_acc"...}
    trainer.evaluate(batches)     -> {"loss", "acc", "block{i}_acc"...}
    trainer.state_dict() / trainer.load_state_dict(state)

- backprop: the whole network, one optimizer, end-to-end gradients.
- dgl:      Decoupled Greedy Learning (Belilovsky et al. 2019). Block i sees block i-1's output *detached* and
            learns from its own auxiliary classifier; the last block learns from the network's classifier.
            One optimizer per block. With one block it is backprop, step for step.
- dni/cdni: Decoupled Neural Interfaces (Jaderberg et al. 2016). Block i is updated with a *synthetic* gradient
            predicted at its output; the predictor learns by regression toward the gradient that actually comes
            back from block i+1 (itself synthetic further up: bootstrapped). cDNI also feeds the label to it.

`batches` yields (x float, y int64) already on the trainer's device. Nothing in an epoch waits on the host:
metrics accumulate as device tensors and are read once at the end.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.heads import SyntheticGradient, aux_head, similarity_conv
from models.losses import local_loss
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
    them at full speed."""
    if device.type == "cpu":
        torch.set_flush_denormal(True)
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

    def __init__(self, cfg: dict, device: torch.device | str, steps_per_epoch: int):
        self.cfg, self.device = cfg, torch.device(device)
        self.on_cuda = self.device.type == "cuda"
        seed_process(cfg.seed, self.device)
        self.network = build_network(cfg.model, cfg.width, self.num_blocks(cfg), cfg.dropout)
        self.parts = nn.ModuleDict({"network": self.network})  # everything with parameters, for state_dict
        param_groups = self.param_groups()                       # one list of parameters per optimizer
        memory_format = torch.channels_last if self.on_cuda else torch.contiguous_format
        self.parts.to(self.device, memory_format=memory_format)
        self.optimizers = [make_optimizer(params, cfg) for params in param_groups]
        self.schedulers = [make_lr_schedule(opt, cfg, steps_per_epoch) for opt in self.optimizers]
        if cfg.compile:
            allow_recompiles(len(self.network.blocks))
        self.blocks = [self.compiled(block) for block in self.network.blocks]  # compiled views; state stays in parts
        self.epoch = 0

    def compiled(self, module: nn.Module) -> nn.Module:
        """torch.compile'd when the config says so (a view sharing the module's parameters), else the module."""
        return torch.compile(module) if self.cfg.compile else module

    # --- what a method defines -----------------------------------------------------------------------------------
    def num_blocks(self, cfg) -> int | None:
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
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.on_cuda else contextlib.nullcontext()

    def ce(self, logits, y):
        return F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.label_smoothing)

    def _input(self, x):
        return x.contiguous(memory_format=torch.channels_last) if self.on_cuda else x

    def current_lr(self) -> float:
        return self.optimizers[0].param_groups[0]["lr"]

    def train_epoch(self, batches) -> dict:
        self.parts.train()
        loss_sum = torch.zeros((), device=self.device)
        correct, seen, step = None, 0, 0
        for x, y in batches:
            logits, loss = self.train_step(self._input(x), y)
            for scheduler in self.schedulers:
                scheduler.step()
            hits = _hits(logits, y)
            correct = hits if correct is None else correct + hits
            loss_sum += loss.detach().float() * len(y)
            seen += len(y)
            step += 1
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


class Backprop(Trainer):
    def num_blocks(self, cfg):
        return 1  # the grouping is irrelevant to end-to-end training; one block keeps it identical to DGL with K=1

    def param_groups(self):
        return [list(self.network.parameters())]

    def train_step(self, x, y):
        with self.amp():
            logits = self.network.classifier(self.blocks[0](x))
        loss = self.ce(logits, y)
        self.optimizers[0].zero_grad(set_to_none=True)
        loss.backward()
        self.optimizers[0].step()
        return [logits.detach()], loss


class BlockWithHead(nn.Module):
    """A DGL stage: a block, its auxiliary head and (for the similarity losses) Nøkland's learned 3x3 conv, one graph
    for torch.compile. Compiled apart, a narrow block left its head, loss and layout changes to eager mode and ran
    slower than not compiling at all (bench/README.md)."""

    def __init__(self, block: nn.Module, head: nn.Module, sim_conv: nn.Module | None = None):
        super().__init__()
        self.block, self.head, self.sim_conv = block, head, sim_conv

    def forward(self, x, probe: bool = False):
        out = self.block(x)
        # a probe (the pure similarity loss) learns on detached features: its loss trains the head only
        logits = self.head(out.detach() if probe else out)
        sim_features = self.sim_conv(out) if self.sim_conv is not None and self.training else None
        return out, logits, sim_features


class DGL(Trainer):
    """Belilovsky et al. 2019, as eugenium/DGL auxiliary_nets_study/cifar_dgl.py trains it: one optimizer per block
    and its head, each block fed the previous block's output detached."""

    per_block_metrics = True

    def __init__(self, cfg: dict, device, steps_per_epoch: int):
        super().__init__(cfg, device, steps_per_epoch)
        self.stages = [self.compiled(BlockWithHead(block, head, sim_conv))
                       for block, head, sim_conv in zip(self.network.blocks, self.heads, self.sim_convs)]

    def param_groups(self):
        cfg = self.cfg
        shapes = self.network.block_shapes[:-1]
        self.heads = nn.ModuleList(aux_head(cfg, channels, size) for channels, size in shapes)
        self.heads.append(self.network.classifier)  # the last block's "aux" is the network's own classifier
        self.parts["heads"] = self.heads
        uses_sim = cfg.local_loss in ("sim", "predsim")
        convs = [similarity_conv(channels) for channels, _ in shapes] if uses_sim else []
        self.parts["sim_convs"] = nn.ModuleList(convs)
        self.sim_convs = convs + [None] * (len(self.network.blocks) - len(convs))
        return [list(block.parameters()) + list(head.parameters()) + (list(conv.parameters()) if conv else [])
                for block, head, conv in zip(self.network.blocks, self.heads, self.sim_convs)]

    def train_step(self, x, y):
        h, all_logits = x, []
        for i in range(len(self.stages)):
            h, logits, loss = self.block_step(i, h, y)
            all_logits.append(logits)
        return all_logits, loss

    def block_step(self, i, h, y):
        """Update block i and its head on input h; return its output (computed before the update: the next block's
        input), its head's logits (detached) and its loss. The one step of sequential and pipelined DGL."""
        kind = "pred" if i == len(self.stages) - 1 else self.cfg.local_loss
        with self.amp():
            # detached: no gradient flows back into earlier blocks; with the pure similarity loss the head is
            # only a probe
            out, logits, sim_features = self.stages[i](h.detach(), probe=kind == "sim")
        loss = local_loss(kind, sim_features, logits.float(), y, sim_weight=self.cfg.sim_weight,
                          label_smoothing=self.cfg.label_smoothing)
        if kind == "sim":
            loss = loss + self.ce(logits, y)
        self.optimizers[i].zero_grad(set_to_none=True)
        loss.backward()
        self.optimizers[i].step()
        return out, logits.detach(), loss

    def eval_logits(self, x):
        h, all_logits = x, []
        for stage in self.stages:
            h, logits, _ = stage(h)
            all_logits.append(logits)
        return all_logits


class DNI(Trainer):
    """Jaderberg et al. 2016, with the write-up's module (AlonNT/Thesis model.py `ConvSynthesizer`, `CNNwDNI`).

    `sg_after_last_block`: the write-up places an interface after every block, the last one too, so the classifier
    trains on the true loss alone and the last block on a synthetic gradient. Without it the last block trains end
    to end with the classifier and the interfaces sit between blocks only."""

    conditioned = False

    def regression_loss(self, predicted, target):
        """How a synthetic-gradient module learns: MSE toward the gradient that came back."""
        return F.mse_loss(predicted, target)

    def param_groups(self):
        cfg, blocks = self.cfg, self.network.blocks
        shapes = self.network.block_shapes if cfg.sg_after_last_block else self.network.block_shapes[:-1]
        self.synthetic = nn.ModuleList(SyntheticGradient(channels, self.conditioned, cfg.sg_kernel)
                                       for channels, _ in shapes)
        self.parts["synthetic"] = self.synthetic
        # compiled apart from the blocks: a block's output gradient and its module's regression loss are two backward
        # passes at different times, and one compiled graph for both could only run its backward once
        self.predictors = [self.compiled(sg) for sg in self.synthetic]
        groups = [list(block.parameters()) + list(sg.parameters()) for block, sg in zip(blocks, self.synthetic)]
        tail = [] if cfg.sg_after_last_block else list(blocks[-1].parameters())
        groups.append(tail + list(self.network.classifier.parameters()))
        return groups

    def train_step(self, x, y):
        # Synthetic gradients are in units of the per-example loss (the mean-loss gradient times the batch size),
        # so the regression targets do not shrink with the batch size.
        batch, interfaces = len(y), len(self.synthetic)
        h, predicted, sg_losses = x, None, []
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        for i in range(len(self.blocks) + 1):
            h_in = h.detach().requires_grad_(i > 0)
            with self.amp():
                if i < interfaces:
                    out = self.blocks[i](h_in)
                    synthetic = self.predictors[i](out.detach(), y if self.conditioned else None)
                else:  # the rest trains on the true loss: the last block with the classifier, or the classifier
                    logits = self.network.classifier(self.blocks[i](h_in) if i < len(self.blocks) else h_in)
            if i < interfaces:
                out.backward(synthetic.detach().to(out.dtype) / batch)
            else:
                loss = self.ce(logits, y)
                loss.backward()
            if predicted is not None:  # what came back into this input is the target of the module before it
                sg_losses.append(self.regression_loss(predicted.float(), h_in.grad.float() * batch))
            if i >= interfaces:
                break
            predicted, h = synthetic, out
        if sg_losses:
            torch.stack(sg_losses).sum().backward()
        for opt in self.optimizers:
            opt.step()
        return [logits.detach()], loss


class CDNI(DNI):
    conditioned = True


TRAINERS = {"backprop": Backprop, "dgl": DGL, "dni": DNI, "cdni": CDNI}


def build_trainer(cfg: dict, device, steps_per_epoch: int) -> Trainer:
    if cfg.trainer == "dgl" and cfg.stages > 1:
        from models.pipeline import PipelinedDGL  # imports this module

        return PipelinedDGL(cfg, device, steps_per_epoch)
    return TRAINERS[cfg.trainer](cfg, device, steps_per_epoch)
