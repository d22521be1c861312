"""Which keys of a trial's config the trainers read, given the others: a backprop run has no `aux_head`, a DGL run
with local_loss=pred no `sim_weight`. MLflow logs only these, and a study refuses to share a key no arm reads."""

from __future__ import annotations

from models.catalog import READS


def _applies_when() -> dict:
    """key -> (the choice it depends on, the values of that choice under which the trainers read it)."""
    table: dict[str, tuple[str, tuple]] = {}
    for choice, reads in READS.items():
        for value, keys in reads.items():
            for key in keys:
                parent, values = table.setdefault(key, (choice, ()))
                table[key] = (parent, (*values, value))
    return table


APPLIES_WHEN = _applies_when()  # e.g. "sim_weight": ("local_loss", ("predsim",)), from models/catalog.py


def applies(key: str, config: dict) -> bool:
    """Whether the trainers read `key` under `config` (sim_weight only with local_loss=predsim, ...)."""
    if key not in APPLIES_WHEN:
        return True
    parent, values = APPLIES_WHEN[key]
    return config.get(parent) in values and applies(parent, config)


def applicable_params(config: dict) -> dict:
    return {key: value for key, value in config.items() if applies(key, config)}
