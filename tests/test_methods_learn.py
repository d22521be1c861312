"""Each local-learning method learns what it claims to, and a broken one fails the same checks.

The task (fakedata.structured_arrays) is oriented gratings at random colour, contrast and phase: colour and mean
brightness say nothing about the class, so a network whose convolutions are not trained stays near chance
(measured: ~0.5 with every block frozen, 4 classes) while a trained one is near 1.0. Each check returns the list
of what failed; the mutants below, built by monkeypatching, must produce a non-empty list.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from fakedata import structured_arrays
from helpers import small_trainer

import models.losses
from models.heads import SyntheticGradient
from models.synthetic_gradients import DNI
from models.trainers import DGL
from tuner.trial.data import make_splits
from tuner.trial.epoch import run_epoch

CHANCE = 0.25
LEARNED = 0.8  # every block's validation accuracy must reach this (chance 0.25; frozen convolutions ~0.5)
MIN_COSINE = 0.1  # cDNI: synthetic vs true gradient at block 0, its peak over the epochs (measured 0.15-0.23)


@pytest.fixture(scope="module")
def data():
    return make_splits(structured_arrays(1000, 10, seed=1), val_size=200, train_subset=None, seed=0, device="cpu")


def make(data, **overrides):
    options = {"lr": 0.05, "epochs": 2, "val_size": 200, "augment": False, "aux_head": "pooled_mlp", "aux_pool": 1}
    return small_trainer(data, **{**options, "aux_depth": 0, **overrides})


def learning_failures(trainer, data, after_each_epoch=lambda trainer: None, stop_once_learned=False) -> list[str]:
    for _ in range(trainer.cfg.epochs):
        metrics = run_epoch(trainer, data)
        after_each_epoch(trainer)
        accs = {k: v for k, v in metrics.items() if k.endswith("val_acc")}
        failures = [f"{k} {v:.3f} < {LEARNED}" for k, v in accs.items() if not v >= LEARNED]
        if stop_once_learned and not failures:
            break
    return failures


def batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 4, (n,), generator=g)


def grads(module):
    return [p.grad if p.grad is not None else torch.zeros_like(p) for p in module.parameters()]


def mismatches(name, got, want) -> list[str]:
    return [] if all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(got, want)) else [name]


# --- DGL ---------------------------------------------------------------------------------------------------------
def dgl_gradient_failures(data) -> list[str]:
    """K=2: block 0's gradient is that of its own auxiliary loss; block 1's that of the final loss on a detached
    input, both computed by hand on copies taken before the step."""
    trainer = make(data, trainer="dgl", num_blocks=2)
    net, head = copy.deepcopy(trainer.network), copy.deepcopy(trainer.heads[0])
    x, y = batch()
    trainer.train_step(x, y)
    out0 = net.blocks[0](x)
    want0 = torch.autograd.grad(F.cross_entropy(head(out0), y), list(net.blocks[0].parameters()))
    want1 = torch.autograd.grad(
        F.cross_entropy(net.classifier(net.blocks[1](out0.detach())), y), list(net.blocks[1].parameters())
    )
    return mismatches("block 0 gradient", grads(trainer.network.blocks[0]), want0) + mismatches(
        "block 1 gradient", grads(trainer.network.blocks[1]), want1
    )


def dgl_failures(data, **overrides) -> list[str]:
    return dgl_gradient_failures(data) or learning_failures(make(data, trainer="dgl", **overrides), data)


def freeze_blocks(monkeypatch, cls):
    """Mutant: the blocks' parameters are left out of every optimizer (gradients computed, never applied)."""
    original = cls.param_groups

    def without_blocks(self):
        blocks = {id(p) for p in self.network.blocks.parameters()}
        return [[p for p in group if id(p) not in blocks] for group in original(self)]

    monkeypatch.setattr(cls, "param_groups", without_blocks)


