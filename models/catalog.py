"""What the models offer, as plain data without torch: the networks, the trainers, the auxiliary heads, the losses,
optimizers and schedules, and which config keys each of them reads.

The config schema (tuner/config/schema.py) and the rule of which keys a trial reads (tuner/config/keys.py) are built
from these tables, so a search can be checked and planned without importing torch; the torch modules in models/
build what is named here.
"""

from __future__ import annotations

NUM_CLASSES = 10
IMAGE_CHANNELS, IMAGE_SIZE = 3, 32  # CIFAR-10's images

# Conv widths; 'M' is a 2x2 max-pool that belongs to the conv before it.
CFGS: dict[str, list] = {
    "basiccnn": [128, "M", 128, "M", 128, "M"],
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
KERNEL = {"basiccnn": 5}  # the write-up's BasicCNN uses 5x5 convs; VGG uses 3x3
HIDDEN = {"basiccnn": [256]}  # hidden widths of the classifier MLP; VGG for CIFAR has none (Linear 512 -> 10)


def num_units(name: str) -> int:
    """The conv layers of network `name`: the most blocks it can be cut into."""
    return sum(1 for item in CFGS[name] if item != "M")


# Each choice a config makes -> its values -> the config keys that value (and only it) reads. Keys no table names
# are read by every trial. The first table's names are the trainers (models/registry.py builds them).
TRAINER_READS = {
    "backprop": (),  # the whole network as one block
    "dgl": ("num_blocks", "aux_head", "local_loss", "stages"),
    "dni": ("num_blocks", "sg_kernel", "sg_after_last_block", "sg_last_init"),
    "cdni": ("num_blocks", "sg_kernel", "sg_after_last_block", "sg_last_init"),
}
HEAD_READS = {  # DGL's auxiliary head families (models/heads.py says what each reproduces)
    "flatten_mlp": ("aux_width", "aux_depth"),
    "mlp_sr": (),  # fixed by the block's shape
    "nokland": (),
    "pooled_mlp": ("aux_width", "aux_depth", "aux_pool"),
    "conv": ("aux_width", "aux_convs", "aux_pool"),
}
LOSS_READS = {"pred": (), "sim": (), "predsim": ("sim_weight",)}  # models/losses.py
OPTIMIZER_READS = {"sgd": ("momentum", "nesterov"), "adamw": ()}  # models/optim.py
SCHEDULE_READS = {"cosine": (), "step": ("lr_step_epochs", "lr_gamma"), "constant": ()}  # models/optim.py
READS = {
    "trainer": TRAINER_READS,
    "aux_head": HEAD_READS,
    "local_loss": LOSS_READS,
    "optimizer": OPTIMIZER_READS,
    "schedule": SCHEDULE_READS,
}

TRAINERS = tuple(TRAINER_READS)
HEAD_FAMILIES = tuple(HEAD_READS)
LOCAL_LOSSES = tuple(LOSS_READS)
OPTIMIZERS = tuple(OPTIMIZER_READS)
SCHEDULES = tuple(SCHEDULE_READS)
