"""Decoupled Neural Interfaces (Jaderberg et al. 2016) and the label-conditioned variant: each block is updated with
a synthetic gradient predicted at its output."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.heads import SyntheticGradient
from models.trainer_base import Trainer


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
        self.synthetic = nn.ModuleList(
            SyntheticGradient(channels, self.conditioned, cfg.sg_kernel, cfg.sg_last_init) for channels, _ in shapes
        )
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
