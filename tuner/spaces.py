"""Search spaces: a YAML file -> a validated `Space` -> what Ray Tune and Optuna need.

The schema is documented, key by key, in search_spaces/example.yaml. Everything is checked before a
search starts: a bad file raises SpaceError with one line `<file>: <key path>: <what is wrong>; allowed: ...`.
Values are checked with tuner.config.check_value, so a space can only describe configs a trainer accepts.
"""

from __future__ import annotations

import copy
import inspect
import json
import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from tuner.config import DEFAULTS, ConfigError, check_value, resolve

SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"

TOP_KEYS = ("description", "trainer", "model", "fixed", "search", "scheduler", "searcher", "num_samples",
            "max_concurrent", "resources", "metric", "mode")
REQUIRED = ("trainer", "model", "search", "num_samples")
PARAM_KEYS = {  # distribution type -> the keys it takes ('type' and 'when' always allowed)
    "uniform": ("low", "high"), "loguniform": ("low", "high"), "int": ("low", "high", "step", "log"),
    "choice": ("values",),
}
SCHEDULER_KEYS = {"asha": ("max_t", "grace_period", "reduction_factor"), "fifo": ()}
SEARCHER_KEYS = {"optuna_tpe": ("seed", "n_startup_trials", "points_to_evaluate"),
                 "random": ("seed", "points_to_evaluate")}
# trainer/model: one space is one trainer on one model. epochs: the trial's budget; ASHA decides how much of it a
# trial gets, so searching it would fight the scheduler.
NOT_SEARCHABLE = ("trainer", "model", "epochs")


class SpaceError(ConfigError):
    """A bad search space; the message is one line naming the file and the key."""


def _fmt(value) -> str:
    """A value as YAML would show it (null, true, "text", 1e-05); a container by its kind."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:g}" if isinstance(value, float) else str(value)
    if isinstance(value, (list, dict)):
        return ("a list" if value else "an empty list") if isinstance(value, list) else "a mapping"
    return json.dumps(value) if value is None or isinstance(value, (str, bool)) else type(value).__name__


def _same(a, b) -> bool:
    # type-strict equality: YAML `true` must not match a choice value 1
    return type(a) is type(b) and a == b


class _File:
    """The file being read; every error names it and a key path."""

    def __init__(self, label: str):
        self.label = label

    def fail(self, path: str, what: str, allowed: str | None = None):
        message = f"{self.label}: {path}: {what}" + (f"; allowed: {allowed}" if allowed else "")
        raise SpaceError(" ".join(message.split("\n")))

    def mapping(self, value, path: str, allowed, required=()) -> dict:
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping, got {_fmt(value)}")
        for key in value:
            if key not in allowed:
                self.fail(f"{path}.{key}" if path else str(key), "unknown key", ", ".join(allowed))
        for key in required:
            if key not in value:
                self.fail(f"{path}.{key}" if path else key, "required key is missing")
        return value

    def number(self, value, path: str, minimum: float, strict: bool = False, integer: bool = False):
        ok = isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)
        if not ok or value < minimum or (strict and value == minimum):
            what = "an integer" if integer else "a number"
            self.fail(path, f"must be {what} {'>' if strict else '>='} {minimum:g}, got {_fmt(value)}")
        return value

    def value(self, key: str, value, path: str):
        try:
            return check_value(key, value)
        except ConfigError as error:
            self.fail(path, str(error))

    def typed(self, spec, path: str, keys_by_type: dict, extra=()) -> str:
        """A mapping whose 'type' names one of keys_by_type; its other keys must be ones that type takes."""
        if not isinstance(spec, dict) or "type" not in spec:
            got = "no 'type' key" if isinstance(spec, dict) else _fmt(spec)
            self.fail(path, f"must be a mapping with a 'type' key, got {got}", ", ".join(keys_by_type))
        kind = spec["type"]
        if not isinstance(kind, str) or kind not in keys_by_type:
            self.fail(f"{path}.type", f"unknown type {_fmt(kind)}", ", ".join(keys_by_type))
        self.mapping(spec, path, ("type", *keys_by_type[kind], *extra))
        return kind


class _Loader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (YAML silently keeps the last) and reads 1e-5 as a number
    (YAML 1.1 reads it as text: only 1.0e-5 is a float)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key '{key_node.value}'", key_node.start_mark)
                seen.add(key_node.value)
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter. `when`: parent choice param -> the values under which this one is sampled."""
    name: str
    type: str                      # uniform | loguniform | int | choice
    low: float | int | None = None
    high: float | int | None = None
    values: tuple | None = None
    step: int | None = None
    log: bool = False
    when: dict = field(default_factory=dict)

    def suggest(self, trial):
        if self.type == "choice":
            return trial.suggest_categorical(self.name, list(self.values))
        if self.type == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def contains(self, value) -> bool:
        if self.type == "choice":
            return any(_same(value, choice) for choice in self.values)
        if self.type == "int" and (not isinstance(value, int) or (value - self.low) % self.step):
            return False
        return self.low <= value <= self.high

    def describe(self) -> str:
        if self.type == "choice":
            text = f"choice [{', '.join(_fmt(v) for v in self.values)}]"
        else:
            text = f"{self.type} [{_fmt(self.low)}, {_fmt(self.high)}]"
            text += (f" step {self.step}" if self.type == "int" and self.step != 1 else "")
            text += (" log" if self.type == "int" and self.log else "")
        for parent, values in self.when.items():
            text += f"  (only when {parent} in [{', '.join(_fmt(v) for v in values)}])"
        return text


