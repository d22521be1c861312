"""A loaded search space: its searched dimensions, what Optuna samples, and command-line overrides.

tuner.config.space_file reads and checks a file into a `Space`; this module is what the search driver uses of it.
"""

from __future__ import annotations

import inspect
import json
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

from tuner.config.dimension import Dimension  # also named from here: searches pickled it under this module
from tuner.config.schema import (
    KEYS,
    Asha,
    Fifo,
    OptunaTPE,
    RandomSearch,
    Resources,
    TrialConfig,
    check_value,
    resolve,
)
from tuner.errors import ConfigError, SpaceError
from tuner.text import yaml_value

# trainer/model: one space is one trainer on one model. epochs: the trial's budget; ASHA decides how much of it a
# trial gets, so searching it would fight the scheduler.
NOT_SEARCHABLE = ("trainer", "model", "epochs")


def label(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def number_problem(value, minimum, strict: bool, integer: bool) -> str:
    kind, bound = "an integer" if integer else "a number", ">" if strict else ">="
    return f"must be {kind} {bound} {minimum:g}, got {yaml_value(value)}"


class SpaceProblems:
    """Where an error is found (a file, or the overrides of a space); every error names it and a key path."""

    def __init__(self, label: str):
        self.label = label

    def fail(self, path: str, what: str, allowed: str | None = None) -> NoReturn:
        message = f"{self.label}: {path}: {what}" + (f"; allowed: {allowed}" if allowed else "")
        raise SpaceError(" ".join(message.split("\n")))

    def mapping(self, value, path: str, allowed) -> dict:
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping, got {yaml_value(value)}")
        for key in value:
            if key not in allowed:
                self.fail(f"{path}.{key}" if path else str(key), "unknown key", ", ".join(allowed))
        return value

    def number(self, value, path: str, minimum: float, integer: bool = False):
        ok = isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)
        if not ok or value < minimum:
            self.fail(path, number_problem(value, minimum, False, integer))
        return value

    def value(self, key: str, value, path: str):
        try:
            return check_value(key, value, path)
        except ConfigError as error:
            raise SpaceError(f"{self.label}: {error}") from None


def config_values(optuna_params: dict) -> dict:
    """Optuna's parameter names -> config keys: a key with a distribution per condition is known to Optuna by one
    name per condition (`lr[optimizer=adamw]`), so that TPE models each as its own parameter."""
    return {name.split("[", 1)[0]: value for name, value in optuna_params.items()}


