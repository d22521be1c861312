"""What several test files share: a small trainer on given splits, and the flags that keep a search's files in the
test's own folder."""

from __future__ import annotations

from models.registry import build_trainer
from tuner.epoch import steps_per_epoch
from tuner.schema import resolve


def small_trainer(data, **config):
    """A narrow basiccnn trainer (any trainer, any key overridable) for the splits `data`, on the CPU."""
    cfg = resolve({"model": "basiccnn", "width": 0.125, "batch_size": 32, **config})
    return build_trainer(cfg, "cpu", steps_per_epoch(data.train, cfg.batch_size))


def local_store(tmp_path) -> list[str]:
    """`--storage` and `--mlflow-uri` inside the test's folder."""
    return ["--storage", str(tmp_path / "runs"), "--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db"]


# the config keys a DGL trial with the default flatten_mlp head and local_loss=pred does not read (never logged)
UNREAD_BY_DGL_PRED = {
    "sim_weight",
    "lr_step_epochs",
    "lr_gamma",
    "aux_pool",
    "aux_convs",
    "sg_kernel",
    "sg_after_last_block",
    "sg_last_init",
}
