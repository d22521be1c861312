"""One trial's settings: the defaults, in one place, and the checks that turn bad values into one-line errors.

A config is a flat dict of plain values. `resolve(overrides)` fills in the defaults and validates; everything
downstream (trainers, the Ray trainable, MLflow params) sees the same flat dict.
"""

from __future__ import annotations

TRAINERS = ("backprop", "dgl", "dni", "cdni")
MODELS = ("basiccnn", "vgg11", "vgg13", "vgg16", "vgg19")
AUX_HEADS = ("mlp", "mlp_sr", "conv")
LOCAL_LOSSES = ("pred", "sim", "predsim")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant")
DEVICES = ("auto", "cpu", "cuda")

# key -> default. The type of the default is the type a value must have (int also accepted for float;
# None defaults accept None or an int).
DEFAULTS: dict = {
    # what is trained
    "trainer": "dgl",
    "model": "vgg16",
    "width": 1.0,            # multiplier on every conv / hidden width
    "num_blocks": None,      # None: one block per conv layer (VGG) / conv stage (basiccnn); 1 = backprop
    "dropout": 0.0,          # dropout after each conv unit
    # local learning: DGL auxiliary heads and losses
    "aux_head": "mlp",
    "aux_width": 512,
    "aux_depth": 1,
    "aux_pool": 2,
    "local_loss": "pred",
    "sim_weight": 0.99,      # predsim: (1 - sim_weight) * CE + sim_weight * sim
    # optimisation
    "optimizer": "sgd",
    "lr": 0.05,
    "momentum": 0.9,
    "nesterov": True,
    "weight_decay": 5e-4,
    "schedule": "cosine",
    "warmup_epochs": 0,
    "lr_step_epochs": 30,    # step schedule: multiply by lr_gamma every lr_step_epochs
    "lr_gamma": 0.1,
    "label_smoothing": 0.0,
    "epochs": 10,
    "batch_size": 128,
    # data
    "train_subset": None,    # None: the whole training split; else a stratified, seeded subset of that size
    "val_size": 5000,        # held out from the training set; the metric a search optimises
    "augment": True,
    # run
    "seed": 0,
    "device": "auto",
    "compile": False,        # torch.compile: opt-in, measured in bench/README.md (no reliable gain on a CPU)
    "stages": 1,             # dgl: its blocks trained as this many pipelined processes (models/pipeline.py); 1 = one loop
    "eval_batch_size": 1000,
}

CHOICES = {
    "trainer": TRAINERS, "model": MODELS, "aux_head": AUX_HEADS, "local_loss": LOCAL_LOSSES,
    "optimizer": OPTIMIZERS, "schedule": SCHEDULES, "device": DEVICES,
}

# (low, high, low_inclusive): numeric keys and the interval their values must lie in
BOUNDS = {
    "width": (0.0, 64.0, False), "num_blocks": (1, 10_000, True), "dropout": (0.0, 1.0, True),
    "aux_width": (1, 1 << 16, True), "aux_depth": (0, 16, True), "aux_pool": (1, 64, True),
    "sim_weight": (0.0, 1.0, True), "lr": (0.0, 1e6, False), "momentum": (0.0, 1.0, True),
    "weight_decay": (0.0, 1e3, True), "warmup_epochs": (0, 10_000, True), "lr_step_epochs": (1, 10_000, True),
    "lr_gamma": (0.0, 1.0, False), "label_smoothing": (0.0, 1.0, True), "epochs": (1, 100_000, True),
    "batch_size": (1, 1 << 20, True), "train_subset": (10, 10_000_000, True), "val_size": (0, 10_000_000, True),
    "seed": (0, 2**63 - 1, True), "eval_batch_size": (1, 1 << 20, True), "stages": (1, 10_000, True),
}


class UserError(Exception):
    """Something the user must fix (a flag, a file, a service); its message is the one line they see."""


