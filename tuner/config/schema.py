"""One trial's settings and the shape of a search-space file, as pydantic models: the single source of truth.

`resolve(overrides)` fills in the defaults and validates; everything downstream (trainers, the Ray trainable, MLflow)
sees the same frozen `TrialConfig`. The names of trainers, models, heads, losses, optimizers and schedules come from
models/catalog.py, which imports no torch. pydantic finds what is wrong and where and says it; `problem` only writes
its location as the user writes the key and adds the value it got, or the keys allowed in place of an unknown one.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union, cast

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationError, model_validator

from models.catalog import CFGS, HEAD_FAMILIES, LOCAL_LOSSES, OPTIMIZERS, SCHEDULES, TRAINERS, num_units
from tuner.errors import ConfigError
from tuner.text import yaml_value

STRICT = ConfigDict(extra="forbid", frozen=True, strict=True)  # a YAML `true` is not 1, a "0.1" is not a number


class TrialConfig(BaseModel):
    """A flat record of plain values; a value's type is the type it must have (an int is accepted for a float)."""

    model_config = STRICT
    # Literal[...] of the catalog's names (tuples built at import): pydantic checks them; mypy cannot evaluate them
    # what is trained
    trainer: Literal[TRAINERS] = "dgl"  # type: ignore[valid-type]
    model: Literal[tuple(CFGS)] = "vgg16"  # type: ignore[valid-type]
    width: float = Field(1.0, gt=0.0, le=64.0)  # multiplier on every conv / hidden width
    num_blocks: int | None = Field(None, ge=1, le=10_000)  # None: one block per conv layer / conv stage; 1 = backprop
    dropout: float = Field(0.0, ge=0.0, le=1.0)  # dropout after each conv unit
    # local learning: DGL auxiliary heads and losses
    # head families (models/heads.py says what each reproduces); the default is the write-up's flatten -> 512 -> 10
    aux_head: Literal[HEAD_FAMILIES] = "flatten_mlp"  # type: ignore[valid-type]
    aux_width: int = Field(512, ge=1, le=1 << 16)  # hidden units (flatten_mlp, pooled_mlp) / channels (conv)
    aux_depth: int = Field(1, ge=0, le=16)  # hidden Linear layers of flatten_mlp and pooled_mlp only
    aux_convs: int = Field(1, ge=0, le=16)  # 3x3 conv layers of the conv head only
    aux_pool: int = Field(2, ge=1, le=64)  # pooled_mlp and conv heads: pooled spatial size
    local_loss: Literal[LOCAL_LOSSES] = "pred"  # type: ignore[valid-type]
    sim_weight: float = Field(0.99, ge=0.0, le=1.0)  # predsim: (1 - sim_weight) * CE + sim_weight * sim (Nøkland's)
    # DNI / cDNI synthetic-gradient modules; the defaults are the write-up's
    sg_kernel: Literal[3, 5] = 5  # kernel of the module's three convs
    sg_after_last_block: bool = True  # a module after the last block too: the classifier learns from the loss alone
    # the module's last conv: zero_weight (the write-up's and the reference code's: its bias keeps PyTorch's default)
    # or zero (weight and bias: every module's first prediction is exactly 0)
    sg_last_init: Literal["zero_weight", "zero"] = "zero_weight"
    # optimisation
    optimizer: Literal[OPTIMIZERS] = "sgd"  # type: ignore[valid-type]
    lr: float = Field(0.05, gt=0.0, le=1e6)
    momentum: float = Field(0.9, ge=0.0, le=1.0)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0.0, le=1e3)
    schedule: Literal[SCHEDULES] = "cosine"  # type: ignore[valid-type]
    warmup_epochs: int = Field(0, ge=0, le=10_000)
    lr_step_epochs: int = Field(30, ge=1, le=10_000)  # step schedule: multiply by lr_gamma every lr_step_epochs
    lr_gamma: float = Field(0.1, gt=0.0, le=1.0)
    label_smoothing: float = Field(0.0, ge=0.0, le=1.0)
    epochs: int = Field(10, ge=1, le=100_000)
    batch_size: int = Field(128, ge=1, le=1 << 20)
    # data
    train_subset: int | None = Field(None, ge=10, le=10_000_000)  # None: the whole split; else a stratified subset
    val_size: int = Field(5000, ge=0, le=10_000_000)  # held out from the training set; the metric a search optimises
    split_seed: int = Field(0, ge=0, le=2**63 - 1)  # which images are held out (and the subset); apart from seed
    augment: bool = True
    # run
    seed: int = Field(0, ge=0, le=2**63 - 1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = False  # torch.compile: opt-in, measured in bench/README.md (no reliable gain on a CPU)
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # bf16 autocast or none; auto: bf16 on a GPU, fp32 on a CPU
    stages: int = Field(1, ge=1, le=10_000)  # dgl: its blocks trained as this many pipelined processes; 1 = one loop
    eval_batch_size: int = Field(1000, ge=1, le=1 << 20)

    @model_validator(mode="after")
    def _blocks_fit_the_model(self) -> TrialConfig:
        units = num_units(self.model)
        if self.num_blocks is not None and self.num_blocks > units:
            raise ValueError(
                f"'num_blocks' must lie in [1, {units}] for {self.model} (its conv layers), got {self.num_blocks}"
            )
        if self.stages > 1 and self.trainer != "dgl":
            raise ValueError(
                f"'stages' > 1 needs trainer dgl (the only one whose blocks train apart), got trainer {self.trainer}"
            )
        if self.stages > (self.num_blocks or units):
            raise ValueError(
                f"'stages' must lie in [1, {self.num_blocks or units}] (the number of blocks), got {self.stages}"
            )
        return self

    def updated(self, **changes) -> TrialConfig:
        """A copy with `changes`, checked like any config."""
        return resolve({**self.model_dump(), **changes})


KEYS = tuple(TrialConfig.model_fields)


def _kind(annotation) -> str:
    """'bool' | 'int' | 'float' | 'str' | 'int?' (an integer or null) for a TrialConfig field's annotation."""
    if typing.get_origin(annotation) is Literal:  # choices: names, or numbers such as a kernel size
        return type(typing.get_args(annotation)[0]).__name__
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return "int?"
    return annotation.__name__


TYPE_NAMES = {  # what --set parses a value as
    "bool": "true or false",
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "int?": "an integer or null",
}


def problem(error: Mapping[str, Any], root: type[BaseModel] = TrialConfig) -> tuple[str, str]:
    """(the key path as a user writes it, what is wrong) of one of pydantic's errors: pydantic's own location and
    message, with the value it got, and for an unknown key the keys allowed there (the fields of the model under
    `root` that holds it)."""
    loc, kind = error["loc"], error["type"]
    path = key_path(loc, last_is_a_key=kind in ("extra_forbidden", "missing"))
    if kind == "extra_forbidden":
        return path, f"unknown key; allowed: {', '.join(_fields_at(root, loc[:-1]))}"
    if kind == "value_error":  # a model validator's own message, already in the user's terms
        return path, str(error["ctx"]["error"])
    shown = kind not in ("missing", "union_tag_invalid")  # pydantic's message names the tag; a key has no value
    return path, error["msg"] + (f" (got {yaml_value(error['input'])})" if shown else "")


def key_path(loc: tuple, last_is_a_key: bool = False) -> str:
    """pydantic's location as a user writes the key: search.lr[1].high. pydantic also names the member of a union it
    tried (the `type` of a distribution, one distribution or a list of them); the user never wrote those. The last
    part of an unknown or missing key's location is that key, whatever its name."""
    parts = [part for i, part in enumerate(loc) if part not in UNION_TAGS or (last_is_a_key and i == len(loc) - 1)]
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in parts).lstrip(".")


