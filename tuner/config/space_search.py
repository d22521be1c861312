"""The `search:` section of a space file: each key's distribution, or a distribution per condition, and the `when:`
conditions between them, checked into Dimensions and their Branches (tuner/config/dimension.py). Every error is one
line naming the key path."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

from tuner.config.dimension import Branch, Dimension
from tuner.config.schema import KEYS, TrialConfig
from tuner.config.space import NOT_SEARCHABLE, SpaceProblems
from tuner.text import yaml_value

# the distribution types a key's value type can take: float distributions for float keys, int for int keys
FITTING_TYPES: dict[object, tuple[str, ...]] = {
    float: ("uniform", "loguniform", "choice"),
    int: ("int", "choice"),
    int | None: ("int", "choice"),
}


def dimensions(file: SpaceProblems, search: dict, raw: dict, fixed: dict) -> dict:
    """key -> Dimension, parents before children (otherwise file order)."""
    if not file.mapping(raw, "search", KEYS):
        file.fail("search", "names no hyperparameter", "one or more keys of tuner.config.schema.TrialConfig")
    forms = {}  # key -> [(key path, its spec)]: one distribution, or one per condition (a list in the file)
    for key, entry in search.items():
        if key in NOT_SEARCHABLE:
            file.fail(f"search.{key}", f"'{key}' cannot be searched", "keys other than " + ", ".join(NOT_SEARCHABLE))
        if key in fixed:
            file.fail(f"search.{key}", f"'{key}' is also in fixed; a key is either fixed or searched")
        if isinstance(entry, list) and not entry:
            file.fail(f"search.{key}", "lists no distribution", "one distribution, or a list of them each with when:")
        forms[key] = [(f"search.{key}[{i}]", spec) for i, spec in enumerate(entry)] if isinstance(entry, list) else []
        forms[key] = forms[key] or [(f"search.{key}", entry)]
    per_condition = {key for key, entry in search.items() if isinstance(entry, list)}
    unconditioned = {key: _distributions(file, key, specs, key in per_condition) for key, specs in forms.items()}
    alone = {key: Dimension(key, tuple(branches)) for key, branches in unconditioned.items()}  # what a parent offers
    params = {}
    for key, specs in forms.items():  # conditions, now that every param is known
        branches = [
            _conditioned(file, alone, key, path, spec, branch)
            for (path, spec), branch in zip(specs, unconditioned[key])
        ]
        if key in per_condition:
            branches = _per_condition(file, alone, key, specs, branches)
        params[key] = Dimension(key, tuple(branches))
    ordered: dict[str, Dimension] = {}
    while len(ordered) < len(params):
        ready = [k for k, p in params.items() if k not in ordered and all(parent in ordered for parent in p.when)]
        if not ready:
            file.fail("search", "'when' conditions form a cycle: " + ", ".join(k for k in params if k not in ordered))
        ordered.update((k, params[k]) for k in ready)
    return ordered


def _distribution(file: SpaceProblems, key: str, path: str, spec) -> Branch:
    """One distribution of `key`, its values checked against the key (conditions aside)."""
    kind = spec.type
    allowed = FITTING_TYPES.get(TrialConfig.model_fields[key].annotation, ("choice",))
    if kind not in allowed:
        default = yaml_value(TrialConfig.model_fields[key].default)
        file.fail(f"{path}.type", f"'{kind}' does not fit '{key}' (default {default})", ", ".join(allowed))
    if kind == "choice":
        if not isinstance(spec.values, list) or not spec.values:
            file.fail(f"{path}.values", f"must be a non-empty list, got {yaml_value(spec.values)}")
        values = tuple(file.value(key, v, f"{path}.values[{i}]") for i, v in enumerate(spec.values))
        if len({json.dumps(v) for v in values}) < len(values):
            file.fail(f"{path}.values", "lists a value twice")
        return Branch(kind, values=values)
    low, high = (file.value(key, getattr(spec, end), f"{path}.{end}") for end in ("low", "high"))
    for end in ("low", "high"):
        if getattr(spec, end) is None:  # check_value lets null through for keys like num_blocks
            file.fail(f"{path}.{end}", "must be an integer, got null")
    step, log = getattr(spec, "step", 1), getattr(spec, "log", kind == "loguniform")
    if not low < high:
        file.fail(f"{path}.low", f"must be < high (got low={yaml_value(low)}, high={yaml_value(high)})")
    if log and low <= 0:
        file.fail(f"{path}.low", f"must be > 0 on a log scale (got {yaml_value(low)})")
    if kind == "int":
        if log and step != 1:
            file.fail(f"{path}.step", f"must be 1 with log: true (got {step})")
        if (high - low) % step:
            file.fail(f"{path}.high", f"high - low must be a multiple of step (got {low}, {high}, step {step})")
    return Branch(kind, low=low, high=high, step=step if kind == "int" else None, log=log)


def _distributions(file: SpaceProblems, key: str, specs: list, per_condition: bool) -> list[Branch]:
    """A key's distributions, conditions aside; one per condition must each have one and be of one type."""
    distributions = [_distribution(file, key, path, spec) for path, spec in specs]
    if not per_condition:
        return distributions
    for (path, spec), distribution in zip(specs, distributions):
        if not spec.when:
            file.fail(f"{path}.when", f"missing: each distribution in a list for '{key}' needs its own condition")
        if distribution.type != distributions[0].type:
            file.fail(
                f"{path}.type", f"must be {distributions[0].type} like {specs[0][0]} (one key, one kind of value)"
            )
    return distributions


