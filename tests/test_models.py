"""The networks, heads and losses: shapes, and the properties that make each method what it is."""

import copy

import pytest
import torch
import torch.nn.functional as F

from models.catalog import CFGS, HEAD_FAMILIES, HEAD_READS, TRAINER_READS, num_units
from models.heads import SyntheticGradient, aux_head
from models.losses import sim_loss, similarity_matrix
from models.networks import build_network
from models.registry import TRAINERS, build_trainer
from models.synthetic_gradients import DNI
from models.trainers import DGL
from tuner.config.schema import resolve
from tuner.errors import ConfigError


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
    assert [(layer.in_features, layer.out_features) for layer in linears] == [(128 * 16, 256), (256, 10)]


def test_vgg16_layers_and_grouping():
    net = build_network("vgg16", num_blocks=4)
    assert len(net.blocks) == 4
    convs = [m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [c for c in CFGS["vgg16"] if c != "M"]
    assert [sum(isinstance(m, torch.nn.Conv2d) for m in b) for b in net.blocks] == [4, 3, 3, 3]
    with pytest.raises(ConfigError, match="num_blocks"):
        resolve({"model": "basiccnn", "num_blocks": 4})


HEAD_KEYS = ("aux_width", "aux_depth", "aux_convs", "aux_pool")


def head(family, channels, size, **overrides):
    return aux_head(resolve({"aux_head": family, **overrides}), channels, size)


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("family", HEAD_FAMILIES)
def test_aux_head_shapes(family):
    for channels, size in [(16, 32), (64, 8), (128, 1)]:
        assert head(family, channels, size)(torch.randn(3, channels, size, size)).shape == (3, 10)


@pytest.mark.parametrize("family", HEAD_FAMILIES)
def test_a_head_reads_the_keys_the_catalog_names(family):
    # the catalog says which aux_* keys a family reads (MLflow logs only those): a key it reads changes the head
    shapes = {key: [p.shape for p in head(family, 16, 8, **{key: 4}).parameters()] for key in HEAD_KEYS}
    default = [p.shape for p in head(family, 16, 8).parameters()]
    assert {key for key, shape in shapes.items() if shape != default} == set(HEAD_READS[family])


def test_the_registry_builds_every_trainer_the_catalog_names():
    assert tuple(TRAINERS) == tuple(TRAINER_READS)


def test_flatten_mlp_is_the_writeups_head():
    # AlonNT/Thesis vgg.py get_blocks: get_mlp(input_dim=C*H*W, n_hidden_layers=1, hidden_dim=512); VGG16's first
    # block: 64 x 32 x 32 = 65,536 inputs
    net = build_network("vgg16")
    channels, size = net.block_shapes[0]
    h = head("flatten_mlp", channels, size)
    assert [type(m).__name__ for m in h] == ["Flatten", "Linear", "ReLU", "Linear"]
    assert (h[1].in_features, h[1].out_features, h[3].out_features) == (65536, 512, 10)
    assert count(h) == 65536 * 512 + 512 + 512 * 10 + 10 == 33_560_074


def test_mlp_sr_is_eugenium_dgls():
    # auxiliary_nets_study/models.py auxillary_classifier2(n_lin=3, mlp_layers=3), used (C=128, in_size=32):
    # 3 x (1x1 conv C->C no bias + BN2d) = 3*(128*128 + 256); 3 x (Linear 4C->4C + BN1d) = 3*(512*512 + 512 + 1024);
    # Linear 4C->10 = 5130
    h = head("mlp_sr", 128, 32)
    assert count(h) == 3 * (128 * 128 + 256) + 3 * (512 * 512 + 512 + 1024) + 5130 == 846_090
    pools = [m.output_size for m in h if isinstance(m, torch.nn.AdaptiveAvgPool2d)]
    assert pools == [8, 2]  # ceil(32 / 4), then 2x2
    assert [m.kernel_size for m in h if isinstance(m, torch.nn.Conv2d)] == [(1, 1)] * 3
    assert sum(isinstance(m, torch.nn.Linear) for m in h) == 4


@pytest.mark.parametrize(
    "channels, size, kernel, features",
    [
        (128, 32, (8, 4), 128 * 4 * 8),  # 131,072 inputs > 4096: kernel doubled h, w, h, w, h until C*h*w <= 4096
        (64, 32, (4, 4), 64 * 8 * 8),
        (512, 4, (2, 1), 512 * 2 * 4),  # 8192: halving the height is enough
        (8192, 2, (2, 2), 8192),  # the height kernel reaches the size: the loop stops above 4096
        (16, 8, None, 16 * 8 * 8),  # already <= 4096: no pooling
    ],
)
def test_nokland_head_is_his_decoder(channels, size, kernel, features):
    # anokland/local-loss train.py LocalLossBlockConv: avg_pool resolved against --dim-in-decoder 4096, then
    # decoder_y = Linear(dim_in_decoder, num_classes) with its weight zeroed
    h = head("nokland", channels, size)
    pools = [m for m in h if isinstance(m, torch.nn.AvgPool2d)]
    assert [p.kernel_size for p in pools] == ([kernel] if kernel else [])
    decoder = h[-1]
    assert decoder.in_features == features and count(h) == features * 10 + 10
    assert torch.count_nonzero(decoder.weight) == 0
    assert h(torch.randn(2, channels, size, size)).shape == (2, 10)


def test_predsim_stage_has_noklands_learned_conv():
    trainer = tiny("dgl", num_blocks=3, local_loss="predsim", aux_head="nokland")
    convs = trainer.parts["sim_convs"]
    assert len(convs) == 2
    for conv, (channels, _) in zip(convs, trainer.network.block_shapes):
        assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.bias) == (channels, channels, (3, 3), None)
    assert len(tiny("dgl", local_loss="pred").parts["sim_convs"]) == 0


