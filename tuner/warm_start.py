"""`--warm-start SEARCH`: a new search's sampler starts from what an earlier search of a compatible space learned.

The earlier search's Optuna study (its folder's optuna.db, tuner/optuna_storage.py) holds its completed and pruned
trials with their intermediate values. Each is copied into the new study with the new space's distributions
(Optuna's `create_trial` + `add_trials`, before Ray's OptunaSearch opens the study), so TPE models them as its own.
A trial is kept only if it fits the new space: every searched value it has lies in the new range, every value the
new space searches (when its condition holds) is there, and what it searched that the new space fixes equals the
fixed value. The `top` best completed configs can also be run first (points to evaluate).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import optuna

from tuner.errors import UserError
from tuner.optuna_storage import STUDY_FILE, storage_url
from tuner.search_folder import RECORD, SearchRecord

KEPT_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


class WarmStartError(UserError):
    """--warm-start names something that cannot seed this search; one line for the user."""


@dataclass
class WarmStart:
    source: str  # the earlier search's name
    trials: list = field(default_factory=list)  # FrozenTrials with the new space's distributions
    dropped: list = field(default_factory=list)  # one reason per trial left out
    top: list = field(default_factory=list)  # configs of the best completed trials, best first

    def summary(self) -> str:
        states = ", ".join(f"{sum(t.state == s for t in self.trials)} {s.name.lower()}" for s in KEPT_STATES)
        line = f"  warm start: {len(self.trials)} trials of {self.source} ({states})"
        if self.dropped:
            line += f"; {len(self.dropped)} left out (e.g. {self.dropped[0]})"
        best = "its best config runs" if len(self.top) == 1 else f"its best {len(self.top)} configs run"
        return line + (f"; {best} first" if self.top else "")


def _misfit(params: dict, space) -> str | None:
    """Why a trial's values do not fit `space`, or None."""
    fixed = space.base_config().model_dump()
    for key, value in params.items():
        if key in space.params and not space.params[key].contains(value):
            return f"{key}={value} outside the new range"
        if key not in space.params and fixed.get(key) != value:
            return f"{key}={value} where the new space fixes {fixed.get(key)}"
    for key, param in space.params.items():
        needed = all(params.get(parent) in values for parent, values in param.when.items())
        if needed and key not in params:
            return f"no value for {key}"
    return None


def load_warm_start(path: str, space, top: int = 0) -> WarmStart:
    """The trials of the search at `path` that fit `space`. Raises WarmStartError."""
    folder = Path(path).expanduser().resolve()
    try:
        record = SearchRecord.load(folder)
    except (OSError, ValueError, TypeError, KeyError):
        raise WarmStartError(f"--warm-start {folder}: not a search folder (no readable {RECORD})") from None
    if not (folder / STUDY_FILE).exists():
        raise WarmStartError(f"--warm-start {folder}: no {STUDY_FILE} (a search that kept its Optuna study in memory)")
    try:
        study = optuna.load_study(study_name=record.name, storage=storage_url(folder))
    except KeyError:
        raise WarmStartError(f"--warm-start {folder}/{STUDY_FILE}: no study named {record.name}") from None
    if study.direction.name.lower()[:3] != space.mode:
        raise WarmStartError(
            f"--warm-start {folder}: that search's objective is to {study.direction.name.lower()}; "
            f"this one's is {space.mode} {space.metric}"
        )
    warm = WarmStart(source=record.name)
    for old in study.get_trials(deepcopy=False, states=KEPT_STATES):
        reason = _misfit(old.params, space)
        if reason:
            warm.dropped.append(f"trial {old.number}: {reason}")
            continue
        searched = {k: v for k, v in old.params.items() if k in space.params}
        warm.trials.append(
            optuna.trial.create_trial(
                state=old.state,
                value=old.value if old.state == optuna.trial.TrialState.COMPLETE else None,
                params=searched,
                distributions={k: space.params[k].distribution() for k in searched},
                intermediate_values=dict(old.intermediate_values),
                user_attrs={"warm_start_from": record.name},
            )
        )
    completed = [t for t in warm.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best_first = sorted(completed, key=lambda t: t.value, reverse=space.mode == "max")
    warm.top = [dict(t.params) for t in best_first[:top]]
    return warm


def seed_study(storage, study_name: str, space, warm: WarmStart) -> None:
    """Create the new search's study with the earlier trials in it; Ray's OptunaSearch then loads it by name."""
    study = optuna.create_study(
        study_name=study_name,
        storage=storage,
        load_if_exists=True,
        direction="maximize" if space.mode == "max" else "minimize",
    )
    study.add_trials(warm.trials)


def new_search_study(folder: Path, study_name: str, space, warm_from: str | None = None, top: int = 0) -> tuple:
    """(the Optuna storage of a search that starts, the points to evaluate): the space's own points, after the best
    configs of the warm-start search when there is one."""
    from tuner.optuna_storage import fresh_study_storage

    storage = fresh_study_storage(folder, study_name)
    points = list(space.searcher.points_to_evaluate or [])
    if warm_from:
        warm = load_warm_start(warm_from, space, top)
        seed_study(storage, study_name, space, warm)
        points = warm.top + [p for p in points if p not in warm.top]  # a config already on the list runs once
    return storage, points
