"""Search spaces: the shipped files load and sample correctly; every kind of bad file gets a one-line SpaceError
naming the file and the key."""

import os
import pickle
import subprocess
import sys

import optuna
import pytest
import yaml

from tuner.config.schema import resolve
from tuner.config.space import config_values, make_sampler
from tuner.config.space_file import SPACES_DIR, find_space, list_spaces, load_space
from tuner.errors import ConfigError, SpaceError

optuna.logging.set_verbosity(optuna.logging.WARNING)

SHIPPED = [
    "bp_vgg16",
    "dgl_vgg16",
    "dni_vgg16",
    "cdni_vgg16",
    "bp_basiccnn",
    "dgl_basiccnn",
    "dni_basiccnn",
    "cdni_basiccnn",
    "dgl_quick",
    "bp_quick",
    "example",
]


def sample(space, asks=20):
    """`asks` trials of a real Optuna study driven by the space's sampler and define-by-run function."""
    study = optuna.create_study(sampler=make_sampler(space), direction="maximize")
    for point in space.searcher.points_to_evaluate:
        study.enqueue_trial(space.in_optuna_terms(point)[0])
    trials = []
    for i in range(asks):
        trial = study.ask()
        space.define_by_run(trial)
        study.tell(trial, float(i % 7))  # any value: lets TPE leave its startup phase
        trials.append(config_values(trial.params))
    return trials


def test_every_required_space_is_shipped():
    assert set(SHIPPED) <= set(list_spaces())
    assert find_space("dgl_quick") == SPACES_DIR / "dgl_quick.yaml"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_space_loads_and_samples_within_its_conditions(name):
    space = load_space(name)
    config = space.base_config()
    assert (config.trainer, config.model) == (space.trainer, space.model)
    assert space.text == (SPACES_DIR / f"{name}.yaml").read_text()
    assert space.scheduler.type == "fifo" or space.scheduler.max_t <= config.epochs
    trials = sample(space)
    for point, params in zip(space.searcher.points_to_evaluate, trials):
        assert {k: params[k] for k in point} == point  # the points come first, as given
    for params in trials:
        for param in space.params.values():
            active = all(params.get(parent) in values for parent, values in param.when.items())
            assert (param.name in params) == active, (param.name, params)
            if active:
                assert param.contains(params[param.name])
        resolve({**space.fixed, **params})  # every sampled config is one a trainer accepts


def test_conditional_param_follows_its_parent():
    trials = sample(load_space("dgl_vgg16"), asks=30)
    with_sim = [t for t in trials if t["local_loss"] == "predsim"]
    assert with_sim and all("sim_weight" in t for t in with_sim)
    assert all("sim_weight" not in t for t in trials if t["local_loss"] != "predsim")


def test_full_scale_spaces_are_full_scale():
    for name in SHIPPED[:8]:
        space = load_space(name)
        config = space.base_config()
        assert config.width == 1.0 and config.train_subset is None and space.resources.gpu > 0
    assert {"lr", "weight_decay", "aux_width", "aux_depth"} <= set(load_space("dgl_vgg16").params)


def test_quick_spaces_are_small():
    for name in ("dgl_quick", "bp_quick"):
        space = load_space(name)
        config = space.base_config()
        assert config.width <= 0.25 and config.train_subset <= 5000 and config.epochs <= 3
        assert space.resources.model_dump() == {"cpu": 1, "gpu": 0} and space.max_concurrent == 2


def test_define_by_run_survives_pickling_and_works_with_ray():
    space = load_space("dgl_quick")
    pickle.loads(pickle.dumps(space.define_by_run))  # Ray's OptunaSearch.save pickles it
    optuna_search = pytest.importorskip("ray.tune.search.optuna")
    searcher = optuna_search.OptunaSearch(
        space=space.define_by_run,
        metric=space.metric,
        mode=space.mode,
        sampler=make_sampler(space),
        points_to_evaluate=space.searcher.points_to_evaluate,
    )
    point, first = space.searcher.points_to_evaluate[0], searcher.suggest("trial-0")
    assert {k: first[k] for k in point} == point
    assert set(first) >= {k for k, p in space.params.items() if not p.when}