def one_line(error: BaseException, limit: int = 200) -> str:
    """What a library's exception says, as one short line for a UserError (libraries raise multi-line texts)."""
    text = " ".join(str(error).split()) or type(error).__name__
    if "Max retries exceeded" in text or "Connection refused" in text or "Failed to establish" in text:
        return "cannot connect to the server"
    return text[:limit] + ("..." if len(text) > limit else "")


class ConfigError(UserError, ValueError):
    """A bad key or value."""


def _type_name(default) -> str:
    if default is None:
        return "an integer or null"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[type(default)]


def check_value(key: str, value, where: str = "") -> object:
    """Return `value` (an int widened to float where a float is expected) or raise ConfigError naming `key`."""
    prefix = f"{where}: " if where else ""
    if key not in DEFAULTS:
        raise ConfigError(f"{prefix}unknown key '{key}'; allowed: {', '.join(sorted(DEFAULTS))}")
    default = DEFAULTS[key]
    ok_types = {bool: (bool,), int: (int,), float: (int, float), str: (str,), type(None): (int, type(None))}[type(default)]
    if not isinstance(value, ok_types) or (isinstance(value, bool) and not isinstance(default, bool)):
        raise ConfigError(f"{prefix}'{key}' must be {_type_name(default)}, got {value!r}")
    if isinstance(default, float) and value is not None:
        value = float(value)
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{prefix}'{key}' must be one of {', '.join(CHOICES[key])}, got {value!r}")
    if key in BOUNDS and value is not None:
        low, high, low_inclusive = BOUNDS[key]
        if not (low <= value <= high) or (not low_inclusive and value == low):
            interval = f"{'[' if low_inclusive else '('}{low}, {high}]"
            raise ConfigError(f"{prefix}'{key}' must lie in {interval}, got {value!r}")
    return value


def resolve(overrides: dict | None = None, where: str = "") -> dict:
    """Defaults + overrides, every value checked. Raises ConfigError with a one-line message."""
    config = dict(DEFAULTS)
    for key, value in (overrides or {}).items():
        config[key] = check_value(key, value, where)
    check_combination(config, where)
    return config


def check_combination(config: dict, where: str = "") -> None:
    """Checks that involve more than one key."""
    from models.networks import num_units

    prefix = f"{where}: " if where else ""
    units = num_units(config["model"])
    if config["num_blocks"] is not None and config["num_blocks"] > units:
        raise ConfigError(f"{prefix}'num_blocks' must lie in [1, {units}] for {config['model']} "
                          f"(its conv layers), got {config['num_blocks']}")
    if config["stages"] > 1 and config["trainer"] != "dgl":
        raise ConfigError(f"{prefix}'stages' > 1 needs trainer dgl (the only one whose blocks train apart), "
                          f"got trainer {config['trainer']}")
    if config["stages"] > (config["num_blocks"] or units):
        raise ConfigError(f"{prefix}'stages' must lie in [1, {config['num_blocks'] or units}] (the number of blocks), "
                          f"got {config['stages']}")


def parse_assignment(text: str) -> tuple[str, object]:
    """`key=value` from the command line -> (key, typed value), typed by the key's default."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got '{text}'")
    key, raw = text.split("=", 1)
    key = key.strip()
    if key not in DEFAULTS:
        raise ConfigError(f"--set: unknown key '{key}'; allowed: {', '.join(sorted(DEFAULTS))}")
    default = DEFAULTS[key]
    raw = raw.strip()
    try:
        if raw.lower() in ("none", "null"):
            value = None
        elif isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            value = raw.lower() in ("true", "1")
        elif isinstance(default, float):
            value = float(raw)
        elif isinstance(default, int) or default is None:
            value = int(raw)
        else:
            value = raw
    except ValueError:
        raise ConfigError(f"--set {key}: '{raw}' is not {_type_name(default)}") from None
    return key, check_value(key, value, f"--set {key}")
