"""The MLflow tracking store as this project uses it: the `dt.*` tags on its runs and the values of `dt.role`, the
filters that find them, queries that read every page, the default store and where a SQLite store is, and connecting
to a store with MLflow's HTTP retries turned down. The layout the tags make is in README's MLflow section.

MLflow is imported only where a client is made, so a command that stops before (a dry run, a bad flag) never loads it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from tuner.errors import ConfigError, one_line

DEFAULT_URI = "sqlite:///mlflow.db"
SQLITE = "sqlite:///"
PAGE_SIZE = 1000  # runs (experiments) per request; MLflow answers a page at a time, with a token for the next

# the tags the project writes (MLflow's own nesting tag first)
PARENT = "mlflow.parentRunId"
ROLE = "dt.role"  # what a run is: one of Role's values
STATUS = "dt.status"  # of a search's or a study's run: running | finished | interrupted
OUTCOME = "dt.outcome"  # of a trial's run: running | completed | stopped | diverged | failed
TRIAL_ID = "dt.trial_id"  # Ray's trial id, which finds a trial's run again on resume
ERROR = "dt.error"  # the exception line of a failed trial
BEST = "dt.best"  # 'true' on the best trial's run of a search
BEST_TRIAL_ID = "dt.best_trial_id"  # on a search's run
TRAINER, MODEL, SPACE = "dt.trainer", "dt.model", "dt.space"
STORAGE = "dt.storage"  # the folder Ray keeps the search's (or study's) trials in
CODE_VERSION = "dt.code_version"
STUDY_RUN_ID = "dt.study_run_id"  # on a search that is an arm of a study, and on the study's confirm stage
STUDY, REFERENCE, BASELINE = "dt.study", "dt.reference", "dt.baseline"  # on a study's run
ARM_EXPERIMENTS = "dt.arm_experiments"  # on a study's run: the experiments its arms' searches are in


class Role:
    """The values of the ROLE tag."""

    SEARCH = "search"  # a search's parent run
    TRIAL = "trial"  # one trial of a search, nested under it
    STUDY = "study"  # a study's run; its arms' searches nest under it
    CONFIRM_STAGE = "confirm_stage"  # a study's confirm stage, nested under the study's run
    CONFIRM = "confirm"  # one confirm trial (a config x a seed), nested under the confirm stage


def tag_filter(tag: str, value: str) -> str:
    return f"tags.`{tag}` = '{value}'"


def all_of(*filters: str) -> str:
    return " and ".join(f for f in filters if f)


SEARCH_FILTER = tag_filter(ROLE, Role.SEARCH)
TRIAL_FILTER = tag_filter(ROLE, Role.TRIAL)
STUDY_FILTER = tag_filter(ROLE, Role.STUDY)
CONFIRM_STAGE_FILTER = tag_filter(ROLE, Role.CONFIRM_STAGE)
CONFIRM_FILTER = tag_filter(ROLE, Role.CONFIRM)


def children_of(parent_run_id: str) -> str:
    return tag_filter(PARENT, parent_run_id)


def nested_in_study(study_run_id: str | None) -> dict:
    """The tags that nest a run under a study's run (none for a search on its own)."""
    return {PARENT: study_run_id, STUDY_RUN_ID: study_run_id} if study_run_id else {}


# ---------------------------------------------------------------------------------------------- queries


def every_page(search, **query) -> list:
    """All that an MLflow search (`search_runs`, `search_experiments`) finds: it answers a page at a time, with a
    token for the next."""
    found, token = [], None
    while True:
        page = search(**query, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return found


def all_runs(client, experiment_ids, filter_string: str = "", order_by=None, page_size: int | None = None) -> list:
    """Every run of the experiments that the filter matches."""
    if not experiment_ids:
        return []
    return every_page(
        client.search_runs,
        experiment_ids=list(experiment_ids),
        filter_string=filter_string,
        max_results=page_size or PAGE_SIZE,
        order_by=order_by,
    )


def child_runs(client, parent_run_id: str, extra_filter: str = "", order_by=None, page_size: int | None = None):
    """Every run nested under `parent_run_id` (in its experiment) that `extra_filter` also matches."""
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    return all_runs(client, [experiment_id], all_of(children_of(parent_run_id), extra_filter), order_by, page_size)


def all_experiments(client, page_size: int | None = None) -> list:
    """Every active experiment."""
    return every_page(client.search_experiments, max_results=page_size or PAGE_SIZE)


# ---------------------------------------------------------------------------------------------- the store


def sqlite_path(tracking_uri: str) -> str | None:
    """The database file of a `sqlite:///` URI as written (relative to the working directory unless it starts with
    '/', i.e. `sqlite:////abs/path`); None for any other store."""
    return tracking_uri[len(SQLITE) :] if tracking_uri.startswith(SQLITE) else None


def absolute_tracking_uri(tracking_uri: str) -> str:
    """`sqlite:///mlflow.db` is relative to the working directory; pin it, so a resumed search finds it again."""
    path = sqlite_path(tracking_uri)
    if path is None or path.startswith("/"):
        return tracking_uri
    return SQLITE + str(Path(path).resolve())


def limit_mlflow_http(max_retries: int, timeout_s: int) -> None:
    """MLflow retries an unreachable tracking server with backoff for minutes before it raises: turn that down, so a
    wrong --mlflow-uri fails in seconds. A value the user set in the environment wins."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(max_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout_s))


def mlflow_client(uri: str):
    """An MlflowClient on `uri`, with MLflow's logs kept to warnings (schema migrations are logged at INFO)."""
    from mlflow.tracking import MlflowClient

    # after the import, which sets MLflow's own levels
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # the report reads config.json per trial
    return MlflowClient(tracking_uri=uri)


def connect(uri: str, max_retries: int = 2, timeout_s: int = 30, existing: bool = True):
    """An MlflowClient on `uri` once one cheap request proves the store answers, with MLflow's HTTP retries and
    timeout limited as given. existing: a SQLite file must be there already (to read a store; a search's first run
    creates its own). Raises ConfigError naming --mlflow-uri."""
    limit_mlflow_http(max_retries, timeout_s)
    path = sqlite_path(uri)
    # MLflow would silently create an empty database; a missing file is almost always a wrong path
    if existing and path and path != ":memory:" and not os.path.exists(path):
        raise ConfigError(f"--mlflow-uri {uri}: no such file '{path}' (run a search first, or point at its store)")
    try:
        client = mlflow_client(uri)
        client.search_experiments(max_results=1)
    except Exception as e:  # any failure here is a bad URI or an unreachable store, reported as one line
        raise ConfigError(f"--mlflow-uri {uri}: cannot read the MLflow store ({one_line(e)})") from None
    return client