def test_with_overrides_caps_and_copies():
    space = load_space("dgl_vgg16")
    small = space.with_overrides(
        max_epochs=4, num_samples=2, train_subset=500, seed=7, cpus=1, gpus=0, max_concurrent=1
    )
    assert small.base_config().epochs == 4
    assert small.scheduler.max_t == 4 and small.scheduler.grace_period <= 4
    assert small.fixed["seed"] == small.searcher.seed == 7
    assert (small.num_samples, small.max_concurrent, small.resources.model_dump()) == (2, 1, {"cpu": 1, "gpu": 0})
    assert small.fixed["train_subset"] == 500
    assert space.base_config().epochs == 100 and space.scheduler.max_t == 100  # the original is untouched
    assert space.with_overrides(max_epochs=1000).base_config().epochs == 100  # a cap never raises the budget
    for bad in ({"max_epochs": 0}, {"train_subset": 3}, {"gpus": -1}, {"num_samples": True}):
        with pytest.raises(SpaceError):
            space.with_overrides(**bad)


def test_describe_names_everything():
    text = load_space("dgl_vgg16").describe()
    for word in ("dgl", "vgg16", "lr", "sim_weight", "local_loss", "asha", "optuna_tpe", "64", "val_acc"):
        assert word in text


GOOD = {
    "trainer": "dgl",
    "model": "vgg16",
    "fixed": {"epochs": 10, "width": 0.5},
    "search": {
        "lr": {"type": "loguniform", "low": 0.01, "high": 0.1},
        "local_loss": {"type": "choice", "values": ["pred", "predsim"]},
        "sim_weight": {"type": "uniform", "low": 0.5, "high": 1.0, "when": {"local_loss": "predsim"}},
        "aux_depth": {"type": "int", "low": 0, "high": 3},
    },
    "scheduler": {"type": "asha", "max_t": 10, "grace_period": 1},
    "searcher": {"type": "optuna_tpe", "points_to_evaluate": [{"lr": 0.05}]},
    "num_samples": 4,
}


def variant(**changes):
    """GOOD with `section=value` replaced; `search__lr={...}` replaces one searched param (None drops it)."""
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    for key, value in changes.items():
        section, _, sub = key.partition("__")
        target = data[section] if sub else data
        name = sub or section
        if value is None:
            target.pop(name, None)
        else:
            target[name] = value
    return yaml.safe_dump(data)


def error_for(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError) as caught:
        load_space(str(path))
    message = str(caught.value)
    assert isinstance(caught.value, ConfigError) and "\n" not in message and str(path) in message
    return message


