"""What a researcher sees in the MLflow UI: the links that open the ranked trials, the experiment's and the parent
run's descriptions, readable trial names, the best-trial tag, and which params apply to a trial.

MLflow 3.17 opens an experiment in its GenAI view (traces, no runs); the URL parameter
`workflowType=machine_learning` opens the runs table instead (the experiment-kind tag is set too, for the UIs that
read it). Which runs, in which order and with which columns is a view the UI loads from an experiment tag
`mlflow.sharedViewState.<key>` named by the URL's `viewStateShareKey` (what its own "Share" button writes); the
chart view is `compareRunsMode=CHART`. Left to itself the chart view puts sections named by a metric prefix
(`blocks/`) before its "Model metrics" section; the saved view lists the sections in the order to show them and marks
that order as the user's own (`isAccordionReordered`), and the UI files each metric's chart under its section.
"""

from __future__ import annotations

import json
from urllib.parse import quote, urlencode

from tuner.config.keys import applies
from tuner.text import fmt_value
from tuner.tracking.store import BEST, OUTCOME, TRIAL_FILTER, TRIAL_ID, child_runs, sqlite_path, tag_filter
from tuner.trial.metric_names import BLOCK_PREFIX

LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store by default
NOTE = "mlflow.note.content"  # the description MLflow's UI shows for an experiment or a run
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
SHARED_VIEW = "mlflow.sharedViewState."
# the chart view's sections, top to bottom: the headline metrics (MLflow's name for un-prefixed ones), then the
# per-block accuracies (tuner/trial/metric_names.py), then MLflow's system metrics
CHART_SECTIONS = ("Model metrics", BLOCK_PREFIX.rstrip("/"), "System metrics")
TABLE_PARAMS = 6  # searched params shown as columns beside the metrics
NAME_PARAMS = 3  # searched values in a trial's run name, beyond its trainer and number


def ui_base(tracking_uri: str) -> str:
    """The UI of a tracking server is the server itself; a local store is served by `mlflow ui`."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return LOCAL_UI


def trials_view_key(metric: str) -> str:
    return f"trials-by-{metric}"


def trials_view(metric: str, mode: str, searched: list) -> dict:
    """The runs page state of the ranked trials: the trial runs, best first, with the objective, the other
    accuracies, the outcome and the first searched values as columns."""
    metrics = [metric] + [m for m in ("val_acc", "train_acc", "val_loss") if m != metric]
    columns = (
        [f"metrics.`{m}`" for m in metrics] + [f"tags.`{OUTCOME}`"] + [f"params.`{p}`" for p in searched[:TABLE_PARAMS]]
    )
    return {
        "searchFilter": TRIAL_FILTER,
        "orderByKey": f"metrics.`{metric}`",
        "orderByAsc": mode == "min",
        "selectedColumns": columns,
        "compareRunCharts": [],  # present, so the UI adds each metric's chart to the sections below
        "compareRunSections": [
            {"uuid": f"section-{name}", "name": name, "display": True, "isReordered": False} for name in CHART_SECTIONS
        ],
        "isAccordionReordered": True,
    }


def trials_url(tracking_uri: str, experiment_id: str, metric: str, charts: bool = False) -> str:
    """The experiment's trial runs in the view `describe_experiment` saved, as a table (charts=True: the charts)."""
    query = {"workflowType": "machine_learning", "viewStateShareKey": trials_view_key(metric)}
    if charts:
        query["compareRunsMode"] = "CHART"
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs?{urlencode(query, quote_via=quote)}"


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """A run's page (its description, metrics and artifacts), in the model-training view."""
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def ui_command(tracking_uri: str) -> str | None:
    """The command that serves a local store (one worker keeps it near 0.5 GB); None for a tracking server."""
    if sqlite_path(tracking_uri) is None:
        return None
    return f"mlflow ui --backend-store-uri {tracking_uri} --workers 1"


def view_lines(tracking_uri: str, experiment_id: str, metric: str) -> list[str]:
    """The lines the search prints at its start and end: how to open the trials, ranked, and their charts."""
    command = ui_command(tracking_uri)
    lines = [f"  serve it: {command}"] if command else []
    return lines + [
        f"  trials, best first: {trials_url(tracking_uri, experiment_id, metric)}",
        f"  their charts:       {trials_url(tracking_uri, experiment_id, metric, charts=True)}",
    ]


def describe_experiment(client, experiment_id: str, description: str, metric: str, mode: str, searched: list) -> None:
    """The space's description as the experiment's; the ranked-trials view the links open; the kind tag for UIs
    that choose their view by it."""
    if description:
        client.set_experiment_tag(experiment_id, NOTE, description)
    client.set_experiment_tag(
        experiment_id, SHARED_VIEW + trials_view_key(metric), json.dumps(trials_view(metric, mode, searched))
    )
    client.set_experiment_tag(experiment_id, *EXPERIMENT_KIND)


def trial_number(trial_id: str, trial_ids: list) -> int | None:
    """The trial's place in the search, from 1: Ray keeps its trials (and a ResultGrid its results) in the order it
    created them, also after a restore, and its trial ids are random. None when `trial_ids` does not hold it."""
    return trial_ids.index(trial_id) + 1 if trial_id in trial_ids else None


def trial_run_name(number: int | None, config: dict, searched: list) -> str:
    """`#4 dgl lr=0.012 weight_decay=3.1e-05 aux_head=conv`: the number, the trainer and the first searched values
    that apply, so runs tell each other apart in the table, the chart legends and the run page."""
    shown = [key for key in searched if key in config and applies(key, config)][:NAME_PARAMS]
    values = " ".join(f"{key}={fmt_value(config[key])}" for key in shown)
    return f"#{number or '?'} {config.get('trainer', '')} {values}".strip()


def mark_best_trial(client, parent_run_id: str, trial_id: str) -> str:
    """Tag the best trial's run `dt.best=true`, so `tags.dt.best = 'true'` finds it in the UI; returns its name."""
    runs = child_runs(client, parent_run_id, tag_filter(TRIAL_ID, trial_id))
    for run in runs:
        client.set_tag(run.info.run_id, BEST, "true")
    return runs[0].info.run_name if runs else trial_id


def parent_description(summary: dict, metric: str, outcomes: dict, figures: list, best_name: str = "") -> str:
    """The parent run's description, written at the end: the best trial, how the trials ended, the figures."""
    lines = []
    if summary.get("best_trial_id"):
        config = ", ".join(f"{k}={fmt_value(v)}" for k, v in (summary.get("best_config") or {}).items())
        test = summary.get("best_test_acc")
        lines.append(
            f"Best: {best_name or 'trial'} (Ray trial {summary['best_trial_id']}, tagged {BEST}), {metric} "
            f"{summary['best_val_acc']:.4f}"
            + (f", test_acc {test:.4f}" if test is not None else "")
            + (f"; {config}" if config else "")
            + "."
        )
    else:
        lines.append(f"No trial reported a finite {metric}.")
    lines.append(f"{summary.get('num_trials', 0)} trials: " + ", ".join(f"{n} {o}" for o, n in outcomes.items()) + ".")
    if figures:
        lines.append("Figures (artifacts, under figures/): " + ", ".join(figures) + ".")
    return "\n\n".join(lines)
