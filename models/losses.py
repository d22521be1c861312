"""Local losses for a block (Nøkland & Eidnes 2019, "Training neural networks with local error signals").

- `pred`:    cross-entropy of the block's auxiliary classifier (what DGL does).
- `sim`:     MSE between the cosine-similarity matrix of the block's features and that of the one-hot labels:
             pulls same-class examples together, pushes others apart, with no classifier in the loop.
- `predsim`: (1 - sim_weight) * pred + sim_weight * sim (the paper uses 0.01 / 0.99).
Here `sim` uses the block output itself; the paper adds a learned 3x3 conv before the similarity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.networks import NUM_CLASSES


def similarity_matrix(x: torch.Tensor) -> torch.Tensor:
    """Cosine similarity between the (per-example mean-centred) rows of x flattened: (B, ...) -> (B, B)."""
    x = x.flatten(1).float()
    x = x - x.mean(dim=1, keepdim=True)
    x = x / (x.norm(dim=1, keepdim=True) + 1e-8)
    return (x @ x.t()).clamp(-1, 1)


def sim_loss(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
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
    raise ValueError(f"unknown local_loss '{kind}'; allowed: pred, sim, predsim")
