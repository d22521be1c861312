"""A search's results put where researchers look: at the start, the experiment's description and the links to its
trials; at each DGL trial's end, its accuracy-against-depth figure; at the end of the search, the best trial's tag,
the search's own figures (the report's figure code, for this search alone) and a description on the parent run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from tuner.errors import one_line
from tuner.search.optuna_storage import dashboard_command
from tuner.tracking.views import (
    NOTE,
    describe_experiment,
    mark_best_trial,
    parent_description,
    run_url,
    view_lines,
)

FIGURES_DIR = "figures"


def announce_search(client, record, space, folder: Path) -> list[str]:
    """Describe the experiment and return the lines that say where to watch the search."""
    experiment_id = client.get_run(record.parent_run_id).info.experiment_id
    describe_experiment(client, experiment_id, space.description, space.metric, space.mode, list(space.params))
    return (
        ["Watch it in MLflow (in the UI, 'Model training' shows runs; these links open it there):"]
        + view_lines(record.mlflow_uri, experiment_id, space.metric)
        + [f"  the Optuna study: {dashboard_command(folder, record.settings.optuna_storage)}   (.[dashboard] extra)"]
    )


def search_figures(client, experiment: str, parent_run_id: str, out_dir: Path) -> tuple:
    """The report's figures for this search alone: ([(path, caption)], [notes on figures skipped])."""
    from tuner.report.figures import make_figures
    from tuner.report.gaps import CURVE_METRICS, best_trials
    from tuner.tracking.reader import load_searches, metric_history

    searches = [s for s in load_searches(client, [experiment]) if s.run_id == parent_run_id]
    best = best_trials(searches)
    for t in best.values():
        t.histories = {k: metric_history(client, t.run_id, k) for k in CURVE_METRICS}
    return make_figures(searches, best, out_dir)


def publish_results(client, record, space, summary: dict, outcomes: dict) -> list[str]:
    """At the end of a search (also a resumed one): tag the best trial, log the figures on the parent run under
    figures/, describe the parent run. Returns the lines to print. A failure here costs the figures, not the search."""
    lines, best_name = [], ""
    if summary.get("best_trial_id"):
        best_name = mark_best_trial(client, record.parent_run_id, summary["best_trial_id"])
    names = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            made, skipped = search_figures(client, record.experiment, record.parent_run_id, Path(tmp))
            for path, _ in made:
                client.log_artifact(record.parent_run_id, str(path), artifact_path=FIGURES_DIR)
            names = [Path(path).name for path, _ in made]
        lines += skipped
        if names:
            lines.append(f"Figures logged on the search's MLflow run under {FIGURES_DIR}/: {', '.join(names)}")
    except Exception as error:  # matplotlib or the store; the search's results stand without its figures
        lines.append(f"warning: the search's figures were not logged ({one_line(error)})")
    client.set_tag(record.parent_run_id, NOTE, parent_description(summary, space.metric, outcomes, names, best_name))
    experiment_id = client.get_run(record.parent_run_id).info.experiment_id
    lines += (
        ["MLflow:"]
        + view_lines(record.mlflow_uri, experiment_id, space.metric)
        + [
            "  the search's run (description, figures): "
            + run_url(record.mlflow_uri, experiment_id, record.parent_run_id)
        ]
    )
    return lines
