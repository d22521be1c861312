"""Reading the store: the searches and their trials, from the MLflow runs the search driver writes."""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tuner.config.schema import KEYS
from tuner.config.space_file import space_from_text
from tuner.errors import ConfigError, SpaceError
from tuner.ranking import final_score
from tuner.tracking.store import (
    MODEL,
    OUTCOME,
    PARENT,
    SEARCH_FILTER,
    STATUS,
    STUDY_RUN_ID,
    TRAINER,
    TRIAL_FILTER,
    TRIAL_ID,
    all_experiments,
    all_runs,
)


@dataclass
class Trial:
    run_id: str
    trial_id: str
    parent_run_id: str
    experiment: str
    trainer: str
    model: str
    outcome: str  # running | completed | stopped | diverged | failed
    params: dict  # the trial's flat config, as its config.json artifact holds it
    metrics: dict  # latest value of each metric: for per-epoch metrics, the last epoch logged
    start_ms: int
    end_ms: int | None
    histories: dict = field(default_factory=dict)  # metric -> [(epoch, value)], loaded for the best trials only

    @property
    def final_val_acc(self):
        """The last epoch's val_acc; None before the first evaluation, or when the trial diverged (the tracker
        skips NaN, so what MLflow holds is an earlier epoch's, from weights that are gone)."""
        return final_score(self.metrics.get("val_acc"), self.outcome)


@dataclass
class Search:
    run_id: str
    name: str
    experiment: str
    status: str  # dt.status: running | finished | interrupted
    searched: list  # the hyperparameters this search varied
    dimensions: dict = field(default_factory=dict)  # name -> Dimension, from the search's space.yaml
    trials: list = field(default_factory=list)
    study_run_id: str = ""  # the study this search is an arm of, if any


def read_artifact(client, run_id: str, name: str) -> str | None:
    """The text of a run's artifact, None if the run has none by that name."""
    with tempfile.TemporaryDirectory(prefix="dt-report-") as folder:
        try:
            return Path(client.download_artifacts(run_id, name, folder)).read_text()
        except Exception:  # MLflow raises different errors per store for a missing artifact
            return None


def logged_config(client, run_id: str) -> dict:
    """A trial's resolved config, exactly as the tracker wrote it (config.json); {} if it has none."""
    text = read_artifact(client, run_id, "config.json")
    return json.loads(text) if text else {}


def logged_space(client, run_id: str):
    """The Space of a search's space.yaml artifact; None if it has none or it no longer loads."""
    text = read_artifact(client, run_id, "space.yaml")
    if not text:
        return None
    try:
        return space_from_text(text, "space", f"run {run_id}: space.yaml")
    except (SpaceError, ConfigError):
        return None


def logged_dimensions(client, run_id: str) -> dict:
    """name -> Dimension of a search's space.yaml artifact; {} if it has none or it no longer loads."""
    space = logged_space(client, run_id)
    return space.params if space else {}


def metric_history(client, run_id: str, key: str) -> list:
    """[(epoch, value)] in epoch order; a step logged twice keeps its latest value; non-finite values dropped."""
    by_step = {}
    for m in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp)):
        by_step[m.step] = m.value
    return [(s, v) for s, v in sorted(by_step.items()) if math.isfinite(v)]


def _trial_from_run(client, run, experiment: str) -> Trial:
    tags = run.data.tags
    params = logged_config(client, run.info.run_id)
    status_outcome = {"RUNNING": "running", "FAILED": "failed", "KILLED": "failed"}.get(run.info.status, "completed")
    return Trial(
        run_id=run.info.run_id,
        trial_id=tags.get(TRIAL_ID) or run.info.run_name,
        parent_run_id=tags.get(PARENT, ""),
        experiment=experiment,
        trainer=tags.get(TRAINER) or str(params.get("trainer", "?")),
        model=tags.get(MODEL) or str(params.get("model", "?")),
        outcome=tags.get(OUTCOME) or status_outcome,
        params=params,
        metrics=dict(run.data.metrics),
        start_ms=run.info.start_time or 0,
        end_ms=run.info.end_time,
    )


def _searched_keys(parent, trials: list) -> list:
    """The keys a search varied: its best.* params; else the keys whose values differ between its trials."""
    keys = sorted(k[len("best.") :] for k in parent.data.params if k.startswith("best."))
    if keys or len(trials) < 2:
        return keys
    return sorted(k for k in KEYS if len({repr(t.params.get(k)) for t in trials}) > 1)


def load_searches(client, spaces: list | None = None) -> list:
    """Every search (with its trials) in the selected experiments; raises ConfigError for an unknown space."""
    experiments = {e.experiment_id: e.name for e in all_experiments(client)}
    parents = all_runs(client, list(experiments), SEARCH_FILTER)
    present = sorted({experiments[p.info.experiment_id] for p in parents})
    for name in spaces or []:
        if name not in present:
            raise ConfigError(
                f"--spaces: no searches in an experiment named '{name}'; present: {', '.join(present) or 'none'}"
            )
    selected = set(spaces or present)
    parents = [p for p in parents if experiments[p.info.experiment_id] in selected]
    children = all_runs(client, sorted({p.info.experiment_id for p in parents}), TRIAL_FILTER)
    trials_by_parent: dict[str, list[Trial]] = {}
    for run in children:
        trial = _trial_from_run(client, run, experiments[run.info.experiment_id])
        trials_by_parent.setdefault(trial.parent_run_id, []).append(trial)
    searches = []
    for p in sorted(parents, key=lambda p: (experiments[p.info.experiment_id], p.info.start_time or 0)):
        trials = sorted(trials_by_parent.get(p.info.run_id, []), key=lambda t: t.start_ms)
        dimensions = logged_dimensions(client, p.info.run_id)
        searches.append(
            Search(
                run_id=p.info.run_id,
                name=p.info.run_name,
                experiment=experiments[p.info.experiment_id],
                status=p.data.tags.get(STATUS, p.info.status.lower()),
                searched=list(dimensions) or _searched_keys(p, trials),
                trials=trials,
                dimensions=dimensions,
                study_run_id=p.data.tags.get(STUDY_RUN_ID, ""),
            )
        )
    return searches