def no_detach(monkeypatch):
    """Mutant: a "DGL" whose blocks are not detached, so every later loss reaches every earlier block."""

    def train_step(self, x, y):
        h, losses, logits_all = x, [], []
        for stage in self.stages:
            h, logits, _ = stage(h)
            losses.append(F.cross_entropy(logits, y))
            logits_all.append(logits.detach())
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        torch.stack(losses).sum().backward()
        for opt in self.optimizers:
            opt.step()
        return logits_all, losses[-1]

    monkeypatch.setattr(DGL, "train_step", train_step)


def test_dgl_learns_in_every_block(data):
    assert dgl_failures(data) == []


@pytest.mark.parametrize("mutant", ["frozen blocks", "no detach"])
def test_broken_dgl_fails(data, monkeypatch, mutant):
    freeze_blocks(monkeypatch, DGL) if mutant == "frozen blocks" else no_detach(monkeypatch)
    assert dgl_failures(data) != []


# --- predsim -------------------------------------------------------------------------------------------------------
def test_dgl_predsim_learns_in_every_block(data):
    assert dgl_failures(data, local_loss="predsim", aux_head="nokland") == []


def test_predsim_without_its_similarity_term_fails(data, monkeypatch):
    monkeypatch.setattr(models.losses, "sim_loss", lambda features, labels: 0 * features.sum())
    assert dgl_failures(data, local_loss="predsim", aux_head="nokland") != []


# --- DNI -----------------------------------------------------------------------------------------------------------
def dni_gradient_failures(data) -> list[str]:
    """K=3: block 0's gradient is J0^T . SG0 / B, SG0 the module's prediction at block 0's output."""
    trainer = make(data, trainer="dni", num_blocks=3)
    torch.nn.init.normal_(trainer.synthetic[0].rest[-1].weight, std=0.1)  # a non-zero prediction to check against
    net, sg = copy.deepcopy(trainer.network), copy.deepcopy(trainer.synthetic[0])
    x, y = batch()
    trainer.train_step(x, y)
    out0 = net.blocks[0](x)
    want = torch.autograd.grad(out0, list(net.blocks[0].parameters()), sg(out0.detach()) / len(y))
    return mismatches("block 0 gradient", grads(trainer.network.blocks[0]), want)


def gradient_cosine(trainer, data) -> float:
    """Cosine between block 0's synthetic gradient and the true one (backprop through the rest), on validation."""
    trainer.parts.train()
    x, y = next(data.val.batches(100, train=False))
    out0 = trainer.network.blocks[0](x).detach().requires_grad_(True)
    h = out0
    for block in trainer.network.blocks[1:]:
        h = block(h)
    (true,) = torch.autograd.grad(F.cross_entropy(trainer.network.classifier(h), y), out0)
    synthetic = trainer.synthetic[0](out0.detach(), y if trainer.conditioned else None)
    return F.cosine_similarity(synthetic.flatten(), true.flatten(), dim=0).item()


@pytest.fixture(scope="module")
def dni_data():
    """More images than the DGL checks use: synthetic gradients need more steps before their blocks learn."""
    return make_splits(structured_arrays(2500, 10, seed=1), val_size=500, train_subset=None, seed=0, device="cpu")


# The write-up's arrangement (AlonNT/Thesis model.py CNNwDNI: three one-conv blocks, an interface after each, its
# module with its default last bias), trained with AdamW at 3e-4 for 8 epochs of 2,000 images (500 steps). Measured
# on this task, model seeds 0-3: cDNI reaches val_acc 0.96-0.99, and the cosine between block 0's synthetic and true
# gradient peaks at 0.15-0.23 (it falls back to 0.08-0.17 as the true gradient shrinks while the network fits). With
# its modules zeroed (the blocks never move; only the classifier learns, on frozen convolutions) it stays at 0.55,
# cosine 0; with its modules frozen (never regressed), 0.34. With the write-up's SGD (lr 0.005-0.01, momentum 0.9)
# cDNI reaches 0.3-0.4 in 8 epochs: the module's default last bias hands every block a constant gradient larger than
# its target, which SGD unlearns slowly.
DNI_TRAINING = {
    "num_blocks": 3,
    "epochs": 8,
    "optimizer": "adamw",
    "lr": 3e-4,
    "weight_decay": 1e-5,
    "schedule": "constant",
}