@dataclass(frozen=True)
class Space:
    name: str
    path: Path | None  # None: read from text, not from a file (a study's arm, a search's logged space)
    text: str  # the file's raw contents (logged to MLflow as an artifact)
    trainer: str
    model: str
    fixed: dict  # validated fixed values, incl. trainer and model
    params: dict[str, Dimension]  # parents before children
    scheduler: Asha | Fifo
    searcher: OptunaTPE | RandomSearch  # seed and points_to_evaluate filled in and checked
    num_samples: int
    max_concurrent: int | None
    resources: Resources  # per trial
    metric: str
    mode: str
    description: str = ""

    def base_config(self) -> TrialConfig:
        return resolve(self.fixed)

    def define_by_run(self, trial) -> None:
        """Optuna define-by-run space (also what Ray's OptunaSearch takes as `space`). Returns None: every
        value is suggested, and Ray collects the suggestions itself."""
        chosen: dict[str, object] = {}
        for param in self.params.values():  # parents come before their children
            branch = param.branch(chosen)
            if branch:
                chosen[param.name] = branch.suggest(trial, param.optuna_name(branch))

    def in_optuna_terms(self, values: dict) -> tuple[dict, dict]:
        """(Optuna's names -> values, Optuna's names -> distributions) of searched config values, e.g. a point to
        evaluate first or an earlier trial (a key with a distribution per condition: the one its parents pick)."""
        params, distributions = {}, {}
        for key, value in values.items():
            param = self.params.get(key)
            branch = (param.branch(values) or param.hull) if param else None
            name = param.optuna_name(branch) if param and branch else key
            params[name] = value
            if branch:
                distributions[name] = branch.distribution()
        return params, distributions

    def with_overrides(
        self,
        *,
        num_samples=None,
        max_epochs=None,
        train_subset=None,
        seed=None,
        cpus=None,
        gpus=None,
        max_concurrent=None,
    ) -> Space:
        """A copy with command-line overrides applied (None leaves a setting as the file has it)."""
        problems, fixed = SpaceProblems(f"{self.name}: override"), dict(self.fixed)
        for key, value in (("train_subset", train_subset), ("seed", seed)):
            if value is not None and key in self.params:
                problems.fail(key, f"'{key}' is searched in this space; it cannot also be fixed")
            if value is not None:
                fixed[key] = problems.value(key, value, key)
        update: dict[str, Any] = {"fixed": fixed, "scheduler": self.scheduler, "searcher": self.searcher}
        if num_samples is not None:
            update["num_samples"] = problems.number(num_samples, "num_samples", 1, integer=True)
        if max_concurrent is not None:
            update["max_concurrent"] = problems.number(max_concurrent, "max_concurrent", 1, integer=True)
        update["resources"] = self.resources.model_copy(
            update={
                key: problems.number(value, flag, 0)
                for key, flag, value in (("cpu", "cpus", cpus), ("gpu", "gpus", gpus))
                if value is not None
            }
        )
        if seed is not None:
            update["searcher"] = self.searcher.model_copy(update={"seed": fixed["seed"]})
        if max_epochs is not None:
            problems.number(max_epochs, "max_epochs", 1, integer=True)
            fixed["epochs"] = min(resolve(fixed).epochs, max_epochs)
            if self.scheduler.type == "asha":
                max_t = min(self.scheduler.max_t, max_epochs)
                update["scheduler"] = self.scheduler.model_copy(
                    update={"max_t": max_t, "grace_period": min(self.scheduler.grace_period, max_t)}
                )
        return replace(self, **update)

    def describe(self) -> str:
        lines = [f"space {self.name}" + (f"  ({label(self.path)})" if self.path else "")]
        lines += [f"  {self.description}"] if self.description else []
        config, width = self.base_config(), max(map(len, KEYS))
        lines.append("fixed:")
        lines += [f"  {key:<{width}} = {yaml_value(getattr(config, key))}" for key in self.fixed]
        defaults = [
            f"{key}={yaml_value(getattr(config, key))}"
            for key in KEYS
            if key not in self.fixed and key not in self.params
        ]
        lines.append(f"defaults (not set in the file): {', '.join(defaults) or '-'}")
        lines.append(f"search ({len(self.params)} params):")
        lines += [f"  {name:<{width}} {param.describe()}" for name, param in self.params.items()]
        lines.append("scheduler: " + " ".join(f"{k}={v}" for k, v in self.scheduler.model_dump().items()))
        points = self.searcher.points_to_evaluate or []
        lines.append(
            "searcher: "
            + " ".join(f"{k}={v}" for k, v in self.searcher.model_dump().items() if k != "points_to_evaluate")
            + f", {len(points)} point(s) to evaluate first"
        )
        lines += [f"  {json.dumps(point)}" for point in points]
        lines.append(
            f"samples: {self.num_samples}, max concurrent: {self.max_concurrent or 'unlimited'}, "
            f"per trial: cpu {yaml_value(self.resources.cpu)}, gpu {yaml_value(self.resources.gpu)}"
        )
        lines.append(f"objective: {self.mode} {self.metric}")
        return "\n".join(lines)


def make_sampler(space: Space):
    """The Optuna sampler the space's searcher names (pass it to Ray's OptunaSearch together with define_by_run)."""
    import optuna

    searcher = space.searcher
    if searcher.type == "random":
        return optuna.samplers.RandomSampler(seed=searcher.seed)
    # multivariate + group: TPE models the conditional (when:) params jointly within each group instead of
    # independently; constant_liar: concurrent trials don't all get proposed the same point.
    options = {
        "seed": searcher.seed,
        "n_startup_trials": searcher.n_startup_trials,
        "multivariate": True,
        "group": True,
        "constant_liar": True,
    }
    accepted = inspect.signature(optuna.samplers.TPESampler).parameters
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(**{k: v for k, v in options.items() if k in accepted})
