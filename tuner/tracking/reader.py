"""Reading the store: the searches and their trials, from the MLflow runs the search driver writes."""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tuner.config.schema import KEYS
from tuner.config.space_file import load_space
from tuner.errors import ConfigError, SpaceError, one_line
from tuner.ranking import final_score
from tuner.tracking.locations import sqlite_path

DEFAULT_URI = "sqlite:///mlflow.db"
SEARCH_FILTER = "tags.`dt.role` = 'search'"
TRIAL_FILTER = "tags.`dt.role` = 'trial'"


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


def connect(uri: str):
    """An MlflowClient on `uri`, after one cheap request proves the store can be read. Raises ConfigError."""
    from mlflow.tracking import MlflowClient

    # after the import, which sets MLflow's own levels: schema migrations are logged at INFO, not for the reader
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # the report reads config.json per trial
    path = sqlite_path(uri)
    # MLflow would silently create an empty database; a missing file is almost always a wrong path
    if path and path != ":memory:" and not os.path.exists(path):
        raise ConfigError(f"--mlflow-uri {uri}: no such file '{path}' (run a search first, or point at its store)")
    try:
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)
    except Exception as e:  # any failure here is a bad URI or an unreachable store, reported as one line
        raise ConfigError(f"--mlflow-uri {uri}: cannot read the MLflow store ({one_line(e)})") from None
    return client


def _all_pages(fetch, **kwargs) -> list:
    items, token = [], None
    while True:
        page = fetch(**kwargs, page_token=token)
        items.extend(page)
        token = page.token
        if not token:
            return items


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
    with tempfile.TemporaryDirectory(prefix="dt-report-") as folder:
        (Path(folder) / "space.yaml").write_text(text)
        try:
            return load_space(str(Path(folder) / "space.yaml"))
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
        trial_id=tags.get("dt.trial_id") or run.info.run_name,
        parent_run_id=tags.get("mlflow.parentRunId", ""),
        experiment=experiment,
        trainer=tags.get("dt.trainer") or str(params.get("trainer", "?")),
        model=tags.get("dt.model") or str(params.get("model", "?")),
        outcome=tags.get("dt.outcome") or status_outcome,
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
    experiments = {e.experiment_id: e.name for e in _all_pages(client.search_experiments)}
    parents = (
        _all_pages(client.search_runs, experiment_ids=list(experiments), filter_string=SEARCH_FILTER)
        if experiments
        else []
    )
    present = sorted({experiments[p.info.experiment_id] for p in parents})
    for name in spaces or []:
        if name not in present:
            raise ConfigError(
                f"--spaces: no searches in an experiment named '{name}'; present: {', '.join(present) or 'none'}"
            )
    selected = set(spaces or present)
    parents = [p for p in parents if experiments[p.info.experiment_id] in selected]
    ids = sorted({p.info.experiment_id for p in parents})
    children = _all_pages(client.search_runs, experiment_ids=ids, filter_string=TRIAL_FILTER) if ids else []
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
                status=p.data.tags.get("dt.status", p.info.status.lower()),
                searched=list(dimensions) or _searched_keys(p, trials),
                trials=trials,
                dimensions=dimensions,
                study_run_id=p.data.tags.get("dt.study_run_id", ""),
            )
        )
    return searches