def _conditioned(file: SpaceProblems, params: dict, key: str, path: str, spec, branch: Branch) -> Branch:
    """`branch` with the spec's `when:` checked: parents are other searched choice keys, values their choices."""
    when = file.mapping(spec.when if spec.when is not None else {}, f"{path}.when", [k for k in params if k != key])
    for parent, values in when.items():
        where, choices = f"{path}.when.{parent}", params[parent].hull.values
        if params[parent].hull.type != "choice":
            file.fail(
                where,
                f"'{parent}' is not a choice param",
                ", ".join(k for k, p in params.items() if p.hull.type == "choice" and k != key) or "none here",
            )
        values = tuple(file.value(parent, v, where) for v in (values if isinstance(values, list) else [values]))
        if not values:
            file.fail(where, "lists no value", ", ".join(map(yaml_value, choices)))
        for value in values:
            if not params[parent].contains(value):
                file.fail(
                    where, f"{yaml_value(value)} is not a choice of '{parent}'", ", ".join(map(yaml_value, choices))
                )
        branch = replace(branch, when={**branch.when, parent: values})
    return branch


def _per_condition(file: SpaceProblems, params: dict, key: str, specs: list, branches: list) -> list[Branch]:
    """A key's list of distributions, checked: each under its own `when:`, all of one type and on the same parents,
    exactly one holding for every combination of the parents' choices; each named by its condition."""
    (first_path, _), first = specs[0], branches[0]
    for (path, _), branch in zip(specs, branches):
        if set(branch.when) != set(first.when):
            file.fail(
                f"{path}.when",
                f"conditions on {', '.join(branch.when)}, {first_path} on {', '.join(first.when)}",
                "the same parent keys in every condition of a key",
            )
    parents = list(first.when)
    for combination in itertools.product(*(params[parent].hull.values for parent in parents)):
        chosen = dict(zip(parents, combination))
        holding = [path for (path, _), branch in zip(specs, branches) if branch.holds(chosen)]
        shown = ", ".join(f"{p}={yaml_value(v)}" for p, v in chosen.items())
        if not holding:
            file.fail(f"search.{key}", f"no distribution for {shown}", "a condition for every choice of its parents")
        if len(holding) > 1:
            file.fail(f"{holding[1]}.when", f"overlaps {holding[0]}.when: both hold for {shown}")
    return [_named(branch, parents) for branch in branches]


def _named(branch: Branch, parents: list) -> Branch:
    """A branch with its condition in its Optuna name, e.g. lr[optimizer=adamw]."""
    condition = ",".join(f"{p}={'|'.join(str(v) for v in branch.when[p])}" for p in parents)
    return replace(branch, condition=f"[{condition}]")