@dataclass
class Space:
    name: str
    path: Path
    text: str                      # the file's raw contents (logged to MLflow as an artifact)
    trainer: str
    model: str
    fixed: dict                    # validated fixed values, incl. trainer and model
    params: dict                   # name -> Param, parents before children
    scheduler: dict                # {type: fifo} or {type: asha, max_t, grace_period, reduction_factor}
    searcher: dict                 # {type, seed, points_to_evaluate[, n_startup_trials]}
    num_samples: int
    max_concurrent: int | None
    resources: dict                # {cpu, gpu} per trial
    metric: str
    mode: str
    description: str = ""

    def base_config(self) -> dict:
        return resolve(self.fixed)

    def define_by_run(self, trial) -> None:
        """Optuna define-by-run space (also what Ray's OptunaSearch takes as `space`). Returns None: every
        value is suggested, and Ray collects the suggestions itself."""
        chosen = {}
        for param in self.params.values():  # parents come before their children
            if all(parent in chosen and any(_same(chosen[parent], v) for v in values)
                   for parent, values in param.when.items()):
                chosen[param.name] = param.suggest(trial)

    def with_overrides(self, *, num_samples=None, max_epochs=None, train_subset=None, seed=None, cpus=None,
                       gpus=None, max_concurrent=None) -> Space:
        """A copy with command-line overrides applied (None leaves a setting as the file has it)."""
        space, file = copy.deepcopy(self), _File(f"{self.name}: override")
        for key, value in (("train_subset", train_subset), ("seed", seed)):
            if value is not None and key in self.params:
                file.fail(key, f"'{key}' is searched in this space; it cannot also be fixed")
            if value is not None:
                space.fixed[key] = file.value(key, value, key)
        if num_samples is not None:
            space.num_samples = file.number(num_samples, "num_samples", 1, integer=True)
        if max_concurrent is not None:
            space.max_concurrent = file.number(max_concurrent, "max_concurrent", 1, integer=True)
        if cpus is not None:
            space.resources["cpu"] = file.number(cpus, "cpus", 0)
        if gpus is not None:
            space.resources["gpu"] = file.number(gpus, "gpus", 0)
        if seed is not None:
            space.searcher["seed"] = space.fixed["seed"]
        if max_epochs is not None:
            file.number(max_epochs, "max_epochs", 1, integer=True)
            space.fixed["epochs"] = min(space.base_config()["epochs"], max_epochs)
            if space.scheduler["type"] == "asha":
                space.scheduler["max_t"] = min(space.scheduler["max_t"], max_epochs)
                space.scheduler["grace_period"] = min(space.scheduler["grace_period"], space.scheduler["max_t"])
        return space

    def describe(self) -> str:
        lines = [f"space {self.name}  ({_label(self.path)})"] + ([f"  {self.description}"] if self.description else [])
        config, width = self.base_config(), max(map(len, DEFAULTS))
        lines.append("fixed:")
        lines += [f"  {key:<{width}} = {_fmt(config[key])}" for key in self.fixed]
        defaults = [f"{key}={_fmt(config[key])}" for key in config if key not in self.fixed and key not in self.params]
        lines.append(f"defaults (not set in the file): {', '.join(defaults) or '-'}")
        lines.append(f"search ({len(self.params)} params):")
        lines += [f"  {name:<{width}} {param.describe()}" for name, param in self.params.items()]
        lines.append("scheduler: " + " ".join(f"{k}={v}" for k, v in self.scheduler.items()))
        points = self.searcher["points_to_evaluate"]
        lines.append("searcher: " + " ".join(f"{k}={v}" for k, v in self.searcher.items() if k != "points_to_evaluate")
                     + f", {len(points)} point(s) to evaluate first")
        lines += [f"  {json.dumps(point)}" for point in points]
        lines.append(f"samples: {self.num_samples}, max concurrent: {self.max_concurrent or 'unlimited'}, "
                     f"per trial: cpu {_fmt(self.resources['cpu'])}, gpu {_fmt(self.resources['gpu'])}")
        lines.append(f"objective: {self.mode} {self.metric}")
        return "\n".join(lines)