def test_project_head_variants():
    h = head("pooled_mlp", 64, 8, aux_width=32, aux_depth=2, aux_pool=2)
    assert count(h) == (256 * 32 + 64) + (32 * 32 + 64) + (32 * 10 + 10)  # Linear (no bias) + BN, twice, then Linear
    h = head("conv", 64, 8, aux_width=16, aux_convs=2, aux_pool=2)
    assert [m.kernel_size for m in h if isinstance(m, torch.nn.Conv2d)] == [(3, 3)] * 2
    assert count(h) == (64 * 9 * 16 + 32) + (16 * 9 * 16 + 32) + (64 * 10 + 10)


@pytest.mark.parametrize("kernel", [3, 5])
def test_synthetic_gradient_is_the_writeups_conv_synthesizer(kernel):
    # AlonNT/Thesis model.py ConvSynthesizer(n_channels=C): three CxC convs with biases, two BN, a Linear(10, C)
    # context; the write-up's kernel is 5
    c = 8
    sg = SyntheticGradient(c, conditioned=True, kernel=kernel)
    convs = [m for m in sg.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [m.kernel_size for m in convs] == [(kernel, kernel)] * 3
    assert count(sg) == 3 * (c * c * kernel * kernel + c) + 2 * 2 * c + (10 * c + c)
    assert count(SyntheticGradient(c, kernel=kernel)) == count(sg) - (10 * c + c)


def test_synthetic_gradient_zero_weight_start_and_label_context():
    sg = SyntheticGradient(8, conditioned=True)
    h = torch.randn(4, 8, 6, 6)
    labels = torch.tensor([0, 1, 2, 3])
    start = sg(h, labels)
    # the last conv's weight starts at zero (its bias as PyTorch sets it): the first prediction is that bias
    assert torch.allclose(start, sg.rest[-1].bias[None, :, None, None].expand_as(start))
    torch.nn.init.normal_(sg.rest[-1].weight)
    sg.eval()
    same_input = h[:1].expand(4, -1, -1, -1)
    out = sg(same_input, labels)
    assert out.shape == same_input.shape
    assert not torch.allclose(out[0], out[1])  # same features, different labels -> different gradient
    plain = SyntheticGradient(8).eval()
    torch.nn.init.normal_(plain.rest[-1].weight)
    assert torch.allclose(plain(same_input)[0], plain(same_input)[1])


def test_synthetic_gradient_zero_last_init_starts_at_zero():
    h = torch.randn(4, 8, 6, 6)
    assert SyntheticGradient(8, last_init="zero")(h).abs().max() == 0
    assert SyntheticGradient(8)(h).abs().max() > 0  # the write-up's: a constant from the last conv's bias


def noklands_similarity(x):
    """anokland/local-loss train.py similarity_matrix, restated."""
    if x.dim() == 4:
        if x.size(1) > 3 and x.size(2) > 1:  # noqa: SIM108  (as the reference writes it)
            x = x.view(x.size(0), x.size(1), -1).std(dim=2)
        else:
            x = x.view(x.size(0), -1)
    xc = x - x.mean(dim=1).unsqueeze(1)
    xn = xc / (1e-8 + torch.sqrt(torch.sum(xc**2, dim=1))).unsqueeze(1)
    return xn.matmul(xn.transpose(1, 0)).clamp(-1, 1)


@pytest.mark.parametrize("shape", [(6, 16, 8, 8), (5, 3, 8, 8), (4, 32, 1, 1), (7, 20)])
def test_similarity_matrix_is_noklands(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape)
    assert torch.allclose(similarity_matrix(x), noklands_similarity(x), atol=1e-6)
    if len(shape) == 4 and shape[1] > 3 and shape[2] > 1:
        # per-channel spread over positions: a spatially shifted map has the same similarity
        shifted = torch.roll(x, shifts=3, dims=3)
        assert torch.allclose(similarity_matrix(shifted), similarity_matrix(x), atol=1e-6)


def test_sim_loss_matches_hand_computation():
    features = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    labels = torch.tensor([0, 0, 1])
    # rows centred, normalised, dot products
    expected_features = torch.tensor([[1.0, -0.5, -0.5], [-0.5, 1.0, -0.5], [-0.5, -0.5, 1.0]])
    assert torch.allclose(similarity_matrix(features), expected_features, atol=1e-6)
    # one-hot over 10 classes, centred: same class -> 1, different -> -1/9
    expected_labels = torch.tensor([[1.0, 1.0, -1 / 9], [1.0, 1.0, -1 / 9], [-1 / 9, -1 / 9, 1.0]])
    expected = ((expected_features - expected_labels) ** 2).mean()
    assert torch.isclose(sim_loss(features, labels), expected, atol=1e-6)


def tiny(trainer, **overrides):
    cfg = resolve(
        {
            "trainer": trainer,
            "model": "vgg11",
            "width": 0.125,
            "aux_width": 32,
            "epochs": 2,
            "batch_size": 16,
            **overrides,
        }
    )
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


@pytest.mark.parametrize("after_last", [False, True])
def test_dni_regression_target_is_the_true_gradient(after_last):
    cfg = resolve(
        {
            "trainer": "dni",
            "model": "basiccnn",
            "width": 0.125,
            "num_blocks": 2,
            "batch_size": 8,
            "sg_after_last_block": after_last,
        }
    )
    trainer = RecordingDNI(cfg, "cpu", steps_per_epoch=1)
    trainer.targets = []
    before = copy.deepcopy(trainer.network).train()
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    trainer.train_step(x, y)
    # the module next to the true loss regresses toward the true gradient: at the last block's output with the
    # write-up's placement, else at the first block's (the second block then learns from the loss itself)
    out = before.blocks[0](x)
    last = before.blocks[1](out)
    loss = F.cross_entropy(before.classifier(last), y)
    (true_grad,) = torch.autograd.grad(loss, last if after_last else out)
    assert len(trainer.targets) == (2 if after_last else 1)
    assert torch.allclose(trainer.targets[-1], true_grad * len(y), atol=1e-5)
    assert true_grad.abs().sum() > 0


def test_dni_module_next_to_the_loss_learns_at_once():
    trainer = tiny("dni", num_blocks=3)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    trainer.train_step(x, y)
    assert len(trainer.synthetic) == 3  # the write-up's placement: after the last block as well
    assert trainer.synthetic[-1].rest[-1].weight.abs().sum() > 0
    assert len(tiny("dni", num_blocks=3, sg_after_last_block=False).synthetic) == 2


def test_dgl_with_one_block_is_backprop():
    torch.manual_seed(0)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]
    losses = {}
    for name in ("backprop", "dgl", "dni"):
        trainer = tiny(name, num_blocks=1, dropout=0.1, sg_after_last_block=False)
        losses[name] = [trainer.train_epoch(batches)["train_loss"] for _ in range(2)]
    assert losses["dgl"] == losses["backprop"]
    assert losses["dni"] == losses["backprop"]


def test_dgl_head_families_report_per_block_accuracy():
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    for family in HEAD_FAMILIES:
        trainer = tiny("dgl", aux_head=family, num_blocks=3)
        assert isinstance(trainer, DGL)
        metrics = trainer.evaluate([(x, y)])
        assert set(metrics) == {"loss", "acc", "block1_acc", "block2_acc", "block3_acc"}
        assert metrics["acc"] == metrics["block3_acc"]