def test_good_variant_loads(tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text(variant())
    assert load_space(str(path)).params["sim_weight"].when == {"local_loss": ("predsim",)}


# a distribution per condition: lr's range follows the optimizer
ADAMW_LR = {"type": "loguniform", "low": 1e-4, "high": 3e-3, "when": {"optimizer": "adamw"}}
SGD_LR = {"type": "loguniform", "low": 0.003, "high": 0.1, "when": {"optimizer": "sgd"}}
OPTIMIZER = {"type": "choice", "values": ["sgd", "adamw"]}


def per_optimizer(*lr, **changes):
    """GOOD searching the optimizer, `lr` a list of distributions, and schedule; `changes` as variant's."""
    search = {"optimizer": OPTIMIZER, "lr": list(lr), "schedule": {"type": "choice", "values": ["constant", "cosine"]}}
    point = {"type": "optuna_tpe", "points_to_evaluate": [{"optimizer": "adamw", "lr": 3e-4}]}
    return variant(**{"search": search, "searcher": point, **changes})


def test_lr_per_optimizer_is_sampled_from_its_optimizers_range(tmp_path):
    path = tmp_path / "per_optimizer.yaml"
    path.write_text(per_optimizer(ADAMW_LR, SGD_LR))
    space = load_space(str(path))
    trials = sample(space, asks=30)
    assert {k: trials[0][k] for k in ("optimizer", "lr")} == {"optimizer": "adamw", "lr": 3e-4}  # the point
    ranges = {"adamw": (1e-4, 3e-3), "sgd": (0.003, 0.1)}
    assert {t["optimizer"] for t in trials} == {"sgd", "adamw"}
    assert all(ranges[t["optimizer"]][0] <= t["lr"] <= ranges[t["optimizer"]][1] for t in trials)
    assert "loguniform [0.0001, 0.003]" in space.describe() and "loguniform [0.003, 0.1]" in space.describe()


def test_optuna_knows_each_conditions_lr_apart(tmp_path):
    # one Optuna parameter per condition: TPE models adamw's lr on adamw trials only
    path = tmp_path / "per_optimizer.yaml"
    path.write_text(per_optimizer(ADAMW_LR, SGD_LR))
    study = optuna.create_study(sampler=make_sampler(load_space(str(path))))
    load_space(str(path)).define_by_run(trial := study.ask())
    name = next(n for n in trial.params if n.startswith("lr"))
    assert name == f"lr[optimizer={trial.params['optimizer']}]"
    assert config_values(trial.params)["lr"] == trial.params[name]


def test_the_searcher_gives_trials_config_keys_and_runs_the_points_first(tmp_path):
    from tuner.search.driver import space_searcher

    path = tmp_path / "per_optimizer.yaml"
    path.write_text(per_optimizer(ADAMW_LR, SGD_LR))
    space = load_space(str(path))
    searcher = space_searcher(space, space.searcher.points_to_evaluate)
    configs = [searcher.suggest(f"trial {i}") for i in range(4)]
    assert {k: configs[0][k] for k in ("optimizer", "lr")} == {"optimizer": "adamw", "lr": 3e-4}
    assert all("lr" in config and not any("[" in key for key in config) for config in configs), configs


def test_bad_per_condition_space_is_refused_in_one_line_before_anything_exists(tmp_path, capsys):
    from tuner.run import main

    path = tmp_path / "bad.yaml"
    path.write_text(per_optimizer(ADAMW_LR, {**SGD_LR, "when": {"optimizer": ["sgd", "adamw"]}}))
    assert main(["--space", str(path), "--storage", str(tmp_path / "runs")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "search.lr[1].when: overlaps search.lr[0].when" in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


NO_HEAVY_IMPORTS = """import sys
from tuner.run import main
code = main(sys.argv[1:] + ["--storage", "runs", "--mlflow-uri", "sqlite:///mlflow.db"])
print("exit", code, "loaded:", *sorted(m for m in ("torch", "ray") if m in sys.modules))
"""


@pytest.mark.parametrize("space, code", [("dgl_quick", 0), ("bad.yaml", 2)])
def test_a_dry_run_and_a_bad_space_load_neither_torch_nor_ray(tmp_path, space, code):
    # what a user runs first, and most often to fix a file, answers without the seconds torch and Ray take to import
    (tmp_path / "bad.yaml").write_text(variant(search__lr={"type": "uniform", "low": 0.1}))
    command = [sys.executable, "-c", NO_HEAVY_IMPORTS, "--space", space, "--dry-run"]
    env = {**os.environ, "PYTHONPATH": str(SPACES_DIR.parent)}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.stdout.splitlines()[-1] == f"exit {code} loaded:", result.stdout[-2000:] + result.stderr[-2000:]


BAD = {  # case -> (YAML text, the key path the message must name)
    "top level is a list": ("- 1\n- 2\n", "top level"),
    "unknown top key": (variant(searchers={"type": "random"}), "searchers: unknown key"),
    "missing required": (variant(num_samples=None), "num_samples: Field required"),
    "unknown fixed key": (variant(fixed={"widht": 1.0}), "fixed.widht: unknown key"),
    "bad fixed value": (variant(fixed={"width": "wide"}), "fixed.width"),
    "trainer in fixed": (variant(fixed={"trainer": "dgl"}), "fixed.trainer: set trainer at the top level"),
    "unknown trainer": (
        variant(trainer="sgd"),
        """trainer: Input should be 'backprop', 'dgl', 'dni' or 'cdni' (got "sgd")""",
    ),
    "unknown model": (variant(model="resnet50"), "model"),
    "searched key unknown": (variant(search__lrr={"type": "uniform", "low": 0.1, "high": 0.2}), "search.lrr"),
    "searched and fixed": (variant(fixed={"lr": 0.1}), "search.lr: 'lr' is also in fixed"),
    "epochs searched": (variant(search__epochs={"type": "int", "low": 1, "high": 5}), "search.epochs"),
    "param not a mapping": (variant(search__lr=0.05), "search.lr: must be a distribution {type: ...}"),
    "unknown distribution": (
        variant(search__lr={"type": "normal", "low": 0.1, "high": 0.2}),
        "search.lr: Input tag 'normal' found using 'type' does not match any of the expected tags: 'uniform', "
        "'loguniform', 'int', 'choice'",
    ),
    "unknown param key": (
        variant(search__lr={"type": "uniform", "low": 0.1, "high": 0.2, "step": 0.1}),
        "search.lr.step: unknown key; allowed: type, low, high, when",
    ),
    "missing bound": (variant(search__lr={"type": "uniform", "low": 0.1}), "search.lr.high"),
    "low >= high": (variant(search__lr={"type": "uniform", "low": 0.1, "high": 0.01}), "search.lr.low: must be < high"),
    "lr low 0": (variant(search__lr={"type": "uniform", "low": 0, "high": 0.1}), "search.lr.low"),
    "bound is text": (variant(search__lr={"type": "uniform", "low": "0.01", "high": 0.1}), "search.lr.low"),
    "loguniform low 0": (
        variant(search__weight_decay={"type": "loguniform", "low": 0.0, "high": 0.1}),
        "search.weight_decay.low: must be > 0",
    ),
    "int log low 0": (
        variant(search__aux_depth={"type": "int", "low": 0, "high": 3, "log": True}),
        "search.aux_depth.low: must be > 0",
    ),
    "int float bound": (variant(search__aux_depth={"type": "int", "low": 0.5, "high": 3}), "search.aux_depth.low"),
    "int bad step": (
        variant(search__aux_depth={"type": "int", "low": 0, "high": 3, "step": 2}),
        "search.aux_depth.high",
    ),
    "float dist on int key": (
        variant(search__aux_width={"type": "uniform", "low": 8, "high": 64}),
        "search.aux_width.type",
    ),
    "empty choices": (variant(search__aux_head={"type": "choice", "values": []}), "search.aux_head.values"),
    "bad choice": (
        variant(search__aux_head={"type": "choice", "values": ["flatten_mlp", "foo"]}),
        "search.aux_head.values[1]",
    ),
    "duplicate choice": (variant(search__aux_width={"type": "choice", "values": [64, 64]}), "search.aux_width.values"),
    "when unknown parent": (
        variant(search__dropout={"type": "uniform", "low": 0, "high": 0.5, "when": {"aux_head": "mlp"}}),
        "search.dropout.when.aux_head: unknown key",
    ),
    "when parent not choice": (
        variant(search__dropout={"type": "uniform", "low": 0, "high": 0.5, "when": {"lr": 0.1}}),
        "search.dropout.when.lr",
    ),
    "when value not a choice": (
        variant(search__sim_weight={"type": "uniform", "low": 0.5, "high": 1.0, "when": {"local_loss": "sim"}}),
        "search.sim_weight.when.local_loss",
    ),
    "empty search": (variant(search={}), "search: names no hyperparameter"),
    "conditions overlap": (
        per_optimizer(ADAMW_LR, {**SGD_LR, "when": {"optimizer": ["sgd", "adamw"]}}),
        'search.lr[1].when: overlaps search.lr[0].when: both hold for optimizer="adamw"',
    ),
    "a parent's choice without a distribution": (
        per_optimizer(ADAMW_LR),
        'search.lr: no distribution for optimizer="sgd"',
    ),
    "a distribution without a condition": (
        per_optimizer(ADAMW_LR, {**SGD_LR, "when": None}),
        "search.lr[1].when: missing",
    ),
    "condition on an unknown key": (
        per_optimizer(ADAMW_LR, {**SGD_LR, "when": {"optimiser": "sgd"}}),
        "search.lr[1].when.optimiser: unknown key",
    ),
    "condition value not a parent's choice": (
        per_optimizer(ADAMW_LR, {**SGD_LR, "when": {"optimizer": "adam"}}),
        "search.lr[1].when.optimizer",
    ),
    "conditions on different parents": (
        per_optimizer(ADAMW_LR, {**SGD_LR, "when": {"schedule": "cosine"}}),
        "search.lr[1].when: conditions on schedule",
    ),
    "distributions of two types": (
        per_optimizer(ADAMW_LR, {**SGD_LR, "type": "uniform"}),
        "search.lr[1].type: must be loguniform",
    ),
    "a list of no distribution": (per_optimizer(), "search.lr: lists no distribution"),
    "a bad distribution in the list": (
        per_optimizer(ADAMW_LR, {"type": "loguniform", "low": 0.003, "when": {"optimizer": "sgd"}}),
        "search.lr[1].high: Field required",
    ),
    "a point outside its condition's range": (
        per_optimizer(
            ADAMW_LR, SGD_LR, searcher={"type": "random", "points_to_evaluate": [{"optimizer": "adamw", "lr": 0.05}]}
        ),
        "searcher.points_to_evaluate[0].lr: 0.05 is outside the searched range; allowed: loguniform [0.0001, 0.003]",
    ),
    "a point without the parent that picks its range": (
        per_optimizer(ADAMW_LR, SGD_LR, searcher={"type": "random", "points_to_evaluate": [{"lr": 0.05}]}),
        "searcher.points_to_evaluate[0].lr: 'lr' has a distribution per optimizer",
    ),
    "a parent with choices per condition, one uncovered": (
        per_optimizer(
            SGD_LR,
            search__optimizer=[
                {"type": "choice", "values": ["sgd"], "when": {"schedule": "constant"}},
                {"type": "choice", "values": ["adamw", "sgd"], "when": {"schedule": "cosine"}},
            ],
        ),
        'search.lr: no distribution for optimizer="adamw"',
    ),
    "a point whose parent picks no range": (
        per_optimizer(
            ADAMW_LR,
            search__optimizer={"type": "choice", "values": ["adamw"]},
            searcher={"type": "random", "points_to_evaluate": [{"lr": 3e-4, "optimizer": "sgd"}]},
        ),
        """searcher.points_to_evaluate[0].lr: 'lr' is only sampled when optimizer in ["adamw"], but the point sets""",
    ),
    "unknown scheduler": (
        variant(scheduler={"type": "hyperband"}),
        "scheduler: Input tag 'hyperband' found using 'type' does not match any of the expected tags: 'asha', 'fifo'",
    ),
    "unknown scheduler key": (variant(scheduler={"type": "asha", "max_epochs": 3}), "scheduler.max_epochs"),
    "max_t over epochs": (variant(scheduler={"type": "asha", "max_t": 20}), "scheduler.max_t"),
    "grace over max_t": (variant(scheduler={"type": "asha", "max_t": 5, "grace_period": 6}), "scheduler.grace_period"),
    "reduction factor 1": (variant(scheduler={"type": "asha", "reduction_factor": 1}), "scheduler.reduction_factor"),
    "unknown searcher": (
        variant(searcher={"type": "bayesopt"}),
        "searcher: Input tag 'bayesopt' found using 'type' does not match any of the expected tags: 'optuna_tpe', "
        "'random'",
    ),
    "tpe key on random": (variant(searcher={"type": "random", "n_startup_trials": 3}), "searcher.n_startup_trials"),
    "point outside range": (
        variant(searcher={"type": "random", "points_to_evaluate": [{"lr": 0.5}]}),
        "searcher.points_to_evaluate[0].lr",
    ),
    "point unknown key": (
        variant(searcher={"type": "random", "points_to_evaluate": [{"width": 0.5}]}),
        "searcher.points_to_evaluate[0].width: unknown key",
    ),
    "point contradicts when": (
        variant(searcher={"type": "random", "points_to_evaluate": [{"local_loss": "pred", "sim_weight": 0.7}]}),
        "searcher.points_to_evaluate[0].sim_weight",
    ),
    "num_samples 0": (variant(num_samples=0), "num_samples"),
    "num_samples text": (variant(num_samples="many"), "num_samples"),
    "max_concurrent 0": (variant(max_concurrent=0), "max_concurrent"),
    "negative gpu": (variant(resources={"cpu": 1, "gpu": -0.5}), "resources.gpu"),
    "unknown resource": (variant(resources={"cpus": 1}), "resources.cpus: unknown key"),
    "bad mode": (variant(mode="maximize"), """mode: Input should be 'min' or 'max' (got "maximize")"""),
    "metric not text": (variant(metric=5), "metric"),
    "yaml syntax": ("trainer: dgl\nsearch: {lr: [\n", "line"),
    "duplicate key": (variant().replace("num_samples: 4", "num_samples: 4\nnum_samples: 8"), "duplicate key"),
    "yes as a number": (variant().replace("num_samples: 4", "num_samples: yes"), "num_samples"),
    "yes as a bound": (variant().replace("high: 3", "high: yes"), "search.aux_depth.high"),
    "when cycle": (
        variant(
            search={
                "aux_head": {"type": "choice", "values": ["flatten_mlp", "conv"], "when": {"local_loss": "pred"}},
                "local_loss": {"type": "choice", "values": ["pred", "sim"], "when": {"aux_head": "flatten_mlp"}},
            },
            searcher={"type": "random"},
        ),
        "search: 'when' conditions form a cycle",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_space_gets_one_line_error_naming_file_and_key(tmp_path, case):
    text, key_path = BAD[case]
    assert f": {key_path}" in error_for(tmp_path, text)


def test_missing_space_lists_shipped_names():
    with pytest.raises(SpaceError) as caught:
        load_space("no_such_space")
    assert "no_such_space" in str(caught.value) and "dgl_quick" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_yaml_exponent_without_dot_is_a_number(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(variant().replace("low: 0.01", "low: 1e-3"))
    assert load_space(str(path)).params["lr"].hull.low == 1e-3
