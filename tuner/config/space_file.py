"""Search-space files: a YAML file -> a validated `Space` -> what Ray Tune and Optuna need.

The shape of a file is the pydantic model tuner.config.schema.SpaceFile (documented key by key in
search_spaces/example.yaml). This module adds what a schema cannot say: duplicate YAML keys, values that must fit
the config key they belong to, the `when:` graph (tuner/config/space_search.py), points inside their ranges. Everything
is checked before a search starts: a bad file raises SpaceError with one line `<file>: <key path>: <what is wrong>;
allowed: ...`.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from tuner.config.schema import (
    KEYS,
    SEARCH_FORMS,
    Asha,
    Fifo,
    OptunaTPE,
    Resources,
    SpaceFile,
    TrialConfig,
    fmt,
    resolve,
)
from tuner.config.space import Space, SpaceProblems, label, number_problem, same
from tuner.config.space_search import dimensions
from tuner.config.yaml_file import find_file, read_yaml, shipped

SPACES_DIR = Path(__file__).resolve().parents[2] / "search_spaces"
# sections in the order a reader checks them: of two mistakes, the first in this order is reported
CHECK_ORDER = (
    "trainer",
    "model",
    "fixed",
    "search",
    "scheduler",
    "searcher",
    "resources",
    "max_concurrent",
    "metric",
    "mode",
    "description",
    "num_samples",
)


def _shape_problem(file: SpaceProblems, error: ErrorDetails, data: dict):
    """One of pydantic's errors about the file's shape, as today's one line."""
    path, holder, node, union = _locate(data, error["loc"])
    kind, key = error["type"], path.rsplit(".", 1)[-1]
    if kind == "missing":
        file.fail(path, "required key is missing")
    if kind == "extra_forbidden":
        file.fail(path, "unknown key", ", ".join(holder.model_fields))
    if union is not None:  # a mapping whose 'type' picks its schema
        tags = ", ".join(typing.get_args(member.model_fields["type"].annotation)[0] for member in union)
        if kind == "union_tag_invalid":
            file.fail(f"{path}.type", f"unknown type {fmt(node['type'])}", tags)
        if path.startswith("search.") and not isinstance(node, dict):
            file.fail(path, f"must be a distribution {{type: ...}}, got {fmt(node)} (fixed values go under fixed)")
        got = "no 'type' key" if isinstance(node, dict) else fmt(node)
        file.fail(path, f"must be a mapping with a 'type' key, got {got}", tags)
    if kind == "list_type":
        file.fail(path, f"must be a list of mappings, got {fmt(node)}")
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        file.fail(path, f"must be a mapping, got {fmt(node)}")
    field = holder.model_fields[key]
    if kind == "literal_error":
        file.fail(path, f"got {fmt(node)}", ", ".join(a for t in _unwrap(field.annotation) for a in typing.get_args(t)))
    if field.annotation is bool:
        file.fail(path, f"must be true or false, got {fmt(node)}")
    low = next(m for m in field.metadata if hasattr(m, "ge") or hasattr(m, "gt"))
    integer = field.annotation in (int, int | None)
    file.fail(path, number_problem(node, getattr(low, "ge", getattr(low, "gt", 0)), hasattr(low, "gt"), integer))


def _unwrap(annotation) -> list:
    """The types an annotation allows, Annotated and None stripped; a discriminated union as its members."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    members = (
        typing.get_args(annotation)
        if typing.get_origin(annotation) in (typing.Union, type(int | None))
        else (annotation,)
    )
    result: list = []
    for member in members:
        while typing.get_origin(member) is typing.Annotated:
            member = typing.get_args(member)[0]
        if typing.get_origin(member) in (typing.Union, types.UnionType):
            result += typing.get_args(member)
        elif member is not type(None):
            result.append(member)
    return result


def _locate(data, loc: tuple):
    """pydantic's error location -> (key path as the user writes it, the model that holds the last key,
    the value found there, the members of the tagged union expected there or None)."""
    parts: list[str] = []
    holder, node, expected = SpaceFile, data, [SpaceFile]
    for part in loc:
        if part in SEARCH_FORMS:  # pydantic names the form of a search entry it tried; the user never wrote that
            expected = [t for t in expected if (typing.get_origin(t) is list) == (part == SEARCH_FORMS[1])]
            continue
        models = [t for t in expected if isinstance(t, type) and issubclass(t, BaseModel)]
        union = models if len(models) > 1 else None
        if (
            union
            and isinstance(part, str)
            and not (isinstance(node, dict) and part in node)
            and any(part in typing.get_args(m.model_fields["type"].annotation) for m in union)
        ):
            expected = [m for m in union if part in typing.get_args(m.model_fields["type"].annotation)]
            continue  # pydantic names the union member it tried; the user never wrote that
        if isinstance(part, int):
            parts[-1] += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            expected = [m for t in expected if typing.get_origin(t) is list for m in _unwrap(typing.get_args(t)[0])]
        elif models and part in models[0].model_fields:
            holder, parts = models[0], parts + [part]
            node = node.get(part) if isinstance(node, dict) else None
            expected = _unwrap(holder.model_fields[part].annotation)
        elif any(typing.get_origin(t) is dict for t in expected):
            parts.append(part)
            node = node.get(part) if isinstance(node, dict) else None
            expected = _unwrap(next(typing.get_args(t)[1] for t in expected if typing.get_origin(t) is dict))
        elif models:  # a key the model does not have
            holder, parts, node = models[0], parts + [part], None
        # else: a label pydantic gives a plain union's member (int | float): not part of the path
    models = [t for t in expected if isinstance(t, type) and issubclass(t, BaseModel)]
    return ".".join(parts), holder, node, (models if len(models) > 1 else None)


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
    if not isinstance(data, dict):
        file.fail("top level", f"must be a mapping, got {fmt(data)}", ", ".join(SpaceFile.model_fields))
    try:
        spec = SpaceFile.model_validate(data)
    except ValidationError as error:  # the keys the user mistyped first, as a reader checks a mapping
        errors = sorted(
            error.errors(),
            key=lambda e: (
                ("extra_forbidden", "missing").index(e["type"]) if e["type"] in ("extra_forbidden", "missing") else 2,
                CHECK_ORDER.index(e["loc"][0]) if e["loc"] and e["loc"][0] in CHECK_ORDER else 0,
            ),
        )
        _shape_problem(file, errors[0], data)

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
        file.fail("metric", f"must be the name of a reported metric, got {fmt(metric)}", "a string, e.g. val_acc")
    if not isinstance(description, str):
        file.fail("description", f"must be a string, got {fmt(description)}")
    return Space(
        name=path.stem,
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
            if params[key].branches and missing:
                file.fail(f"{path}.{key}", f"'{key}' has a distribution per {missing[0]}: set {missing[0]} too")
            searched = params[key].branch(point) if params[key].branches else params[key]
            if not searched.contains(value):
                file.fail(f"{path}.{key}", f"{fmt(value)} is outside the searched range", searched.describe())
            for parent, values in params[key].when.items():
                if parent in point and not any(same(point[parent], v) for v in values):
                    file.fail(
                        f"{path}.{key}",
                        f"'{key}' is only sampled when {parent} in "
                        f"[{', '.join(map(fmt, values))}], but the point sets {parent}={fmt(point[parent])}",
                    )
        checked.append(point)
    return spec.model_copy(update={"seed": file.value("seed", seed, "searcher.seed"), "points_to_evaluate": checked})
