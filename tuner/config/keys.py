"""Which keys of a trial's config the trainers read, given the others: a backprop run has no `aux_head`, a DGL run
with local_loss=pred no `sim_weight`. MLflow logs only these, and a study refuses to share a key no arm reads."""

from __future__ import annotations

# key -> (the key it depends on, the values under which it is used by the trainers in models/)
APPLIES_WHEN = {
    "num_blocks": ("trainer", ("dgl", "dni", "cdni")),  # backprop trains its network as one block
    "aux_head": ("trainer", ("dgl",)),
    "local_loss": ("trainer", ("dgl",)),
    "stages": ("trainer", ("dgl",)),
    "aux_width": ("aux_head", ("flatten_mlp", "pooled_mlp", "conv")),
    "aux_depth": ("aux_head", ("flatten_mlp", "pooled_mlp")),
    "aux_pool": ("aux_head", ("pooled_mlp", "conv")),
    "aux_convs": ("aux_head", ("conv",)),
    "sg_kernel": ("trainer", ("dni", "cdni")),
    "sg_after_last_block": ("trainer", ("dni", "cdni")),
    "sg_last_init": ("trainer", ("dni", "cdni")),
    "sim_weight": ("local_loss", ("predsim",)),
    "momentum": ("optimizer", ("sgd",)),
    "nesterov": ("optimizer", ("sgd",)),
    "lr_step_epochs": ("schedule", ("step",)),
    "lr_gamma": ("schedule", ("step",)),
}


def applies(key: str, config: dict) -> bool:
    """Whether the trainers read `key` under `config` (sim_weight only with local_loss=predsim, ...)."""
    if key not in APPLIES_WHEN:
        return True
    parent, values = APPLIES_WHEN[key]
    return config.get(parent) in values and applies(parent, config)


def applicable_params(config: dict) -> dict:
    return {key: value for key, value in config.items() if applies(key, config)}
