"""A searched hyperparameter: its key and its branches, each one distribution sampled under its own condition.

tuner.config.space_search builds them from a space file's `search:` section; tuner.config.space samples them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from tuner.text import yaml_value


def same(a, b) -> bool:
    # type-strict equality: YAML `true` must not match a choice value 1
    return type(a) is type(b) and a == b


def distinct(values) -> tuple:
    """`values` in order, each once (type-strict, as `same`)."""
    kept: list = []
    for value in values:
        if not any(same(value, k) for k in kept):
            kept.append(value)
    return tuple(kept)


@dataclass(frozen=True)
class Branch:
    """One distribution of a searched key, sampled when every parent in `when` (a choice key) has one of its values.

    A plain dataclass, not a pydantic model: tuner.config.space_search has checked every value against its key (which
    pydantic cannot), and a saved search pickles it, so its pickle is a plain `__dict__`."""

    type: str  # uniform | loguniform | int | choice
    # which of low/high/step or values is set depends on `type`; space_search has checked them against it
    low: Any = None
    high: Any = None
    values: Any = None
    step: Any = None
    log: bool = False
    when: dict = field(default_factory=dict)  # parent choice key -> the values under which this is sampled
    condition: str = ""  # of one of a key's distributions per condition, in its Optuna name: "[optimizer=adamw]"

    def holds(self, chosen: dict) -> bool:
        return all(
            parent in chosen and any(same(chosen[parent], v) for v in values) for parent, values in self.when.items()
        )

    def distribution(self):
        """The Optuna distribution this samples from (also how the report rebuilds a study)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.type == "choice":
            return CategoricalDistribution(list(self.values))
        if self.type == "int":
            return IntDistribution(self.low, self.high, step=self.step, log=self.log)
        return FloatDistribution(self.low, self.high, log=self.log)

    def suggest(self, trial, name: str):
        if self.type == "choice":
            return trial.suggest_categorical(name, list(self.values))
        if self.type == "int":
            return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def contains(self, value) -> bool:
        if self.type == "choice":
            return any(same(value, choice) for choice in self.values)
        if self.type == "int" and (not isinstance(value, int) or (value - self.low) % self.step):
            return False
        return self.low <= value <= self.high

    def describe(self) -> str:
        if self.type == "choice":
            text = f"choice [{', '.join(yaml_value(v) for v in self.values)}]"
        else:
            text = f"{self.type} [{yaml_value(self.low)}, {yaml_value(self.high)}]"
            text += f" step {self.step}" if self.type == "int" and self.step != 1 else ""
            text += " log" if self.type == "int" and self.log else ""
        for parent, values in self.when.items():
            text += f"  (only when {parent} in [{', '.join(yaml_value(v) for v in values)}])"
        return text


@dataclass(frozen=True)
class Dimension:
    """One searched hyperparameter: its key and its branches. A plain key has one branch; a key with a distribution
    per condition has one per condition (all of one type, on the same parents, exactly one holding for any choice of
    them), each known to Optuna by its own name, e.g. lr[optimizer=adamw]."""

    name: str  # the config key
    branches: tuple[Branch, ...]

    @property
    def per_condition(self) -> bool:
        return bool(self.branches[0].condition)

    @property
    def hull(self) -> Branch:
        """All branches as one distribution (what a report plots; a per-condition key's Optuna name without its
        condition), sampled when its parents are: each with every value a branch names."""
        first = self.branches[0]
        if len(self.branches) == 1 and not first.condition:
            return first
        return Branch(
            first.type,
            low=None if first.type == "choice" else min(b.low for b in self.branches),
            high=None if first.type == "choice" else max(b.high for b in self.branches),
            values=distinct(v for b in self.branches for v in b.values or ()) or None,
            step=(1 if len({b.step for b in self.branches}) > 1 else first.step) if first.type == "int" else None,
            log=first.log,
            when={parent: distinct(v for b in self.branches for v in b.when[parent]) for parent in first.when},
        )

    @property
    def when(self) -> dict:
        return self.hull.when

    def optuna_name(self, branch: Branch) -> str:
        return self.name + branch.condition

    def branch(self, chosen: dict) -> Branch | None:
        """The branch sampled given the values `chosen` so far, or None: not sampled under them."""
        return next((b for b in self.branches if b.holds(chosen)), None)

    def contains(self, value) -> bool:
        return any(b.contains(value) for b in self.branches)

    def describe(self) -> str:
        return " | ".join(b.describe() for b in self.branches)

    def __setstate__(self, state: dict) -> None:
        """Restore a Dimension pickled by a saved search, also one from before branches (its distribution in its own
        fields; a key per condition: branches of such Dimensions, its own fields their hull)."""
        if "type" in state:  # the old layout
            old = state.get("branches") or ()
            branch = Branch(**{k: state[k] for k in ("type", "low", "high", "values", "step", "log", "when")})
            branches = tuple(b.branches[0] for b in old) or (replace(branch, condition=state.get("condition", "")),)
            state = {"name": state["name"], "branches": branches}
        self.__dict__.update(state)