def list_spaces() -> list[str]:
    return sorted(path.stem for path in SPACES_DIR.glob("*.yaml"))


def find_space(name_or_path: str) -> Path:
    """A path to an existing file, or the name of a shipped space (search_spaces/<name>.yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.name == name_or_path and (SPACES_DIR / f"{name_or_path}.yaml").is_file():
        return SPACES_DIR / f"{name_or_path}.yaml"
    raise SpaceError(f"{name_or_path}: no such search space file or name; allowed: a YAML file path or one of "
                     f"{', '.join(list_spaces())}")


def _label(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def load_space(name_or_path: str) -> Space:
    """Read and validate a space (a shipped name or a path). Raises SpaceError with a one-line message."""
    path = find_space(name_or_path)
    file = _File(_label(path))
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        file.fail(f"line {mark.line + 1}" if mark else "file", f"YAML syntax error: {error.problem}")
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        file.fail("file", f"cannot be read: {error}")
    if not isinstance(data, dict):
        file.fail("top level", f"must be a mapping, got {_fmt(data)}", ", ".join(TOP_KEYS))
    file.mapping(data, "", TOP_KEYS, REQUIRED)

    fixed = {"trainer": file.value("trainer", data["trainer"], "trainer"),
             "model": file.value("model", data["model"], "model")}
    for key, value in file.mapping(_or(data, "fixed", {}), "fixed", list(DEFAULTS)).items():
        if key in ("trainer", "model"):
            file.fail(f"fixed.{key}", f"set {key} at the top level, not in fixed")
        fixed[key] = file.value(key, value, f"fixed.{key}")
    config = resolve(fixed)

    params = _read_params(file, data["search"], fixed)
    scheduler = _read_scheduler(file, _or(data, "scheduler", {"type": "fifo"}), config["epochs"])
    searcher = _read_searcher(file, _or(data, "searcher", {"type": "optuna_tpe"}), params, config["seed"])

    resources = file.mapping(_or(data, "resources", {}), "resources", ("cpu", "gpu"))
    resources = {key: file.number(resources.get(key, default), f"resources.{key}", 0)
                 for key, default in (("cpu", 1), ("gpu", 0))}
    max_concurrent = data.get("max_concurrent")
    if max_concurrent is not None:
        file.number(max_concurrent, "max_concurrent", 1, integer=True)
    metric, mode, description = _or(data, "metric", "val_acc"), _or(data, "mode", "max"), _or(data, "description", "")
    if not isinstance(metric, str) or not metric:
        file.fail("metric", f"must be the name of a reported metric, got {_fmt(metric)}", "a string, e.g. val_acc")
    if mode not in ("min", "max"):
        file.fail("mode", f"got {_fmt(mode)}", "min, max")
    if not isinstance(description, str):
        file.fail("description", f"must be a string, got {_fmt(description)}")
    return Space(name=path.stem, path=path, text=text, trainer=fixed["trainer"], model=fixed["model"], fixed=fixed,
                 params=params, scheduler=scheduler, searcher=searcher,
                 num_samples=file.number(data["num_samples"], "num_samples", 1, integer=True),
                 max_concurrent=max_concurrent, resources=resources, metric=metric, mode=mode,
                 description=" ".join(description.split()))


def _or(data: dict, key: str, default):
    # an absent key and an explicit `key:` (null) both mean the default
    return default if data.get(key) is None else data[key]


def _read_params(file: _File, search, fixed: dict) -> dict:
    if not file.mapping(search, "search", list(DEFAULTS)):
        file.fail("search", "names no hyperparameter", "one or more keys of tuner.config.DEFAULTS")
    params = {}
    for key, spec in search.items():
        path, default = f"search.{key}", DEFAULTS[key]
        if key in NOT_SEARCHABLE:
            file.fail(path, f"'{key}' cannot be searched", "keys other than " + ", ".join(NOT_SEARCHABLE))
        if key in fixed:
            file.fail(path, f"'{key}' is also in fixed; a key is either fixed or searched")
        if not isinstance(spec, dict):
            file.fail(path, f"must be a distribution {{type: ...}}, got {_fmt(spec)} (fixed values go under fixed)")
        kind = file.typed(spec, path, PARAM_KEYS, extra=("when",))
        for required in PARAM_KEYS[kind][:2]:
            if required not in spec:
                file.fail(f"{path}.{required}", "required key is missing")
        # a sampled value must pass check_value: float distributions for float keys, int for int keys
        allowed = {float: ("uniform", "loguniform", "choice"), int: ("int", "choice"),
                   type(None): ("int", "choice")}.get(type(default), ("choice",))
        if kind not in allowed:
            file.fail(f"{path}.type", f"'{kind}' does not fit '{key}' (default {_fmt(default)})", ", ".join(allowed))
        if kind == "choice":
            values = spec["values"]
            if not isinstance(values, list) or not values:
                file.fail(f"{path}.values", f"must be a non-empty list, got {_fmt(values)}")
            values = tuple(file.value(key, v, f"{path}.values[{i}]") for i, v in enumerate(values))
            if len({json.dumps(v) for v in values}) < len(values):
                file.fail(f"{path}.values", "lists a value twice")
            params[key] = Param(key, kind, values=values)
            continue
        low, high = (file.value(key, spec[end], f"{path}.{end}") for end in ("low", "high"))
        for end in ("low", "high"):
            if spec[end] is None:  # check_value lets null through for keys like num_blocks
                file.fail(f"{path}.{end}", "must be an integer, got null")
        step, log = spec.get("step", 1), spec.get("log", kind == "loguniform")
        if not isinstance(log, bool):
            file.fail(f"{path}.log", f"must be true or false, got {_fmt(log)}")
        if not low < high:
            file.fail(f"{path}.low", f"must be < high (got low={_fmt(low)}, high={_fmt(high)})")
        if log and low <= 0:
            file.fail(f"{path}.low", f"must be > 0 on a log scale (got {_fmt(low)})")
        if kind == "int":
            file.number(step, f"{path}.step", 1, integer=True)
            if log and step != 1:
                file.fail(f"{path}.step", f"must be 1 with log: true (got {step})")
            if (high - low) % step:
                file.fail(f"{path}.high", f"high - low must be a multiple of step (got {low}, {high}, step {step})")
        params[key] = Param(key, kind, low=low, high=high, step=step if kind == "int" else None, log=log)

    for key, spec in search.items():  # conditions, now that every param is known
        when = file.mapping(_or(spec, "when", {}), f"search.{key}.when", [k for k in params if k != key])
        for parent, values in when.items():
            path, choices = f"search.{key}.when.{parent}", params[parent].values
            if params[parent].type != "choice":
                file.fail(path, f"'{parent}' is not a choice param",
                          ", ".join(k for k, p in params.items() if p.type == "choice" and k != key) or "none here")
            values = tuple(file.value(parent, v, path) for v in (values if isinstance(values, list) else [values]))
            if not values:
                file.fail(path, "lists no value", ", ".join(map(_fmt, choices)))
            for value in values:
                if not params[parent].contains(value):
                    file.fail(path, f"{_fmt(value)} is not a choice of '{parent}'", ", ".join(map(_fmt, choices)))
            params[key] = replace(params[key], when={**params[key].when, parent: values})
    ordered = {}  # parents before children, otherwise file order
    while len(ordered) < len(params):
        ready = [k for k, p in params.items() if k not in ordered and all(parent in ordered for parent in p.when)]
        if not ready:
            file.fail("search", "'when' conditions form a cycle: " + ", ".join(k for k in params if k not in ordered))
        ordered.update((k, params[k]) for k in ready)
    return ordered


def _read_scheduler(file: _File, spec, epochs: int) -> dict:
    if file.typed(spec, "scheduler", SCHEDULER_KEYS) == "fifo":
        return {"type": "fifo"}
    max_t = file.number(spec.get("max_t", epochs), "scheduler.max_t", 1, integer=True)
    if max_t > epochs:
        file.fail("scheduler.max_t", f"must be <= the trial's epoch budget, fixed.epochs={epochs} (got {max_t})")
    grace = file.number(spec.get("grace_period", 1), "scheduler.grace_period", 1, integer=True)
    if grace > max_t:
        file.fail("scheduler.grace_period", f"must be <= max_t={max_t} (got {grace})")
    factor = file.number(spec.get("reduction_factor", 4), "scheduler.reduction_factor", 1, strict=True)
    return {"type": "asha", "max_t": max_t, "grace_period": grace, "reduction_factor": factor}


def _read_searcher(file: _File, spec, params: dict, seed: int) -> dict:
    kind = file.typed(spec, "searcher", SEARCHER_KEYS)
    searcher = {"type": kind, "seed": file.value("seed", spec.get("seed", seed), "searcher.seed")}
    if kind == "optuna_tpe":
        searcher["n_startup_trials"] = file.number(spec.get("n_startup_trials", 10), "searcher.n_startup_trials", 0,
                                                   integer=True)
    points = _or(spec, "points_to_evaluate", [])
    if not isinstance(points, list):
        file.fail("searcher.points_to_evaluate", f"must be a list of mappings, got {_fmt(points)}")
    checked = []
    for i, point in enumerate(points):
        path = f"searcher.points_to_evaluate[{i}]"
        point = {key: file.value(key, value, f"{path}.{key}")
                 for key, value in file.mapping(point, path, list(params)).items()}
        for key, value in point.items():
            if not params[key].contains(value):
                file.fail(f"{path}.{key}", f"{_fmt(value)} is outside the searched range", params[key].describe())
            for parent, values in params[key].when.items():
                if parent in point and not any(_same(point[parent], v) for v in values):
                    file.fail(f"{path}.{key}", f"'{key}' is only sampled when {parent} in "
                              f"[{', '.join(map(_fmt, values))}], but the point sets {parent}={_fmt(point[parent])}")
        checked.append(point)
    searcher["points_to_evaluate"] = checked
    return searcher


def make_sampler(space: Space):
    """The Optuna sampler the space's searcher names (pass it to Ray's OptunaSearch together with define_by_run)."""
    import optuna

    searcher = space.searcher
    if searcher["type"] == "random":
        return optuna.samplers.RandomSampler(seed=searcher["seed"])
    # multivariate + group: TPE models the conditional (when:) params jointly within each group instead of
    # independently; constant_liar: concurrent trials don't all get proposed the same point.
    options = {"seed": searcher["seed"], "n_startup_trials": searcher["n_startup_trials"],
               "multivariate": True, "group": True, "constant_liar": True}
    accepted = inspect.signature(optuna.samplers.TPESampler).parameters
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(**{k: v for k, v in options.items() if k in accepted})
