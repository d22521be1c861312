"""Where a tracking store is, read from its URI; and how long MLflow may wait on a tracking server. One copy of each
rule, for the search driver, the tracker and the report."""

from __future__ import annotations

import os
from pathlib import Path

SQLITE = "sqlite:///"


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
