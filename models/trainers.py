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

The shared loop is models/trainer_base.py; DNI and cDNI are models/synthetic_gradients.py; layer-parallel DGL is
models/pipeline.py; models/registry.py builds the trainer a config names.
"""

from __future__ import annotations

import torch.nn as nn

from models import TrialConfig
from models.heads import aux_head, similarity_conv
from models.losses import local_loss
from models.trainer_base import Trainer


class Backprop(Trainer):
    def num_blocks(self, cfg: TrialConfig):
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

    def __init__(self, cfg: TrialConfig, device, steps_per_epoch: int):
        super().__init__(cfg, device, steps_per_epoch)
        self.stages = [
            self.compiled(BlockWithHead(block, head, sim_conv))
            for block, head, sim_conv in zip(self.network.blocks, self.heads, self.sim_convs)
        ]

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
        return [
            list(block.parameters()) + list(head.parameters()) + (list(conv.parameters()) if conv else [])
            for block, head, conv in zip(self.network.blocks, self.heads, self.sim_convs)
        ]

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
        loss = local_loss(
            kind,
            sim_features,
            logits.float(),
            y,
            sim_weight=self.cfg.sim_weight,
            label_smoothing=self.cfg.label_smoothing,
        )
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
