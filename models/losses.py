"""Local losses for a block (Nøkland & Eidnes 2019, "Training neural networks with local error signals"), as
anokland/local-loss train.py computes them (`similarity_matrix`, `LocalLossBlockConv.forward`).

- `pred`:    cross-entropy of the block's auxiliary classifier (what DGL does).
- `sim`:     MSE between the similarity matrix of a learned 3x3 conv of the block's output (`conv_loss` there,
             `heads.similarity_conv` here) and that of the one-hot labels.
- `predsim`: (1 - sim_weight) * pred + sim_weight * sim; his default weighting is 0.01 / 0.99.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.catalog import LOCAL_LOSSES, NUM_CLASSES


def similarity_matrix(x: torch.Tensor) -> torch.Tensor:
    """Nøkland's adjusted cosine similarity, (B, ...) -> (B, B).

    A conv map (B, C, H, W) with C > 3 and H > 1 is first reduced to each channel's standard deviation over its
    spatial positions (so the similarity does not depend on where a pattern sits); other inputs are flattened.
    Each row is then centred and scaled to unit norm, and the matrix of dot products is clamped to [-1, 1]."""
    x = x.float()
    if x.dim() == 4 and x.size(1) > 3 and x.size(2) > 1:
        x = x.flatten(2).std(dim=2)
    x = x.flatten(1)
    centred = x - x.mean(dim=1, keepdim=True)
    unit = centred / (1e-8 + centred.pow(2).sum(dim=1).sqrt()).unsqueeze(1)
    return (unit @ unit.t()).clamp(-1, 1)


def sim_loss(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`features`: what the similarity is taken of (the learned conv's output, for a conv block)."""
    target = similarity_matrix(F.one_hot(labels, NUM_CLASSES))
    return F.mse_loss(similarity_matrix(features), target)


def local_loss(kind: str, features, logits, labels, *, sim_weight: float, label_smoothing: float):
    """The loss a block is trained on (its aux head is trained alongside, on the same graph, for pred/predsim)."""
    if kind == "pred":
        return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    if kind == "sim":
        return sim_loss(features, labels)
    if kind == "predsim":
        pred = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
        return (1 - sim_weight) * pred + sim_weight * sim_loss(features, labels)
    raise ValueError(f"unknown local_loss '{kind}'; allowed: {', '.join(LOCAL_LOSSES)}")