def _fields_at(model: type[BaseModel], loc: tuple) -> tuple:
    """The keys of the model at `loc` under `model` (a union's member picked by its tag in `loc`)."""
    for part in loc:
        if part in UNION_TAGS:
            model = UNION_TAGS[part] or model
        elif part in model.model_fields:
            members = _models_in(model.model_fields[part].annotation)
            model = members[0] if len(members) == 1 else model
    return tuple(model.model_fields)


def _models_in(annotation) -> list:
    """The pydantic models an annotation names, inside unions, lists, dicts and Annotated."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _models_in(arg)]


_FIELD_CHECKS: dict[str, TypeAdapter] = {  # each field's type with its constraints, built from the model at import
    key: TypeAdapter(cast(Any, Annotated[field.annotation, field]), config=ConfigDict(strict=True))
    for key, field in TrialConfig.model_fields.items()
}


def check_value(key: str, value, where: str = "") -> object:
    """One key's value, checked on its own (an int widened to float where a float is expected), or ConfigError
    naming `where` (default: the key)."""
    if key not in _FIELD_CHECKS:
        raise ConfigError(f"{where or key}: unknown key; allowed: {', '.join(KEYS)}")
    try:
        return _FIELD_CHECKS[key].validate_python(value)
    except ValidationError as error:
        raise ConfigError(f"{where or key}: {problem(error.errors()[0])[1]}") from None


def resolve(overrides: dict | None = None, where: str = "") -> TrialConfig:
    """Defaults + overrides, every value checked. Raises ConfigError with a one-line message."""
    overrides = dict(overrides or {})
    try:
        return TrialConfig.model_validate(overrides)
    except ValidationError as error:
        order = list(overrides)  # the first bad key as the user wrote them
        first = min(error.errors(), key=lambda e: order.index(e["loc"][0]) if e["loc"] else len(order))
        path, what = problem(first)
        raise ConfigError(": ".join(part for part in (where, path, what) if part)) from None


def parse_assignment(text: str) -> tuple[str, object]:
    """`key=value` from the command line -> (key, typed value), typed by the key's field."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got '{text}'")
    key, raw = (part.strip() for part in text.split("=", 1))
    if key not in _FIELD_CHECKS:
        raise ConfigError(f"--set: unknown key '{key}'; allowed: {', '.join(sorted(KEYS))}")
    kind = _kind(TrialConfig.model_fields[key].annotation)
    try:
        if raw.lower() in ("none", "null"):
            value = None
        elif kind == "bool":
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            value = raw.lower() in ("true", "1")
        else:
            value = {"float": float, "int": int, "int?": int, "str": str}[kind](raw)
    except ValueError:
        raise ConfigError(f"--set {key}: '{raw}' is not {TYPE_NAMES[kind]}") from None
    return key, check_value(key, value, f"--set {key}")