def dni_failures(data, trainer_name: str) -> list[str]:
    failures = dni_gradient_failures(data)
    if failures:
        return failures
    trainer = make(data, trainer=trainer_name, **DNI_TRAINING)
    cosines = []
    failures = learning_failures(trainer, data, lambda trainer: cosines.append(gradient_cosine(trainer, data)))
    peak = max(cosines)
    return failures + (
        [f"synthetic/true gradient cosine peaked at {peak:.3f} < {MIN_COSINE}"] if peak < MIN_COSINE else []
    )


@pytest.mark.slow
def test_cdni_learns_and_its_synthetic_gradients_point_the_right_way(dni_data):
    assert dni_failures(dni_data, "cdni") == []


# Plain DNI does not learn this task, measured with the settings above: val_acc 0.36-0.42 (seeds 0, 1) against 0.55
# with its modules zeroed, block-0 cosine within +-0.012 at every epoch, and 0.05-0.15 at the last interface, whose
# target is the true gradient (with SGD at lr 0.01 or 0.02, K=2 or 3, 2,000 images: val_acc 0.25-0.35). Without
# the label a module can only predict E[dL/dh | h], which is J^T (p(h) - E[y | h]): on features that do not yet
# separate the classes it says "be less sure", not what to learn (the write-up, too, has DNI 8 points behind cDNI
# on CIFAR-10). DNI and cDNI are one class (the label is a flag, models/synthetic_gradients.py), so the mutants
# below, which break what both share, are caught by cDNI.
@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="without the label, DNI's synthetic gradients do not teach this task")
def test_dni_learns_and_its_synthetic_gradients_point_the_right_way(dni_data):
    assert dni_failures(dni_data, "dni") == []


def test_dni_block_gradient_is_the_synthetic_one(data):
    assert dni_gradient_failures(data) == []


@pytest.mark.slow
@pytest.mark.parametrize("mutant", ["zeroed modules", "frozen modules"])
def test_broken_cdni_fails(dni_data, monkeypatch, mutant):
    if mutant == "zeroed modules":
        original = SyntheticGradient.forward
        monkeypatch.setattr(SyntheticGradient, "forward", lambda self, h, labels=None: 0 * original(self, h, labels))
    else:
        monkeypatch.setattr(DNI, "regression_loss", lambda self, predicted, target: 0 * F.mse_loss(predicted, target))
    assert dni_failures(dni_data, "cdni") != []


# --- under bf16 autocast, as on a GPU ----------------------------------------------------------------------------
# precision auto trains a GPU run in bf16: the CPU's bf16 autocast runs the same code (the casts, the float32 losses,
# synthetic gradients meeting bf16 activations)
def bf16_failures(data, **config) -> list[str]:
    trainer = make(data, precision="bf16", **config)
    # a CPU without native bf16 convolutions runs them ~8x slower: stop at the first epoch that passes (a broken
    # method never does, so it still runs every epoch and fails)
    failures = learning_failures(trainer, data, stop_once_learned=True)
    logits, _ = trainer.train_step(*batch(n=32))
    return failures + ([] if logits[-1].dtype == torch.bfloat16 else [f"logits in {logits[-1].dtype}"])


def test_dgl_learns_under_bf16_autocast(data):
    assert bf16_failures(data, trainer="dgl") == []


def test_broken_dgl_fails_under_bf16_autocast(data, monkeypatch):
    freeze_blocks(monkeypatch, DGL)
    assert bf16_failures(data, trainer="dgl") != []


@pytest.mark.slow
def test_backprop_learns_under_bf16_autocast(data):
    assert bf16_failures(data, trainer="backprop") == []


@pytest.mark.slow
def test_cdni_learns_under_bf16_autocast(dni_data):
    assert bf16_failures(dni_data, trainer="cdni", **DNI_TRAINING) == []
