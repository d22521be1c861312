"""`--warm-start SEARCH`: a new search's sampler starts from what an earlier search of a compatible space learned.

SEARCH is the earlier search's folder, or its MLflow parent run (`runs:/<run id>`, or the bare id) in the new
search's --mlflow-uri. The folder's Optuna study (its optuna.db, tuner/search/optuna_storage.py) holds the completed and
pruned trials with their intermediate values. The MLflow run holds the same in its child runs: each trial's config
(config.json), its objective per epoch (the intermediate values; the last one is a completed trial's value) and how
it ended (tag dt.outcome: completed -> COMPLETE, stopped -> PRUNED); the parent's space.yaml gives the objective.
Each trial is copied into the new study with the new space's distributions
(Optuna's `create_trial` + `add_trials`, before Ray's OptunaSearch opens the study), so TPE models them as its own.
A trial is kept only if it fits the new space: every searched value it has lies in the new range, every value the
new space searches (when its condition holds) is there, and what it searched that the new space fixes equals the
fixed value. The `top` best completed configs can also be run first (points to evaluate).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import optuna

from tuner.config.space import config_values
from tuner.errors import UserError, one_line
from tuner.search.folder import RECORD, SearchRecord
from tuner.search.optuna_storage import STUDY_FILE, fresh_study_storage, shown_url, storage_url
from tuner.text import fmt_value

KEPT_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
OUTCOME_STATES = {"completed": optuna.trial.TrialState.COMPLETE, "stopped": optuna.trial.TrialState.PRUNED}
RUN_PREFIX = "runs:/"
RUN_ID = re.compile(r"[0-9a-f]{32}")


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
        param = space.params.get(key)  # with a distribution per condition: the one this trial's values pick
        if param and not (param.branch(params) or param).contains(value):
            return f"{key}={fmt_value(value)} outside the new range"
        if key not in space.params and fixed.get(key) != value:
            return f"{key}={fmt_value(value)} where the new space fixes {fmt_value(fixed.get(key))}"
    for key, param in space.params.items():
        needed = all(params.get(parent) in values for parent, values in param.when.items())
        if needed and key not in params:
            return f"no value for {key}"
    return None


@dataclass
class EarlierTrial:
    label: str  # how the notices name it: `trial 3` (Optuna's number) or `#4` (its MLflow run name)
    state: optuna.trial.TrialState  # COMPLETE or PRUNED
    value: float | None  # the objective of a COMPLETE trial
    params: dict  # the values it searched
    intermediate: dict  # epoch -> objective


def run_id_of(source: str) -> str | None:
    """The MLflow run id --warm-start names (`runs:/<id>`, or a bare 32-hex id that is no folder); None: a folder."""
    if source.startswith(RUN_PREFIX):
        return source[len(RUN_PREFIX) :].strip("/")
    return source if RUN_ID.fullmatch(source) and not Path(source).exists() else None


def _from_folder(source: str) -> tuple[str, str, str | None, list]:
    """(search name, mode, metric or None when unknown, its trials) of a search folder's Optuna study."""
    folder = Path(source).expanduser().resolve()
    try:
        record = SearchRecord.load(folder)
    except (OSError, ValueError, TypeError, KeyError):
        raise WarmStartError(f"--warm-start {folder}: not a search folder (no readable {RECORD})") from None
    url = record.settings.optuna_storage
    if not url and not (folder / STUDY_FILE).exists():
        raise WarmStartError(f"--warm-start {folder}: no {STUDY_FILE} (a search that kept its Optuna study in memory)")
    try:
        study = optuna.load_study(study_name=record.name, storage=storage_url(folder, url))
    except KeyError:
        raise WarmStartError(
            f"--warm-start {folder}: no study named {record.name} in {shown_url(storage_url(folder, url))}"
        ) from None
    except Exception as error:  # the database server it used cannot be reached now
        raise WarmStartError(f"--warm-start {folder}: its Optuna study cannot be read ({one_line(error)})") from None
    trials = [
        EarlierTrial(f"trial {t.number}", t.state, t.value, config_values(t.params), dict(t.intermediate_values))
        for t in study.get_trials(deepcopy=False, states=KEPT_STATES)
    ]
    return record.name, study.direction.name.lower()[:3], None, trials


