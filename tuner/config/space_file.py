"""Search-space files: a YAML file -> a validated `Space` -> what Ray Tune and Optuna need.

The shape of a file is the pydantic model tuner.config.schema.SpaceFile (documented key by key in
search_spaces/example.yaml). This module adds what a schema cannot say: duplicate YAML keys, values that must fit
the config key they belong to, the `when:` graph (tuner/config/space_search.py), points inside their ranges. Everything
is checked before a search starts: a bad file raises SpaceError with one line `<file>: <key path>: <what is wrong>;
allowed: ...`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from tuner.config.dimension import same
from tuner.config.schema import (
    KEYS,
    Asha,
    Fifo,
    OptunaTPE,
    Resources,
    SpaceFile,
    TrialConfig,
    problem,
    resolve,
)
from tuner.config.space import Space, SpaceProblems, label
from tuner.config.space_search import dimensions
from tuner.config.yaml_file import find_file, parse_yaml, read_yaml, shipped
from tuner.text import yaml_value

SPACES_DIR = Path(__file__).resolve().parents[2] / "search_spaces"


def list_spaces() -> list[str]:
    return shipped(SPACES_DIR)


def find_space(name_or_path: str) -> Path:
    """A path to an existing file, or the name of a shipped space (search_spaces/<name>.yaml)."""
    return find_file(name_or_path, SPACES_DIR, "search space")


def load_space(name_or_path: str) -> Space:
    """Read and validate a space (a shipped name or a path). Raises SpaceError with a one-line message."""
    path = find_space(name_or_path)
    file = SpaceProblems(label(path))
    text, data = read_yaml(path, file)
    return _checked_space(file, data, text, path.stem, path)


def space_from_text(text: str, name: str, where: str) -> Space:
    """A space from its YAML text (a study's arm, a search's logged space.yaml), named `name` as a space is named for
    its file; an error names `where` as it would name the file."""
    file = SpaceProblems(where)
    return _checked_space(file, parse_yaml(text, file), text, name)


def _checked_space(file: SpaceProblems, data, text: str, name: str, path: Path | None = None) -> Space:
    if not isinstance(data, dict):
        file.fail("top level", f"must be a mapping, got {yaml_value(data)}", ", ".join(SpaceFile.model_fields))
    try:
        spec = SpaceFile.model_validate(data)
    except ValidationError as error:
        file.fail(*problem(error.errors()[0], SpaceFile))

    fixed = {
        "trainer": file.value("trainer", spec.trainer, "trainer"),
        "model": file.value("model", spec.model, "model"),
    }
    for key, value in file.mapping(_or(spec.fixed, {}), "fixed", KEYS).items():
        if key in ("trainer", "model"):
            file.fail(f"fixed.{key}", f"set {key} at the top level, not in fixed")
        fixed[key] = file.value(key, value, f"fixed.{key}")
    config = resolve(fixed)

    params = dimensions(file, spec.search, data["search"], fixed)
    metric, description = _or(spec.metric, "val_acc"), _or(spec.description, "")
    if not isinstance(metric, str) or not metric:
        file.fail(
            "metric", f"must be the name of a reported metric, got {yaml_value(metric)}", "a string, e.g. val_acc"
        )
    if not isinstance(description, str):
        file.fail("description", f"must be a string, got {yaml_value(description)}")
    return Space(
        name=name,
        path=path,
        text=text,
        trainer=fixed["trainer"],
        model=fixed["model"],
        fixed=fixed,
        params=params,
        scheduler=_scheduler(file, spec.scheduler or Fifo(), config),
        searcher=_searcher(file, spec.searcher or OptunaTPE(), params, config),
        num_samples=spec.num_samples,
        max_concurrent=spec.max_concurrent,
        resources=spec.resources or Resources(),
        metric=metric,
        mode=spec.mode or "max",
        description=" ".join(description.split()),
    )


def _or(value, default):
    # an absent key and an explicit `key:` (null) both mean the default
    return default if value is None else value


def _scheduler(file: SpaceProblems, spec, config: TrialConfig):
    if spec.type == "fifo":
        return spec
    max_t = _or(spec.max_t, config.epochs)
    if max_t > config.epochs:
        file.fail("scheduler.max_t", f"must be <= the trial's epoch budget, fixed.epochs={config.epochs} (got {max_t})")
    if spec.grace_period > max_t:
        file.fail("scheduler.grace_period", f"must be <= max_t={max_t} (got {spec.grace_period})")
    return Asha(max_t=max_t, grace_period=spec.grace_period, reduction_factor=spec.reduction_factor)


def _searcher(file: SpaceProblems, spec, params: dict, config: TrialConfig):
    seed = spec.seed if "seed" in spec.model_fields_set else config.seed  # an explicit null is an error
    checked = []
    for i, point in enumerate(_or(spec.points_to_evaluate, [])):
        path = f"searcher.points_to_evaluate[{i}]"
        point = {
            key: file.value(key, value, f"{path}.{key}")
            for key, value in file.mapping(point, path, list(params)).items()
        }
        for key, value in point.items():
            missing = [parent for parent in params[key].when if parent not in point]
            if params[key].per_condition and missing:
                file.fail(f"{path}.{key}", f"'{key}' has a distribution per {missing[0]}: set {missing[0]} too")
            # a plain key: its range whatever its parents; a key per condition: the range its parents pick, if any
            searched = params[key].branch(point) if params[key].per_condition else params[key].branches[0]
            if searched and not searched.contains(value):
                file.fail(f"{path}.{key}", f"{yaml_value(value)} is outside the searched range", searched.describe())
            for parent, values in params[key].when.items():
                if parent in point and not any(same(point[parent], v) for v in values):
                    file.fail(
                        f"{path}.{key}",
                        f"'{key}' is only sampled when {parent} in "
                        f"[{', '.join(map(yaml_value, values))}], "
                        f"but the point sets {parent}={yaml_value(point[parent])}",
                    )
        checked.append(point)
    return spec.model_copy(update={"seed": file.value("seed", seed, "searcher.seed"), "points_to_evaluate": checked})