# ---------------------------------------------------------------------------------------------- search spaces
# The shape of a space file (search_spaces/example.yaml documents it key by key). Values that are config values
# (fixed, bounds, choices, points) are `Any` here: whether they fit depends on the key they belong to, which
# tuner.config.space_file checks with check_value.


class _Shape(BaseModel):
    model_config = STRICT


class Uniform(_Shape):
    type: Literal["uniform"]
    low: Any
    high: Any
    when: Any = None


class LogUniform(_Shape):
    type: Literal["loguniform"]
    low: Any
    high: Any
    when: Any = None


class IntRange(_Shape):
    type: Literal["int"]
    low: Any
    high: Any
    step: int = Field(1, ge=1)
    log: bool = False
    when: Any = None


class Choice(_Shape):
    type: Literal["choice"]
    values: Any
    when: Any = None


class Asha(_Shape):
    type: Literal["asha"] = "asha"
    max_t: int | None = Field(None, ge=1)  # None: the trial's epoch budget
    grace_period: int = Field(1, ge=1)
    reduction_factor: int | float = Field(4, gt=1)


class Fifo(_Shape):
    type: Literal["fifo"] = "fifo"


class OptunaTPE(_Shape):
    type: Literal["optuna_tpe"] = "optuna_tpe"
    seed: Any = None  # None: the config's seed
    n_startup_trials: int = Field(10, ge=0)
    points_to_evaluate: list[dict[str, Any]] | None = None


class RandomSearch(_Shape):
    type: Literal["random"] = "random"
    seed: Any = None
    points_to_evaluate: list[dict[str, Any]] | None = None


class Resources(_Shape):
    cpu: int | float = Field(1, ge=0)
    gpu: int | float = Field(0, ge=0)


Distribution = Annotated[Uniform | LogUniform | IntRange | Choice, Field(discriminator="type")]
# a searched key: one distribution, or a list of them, each with its own `when:` (a distribution per condition).
# The tags name the form pydantic tried in its error locations; tuner.config.space_file leaves them out of the key path.
SEARCH_FORMS = ("one", "per_condition")
SearchEntry = Annotated[
    Annotated[Distribution, Tag("one")] | Annotated[list[Distribution], Tag("per_condition")],
    Discriminator(
        lambda entry: "per_condition" if isinstance(entry, list) else "one" if isinstance(entry, dict) else None,
        custom_error_type="search_entry",
        custom_error_message="must be a distribution {type: ...} or a list of them (fixed values go under fixed)",
    ),
]
Scheduler = Annotated[Asha | Fifo, Field(discriminator="type")]
Searcher = Annotated[OptunaTPE | RandomSearch, Field(discriminator="type")]
# every tag pydantic may put in an error's location -> the model it names (None: a search entry's form)
UNION_TAGS = {
    **dict.fromkeys(SEARCH_FORMS),
    **{
        typing.get_args(model.model_fields["type"].annotation)[0]: model
        for model in (Uniform, LogUniform, IntRange, Choice, Asha, Fifo, OptunaTPE, RandomSearch)
    },
}


class SpaceFile(_Shape):
    """A space file as written; `null` for an optional section means its default."""

    description: Any = None
    trainer: Any
    model: Any
    fixed: Any = None
    search: dict[str, SearchEntry]
    scheduler: Scheduler | None = None
    searcher: Searcher | None = None
    num_samples: int = Field(ge=1)
    max_concurrent: int | None = Field(None, ge=1)
    resources: Resources | None = None
    metric: Any = None
    mode: Literal["min", "max"] | None = None