def _from_mlflow(run_id: str, tracking_uri: str) -> tuple[str, str, str | None, list]:
    """The same, from a search's MLflow parent run and its trial runs."""
    from tuner.tracking.reader import logged_config, logged_space, metric_history
    from tuner.tracking.store import OUTCOME, ROLE, Role, child_runs, connect

    try:
        client = connect(tracking_uri)
        parent = client.get_run(run_id)
    except Exception as error:  # a bad store (ConfigError) or no such run (MLflow's own errors), in one line
        raise WarmStartError(
            f"--warm-start {RUN_PREFIX}{run_id}: not readable in {tracking_uri} ({one_line(error)})"
        ) from None
    earlier = logged_space(client, run_id) if parent.data.tags.get(ROLE) == Role.SEARCH else None
    if earlier is None:
        raise WarmStartError(
            f"--warm-start {RUN_PREFIX}{run_id}: not a search's MLflow run (no dt.role=search tag "
            f"and loadable space.yaml)"
        )
    children = child_runs(client, run_id, order_by=["attributes.start_time ASC"])
    trials = []
    for run in children:
        state = OUTCOME_STATES.get(run.data.tags.get(OUTCOME))
        history = dict(metric_history(client, run.info.run_id, earlier.metric))
        if state is None or not history:
            continue
        config = logged_config(client, run.info.run_id)
        params = {
            key: config[key]
            for key, dimension in earlier.params.items()
            if key in config and all(config.get(above) in values for above, values in dimension.when.items())
        }
        value = history[max(history)] if state == optuna.trial.TrialState.COMPLETE else None
        trials.append(EarlierTrial(run.info.run_name.split(" ")[0], state, value, params, history))
    return parent.info.run_name, earlier.mode, earlier.metric, trials


def load_warm_start(source: str, space, top: int = 0, tracking_uri: str = "") -> WarmStart:
    """The trials of the search `source` names (a folder, or an MLflow run in `tracking_uri`) that fit `space`.
    Raises WarmStartError."""
    run_id = run_id_of(source)
    name, mode, metric, earlier = _from_mlflow(run_id, tracking_uri) if run_id else _from_folder(source)
    if mode != space.mode or metric not in (None, space.metric):
        raise WarmStartError(
            f"--warm-start {source}: that search's objective is to {mode} {metric or 'its metric'}; "
            f"this one's is {space.mode} {space.metric}"
        )
    warm, configs = WarmStart(source=name), []  # configs: the kept trials' searched values, in config keys
    for old in earlier:
        reason = _misfit(old.params, space)
        if reason:
            warm.dropped.append(f"{old.label}: {reason}")
            continue
        searched = {k: v for k, v in old.params.items() if k in space.params}
        params, distributions = space.in_optuna_terms(searched)
        trial = optuna.trial.create_trial(
            state=old.state,
            value=old.value if old.state == optuna.trial.TrialState.COMPLETE else None,
            params=params,
            distributions=distributions,
            intermediate_values=old.intermediate,
            user_attrs={"warm_start_from": name},
        )
        warm.trials.append(trial)
        configs.append(searched)
    completed = [(t, c) for t, c in zip(warm.trials, configs) if t.state == optuna.trial.TrialState.COMPLETE]
    best_first = sorted(completed, key=lambda pair: pair[0].value, reverse=space.mode == "max")
    warm.top = [config for _, config in best_first[:top]]
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


def warm_start_of(space, settings) -> WarmStart | None:
    """The warm start a search's settings (SearchSettings) ask for, read from the earlier search; None without one.
    Raises WarmStartError."""
    if not settings.warm_start:
        return None
    return load_warm_start(settings.warm_start, space, settings.warm_start_top, settings.mlflow_uri)


def new_search_study(folder: Path, study_name: str, space, settings, warm: WarmStart | None = None) -> tuple:
    """(the Optuna storage of a search that starts, the points to evaluate): the space's own points, after the best
    configs of the warm start when there is one. settings: the search's SearchSettings; warm: its warm start when
    already read (the command reads it to show the plan), else read here."""
    storage = fresh_study_storage(folder, study_name, settings.optuna_storage)
    points = list(space.searcher.points_to_evaluate or [])
    warm = warm or warm_start_of(space, settings)
    if warm:
        seed_study(storage, study_name, space, warm)
        points = warm.top + [p for p in points if p not in warm.top]  # a config already on the list runs once
    return storage, points
