"""The networks, heads and losses: shapes, and the properties that make each method what it is."""

import copy

import pytest
import torch
import torch.nn.functional as F

from models.heads import SyntheticGradient, aux_head
from models.losses import sim_loss, similarity_matrix
from models.networks import CFGS, build_network, num_units
from models.trainers import DGL, DNI, build_trainer
from tuner.errors import ConfigError
from tuner.schema import resolve


@pytest.mark.parametrize("name", list(CFGS))
@pytest.mark.parametrize("width", [1.0, 0.25])
def test_network_shapes(name, width):
    net = build_network(name, width)
    assert len(net.blocks) == num_units(name)  # default split: one block per conv unit
    h = torch.randn(2, 3, 32, 32)
    for block, (channels, size) in zip(net.blocks, net.block_shapes):
        h = block(h)
        assert h.shape == (2, channels, size, size)
    assert net.classifier(h).shape == (2, 10)
    expected_last = round({"basiccnn": 128}.get(name, 512) * width)
    assert net.block_shapes[-1] == (expected_last, 4 if name == "basiccnn" else 1)


def test_basiccnn_is_the_writeups():
    net = build_network("basiccnn")
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.padding) for c in convs] == [(128, (5, 5), (2, 2))] * 3
    linears = [m for m in net.classifier if isinstance(m, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(128 * 16, 256), (256, 10)]


def test_vgg16_layers_and_grouping():
    net = build_network("vgg16", num_blocks=4)
    assert len(net.blocks) == 4
    convs = [m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [c for c in CFGS["vgg16"] if c != "M"]
    assert [sum(isinstance(m, torch.nn.Conv2d) for m in b) for b in net.blocks] == [4, 3, 3, 3]
    with pytest.raises(ConfigError, match="num_blocks"):
        resolve({"model": "basiccnn", "num_blocks": 4})


@pytest.mark.parametrize("family", ["mlp", "mlp_sr", "conv"])
@pytest.mark.parametrize("depth", [0, 2])
def test_aux_head_shapes(family, depth):
    for channels, size in [(16, 32), (64, 8), (128, 1)]:
        head = aux_head(family, channels, size, width=32, depth=depth, pool=2)
        assert head(torch.randn(3, channels, size, size)).shape == (3, 10)


def test_synthetic_gradient_shape_zero_start_and_label_context():
    sg = SyntheticGradient(8, conditioned=True)
    h = torch.randn(4, 8, 6, 6)
    labels = torch.tensor([0, 1, 2, 3])
    assert torch.count_nonzero(sg(h, labels)) == 0  # zero-initialised last conv: no signal before it learns
    torch.nn.init.normal_(sg.rest[-1].weight)
    sg.eval()
    same_input = h[:1].expand(4, -1, -1, -1)
    out = sg(same_input, labels)
    assert out.shape == same_input.shape
    assert not torch.allclose(out[0], out[1])  # same features, different labels -> different gradient
    plain = SyntheticGradient(8).eval()
    torch.nn.init.normal_(plain.rest[-1].weight)
    assert torch.allclose(plain(same_input)[0], plain(same_input)[1])


def test_sim_loss_matches_hand_computation():
    features = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    labels = torch.tensor([0, 0, 1])
    # centre each row, normalise, take dot products
    centred = features - features.mean(1, keepdim=True)                   # rows (1/3, -2/3, 1/3), (-2/3, 1/3, 1/3), (1/3, 1/3, -2/3)
    expected_features = torch.tensor([[1.0, -0.5, -0.5], [-0.5, 1.0, -0.5], [-0.5, -0.5, 1.0]])
    assert torch.allclose(similarity_matrix(features), expected_features, atol=1e-6)
    # one-hot over 10 classes, centred: same class -> 1, different -> -1/9
    expected_labels = torch.tensor([[1.0, 1.0, -1 / 9], [1.0, 1.0, -1 / 9], [-1 / 9, -1 / 9, 1.0]])
    expected = ((expected_features - expected_labels) ** 2).mean()
    assert centred.shape == (3, 3)
    assert torch.isclose(sim_loss(features, labels), expected, atol=1e-6)


def tiny(trainer, **overrides):
    cfg = resolve({"trainer": trainer, "model": "vgg11", "width": 0.125, "aux_width": 32, "epochs": 2,
                   "batch_size": 16, **overrides})
    return build_trainer(cfg, "cpu", steps_per_epoch=4)


def test_dgl_blocks_learn_only_from_their_own_loss():
    trainer = tiny("dgl", num_blocks=4)
    owner = {id(p): i for i, block in enumerate(trainer.network.blocks) for p in block.parameters()}
    stage, seen = {"now": None}, []
    for i, opt in enumerate(trainer.optimizers):  # the stage whose loss is being backpropagated
        original = opt.zero_grad
        opt.zero_grad = lambda *a, i=i, original=original, **k: (stage.update(now=i), original(*a, **k))
    for block in trainer.network.blocks:
        for p in block.parameters():
            p.register_hook(lambda grad, p=p: seen.append((owner[id(p)], stage["now"])))
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    trainer.train_step(x, y)
    assert {block for block, _ in seen} == {0, 1, 2, 3}
    assert all(block == loss_stage for block, loss_stage in seen)


class RecordingDNI(DNI):
    def regression_loss(self, predicted, target):
        self.targets.append(target.detach().clone())
        return super().regression_loss(predicted, target)


def test_dni_regression_target_is_the_true_gradient():
    cfg = resolve({"trainer": "dni", "model": "basiccnn", "width": 0.125, "num_blocks": 2, "batch_size": 8})
    trainer = RecordingDNI(cfg, "cpu", steps_per_epoch=1)
    trainer.targets = []
    before = copy.deepcopy(trainer.network).train()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    trainer.train_step(x, y)
    # with two blocks the second learns from the true loss, so the first module's target is the true gradient
    out = before.blocks[0](x)
    loss = F.cross_entropy(before.classifier(before.blocks[1](out)), y)
    (true_grad,) = torch.autograd.grad(loss, out)
    assert len(trainer.targets) == 1
    assert torch.allclose(trainer.targets[0], true_grad * len(y), atol=1e-5)
    assert true_grad.abs().sum() > 0


def test_dni_first_synthetic_gradients_are_zero_then_learn():
    trainer = tiny("dni", num_blocks=3)
    block0 = [p.clone() for p in trainer.network.blocks[0].parameters()]
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    trainer.train_step(x, y)
    # a zero synthetic gradient moves the first block only through weight decay; the module next to the last block
    # regresses toward a true gradient and learns at once (the others bootstrap from it, zero at first)
    assert trainer.synthetic[-1].rest[-1].weight.abs().sum() > 0
    assert trainer.synthetic[0].rest[-1].weight.abs().sum() == 0
    assert all(torch.allclose(a, b, atol=1e-3) for a, b in zip(block0, trainer.network.blocks[0].parameters()))


def test_dgl_with_one_block_is_backprop():
    torch.manual_seed(0)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    losses = {}
    for name in ("backprop", "dgl", "dni"):
        trainer = tiny(name, num_blocks=1, dropout=0.1)
        losses[name] = [trainer.train_epoch(batches)["train_loss"] for _ in range(2)]
    assert losses["dgl"] == losses["backprop"]
    assert losses["dni"] == losses["backprop"]


def test_dgl_head_families_report_per_block_accuracy():
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    for family in ("mlp", "mlp_sr", "conv"):
        trainer = tiny("dgl", aux_head=family, num_blocks=3)
        assert isinstance(trainer, DGL)
        metrics = trainer.evaluate([(x, y)])
        assert set(metrics) == {"loss", "acc", "block1_acc", "block2_acc", "block3_acc"}
        assert metrics["acc"] == metrics["block3_acc"]
