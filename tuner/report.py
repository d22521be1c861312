"""The gap report: where DGL (and DNI, cDNI) stand against backprop, and why, read from the searches' MLflow runs.

    python -m tuner.report [--mlflow-uri URI] [--spaces NAME ...] [--out DIR]

Reads the layout the search driver writes (one parent run per search tagged dt.role=search, one nested child
run per trial tagged dt.role=trial), picks the best trial of each trainer for each model across the selected
experiments, prints the accuracy/gap table, writes DIR/report.md and the figures, and logs them as artifacts
(under report/) on each selected search's parent run.

A trial is ranked by its final epoch's val_acc, as the search itself ranks them: that is the epoch whose
checkpoint the search keeps (it keeps only the last two) and evaluates on the test set, so the val and test
accuracies in a row belong to the same weights. A diverged trial is never "best": its last weights are NaN.
Test accuracy is shown only where it was recorded (each search's best trial, once the search ends).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from models.networks import CFGS
from models.trainers import TRAINERS
from tuner import figures
from tuner.errors import ConfigError, SpaceError, one_line
from tuner.figures import plural
from tuner.schema import KEYS
from tuner.space_file import load_space

DEFAULT_URI = "sqlite:///mlflow.db"
SEARCH_FILTER = "tags.`dt.role` = 'search'"
TRIAL_FILTER = "tags.`dt.role` = 'trial'"
CURVE_METRICS = ("train_loss", "val_loss", "train_acc", "val_acc", "epoch_s")
# shown for a trial whose search did not record which keys it searched (no best.* params, nothing varies)
FALLBACK_KEYS = ("lr", "weight_decay")


@dataclass
class Trial:
    run_id: str
    trial_id: str
    parent_run_id: str
    experiment: str
    trainer: str
    model: str
    outcome: str             # running | completed | stopped | diverged | failed
    params: dict             # the trial's flat config, as its config.json artifact holds it
    metrics: dict            # latest value of each metric: for per-epoch metrics, the last epoch logged
    start_ms: int
    end_ms: int | None
    histories: dict = field(default_factory=dict)   # metric -> [(epoch, value)], loaded for the best trials only

    @property
    def final_val_acc(self):
        """The last epoch's val_acc; None before the first evaluation, or when the trial diverged (the tracker
        skips NaN, so what MLflow holds is an earlier epoch's, from weights that are gone)."""
        v = self.metrics.get("val_acc")
        return v if v is not None and math.isfinite(v) and self.outcome != "diverged" else None


@dataclass
class Search:
    run_id: str
    name: str
    experiment: str
    status: str              # dt.status: running | finished | interrupted
    searched: list           # the hyperparameters this search varied
    dimensions: dict = field(default_factory=dict)  # name -> Dimension, from the search's space.yaml
    trials: list = field(default_factory=list)


# ---- reading the store ----

def connect(uri: str):
    """An MlflowClient on `uri`, after one cheap request proves the store can be read. Raises ConfigError."""
    from mlflow.tracking import MlflowClient

    # after the import, which sets MLflow's own levels: schema migrations are logged at INFO, not for the reader
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # the report reads config.json per trial
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
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


def logged_dimensions(client, run_id: str) -> dict:
    """name -> Dimension of a search's space.yaml artifact; {} if it has none or it no longer loads."""
    text = read_artifact(client, run_id, "space.yaml")
    if not text:
        return {}
    with tempfile.TemporaryDirectory(prefix="dt-report-") as folder:
        (Path(folder) / "space.yaml").write_text(text)
        try:
            return load_space(str(Path(folder) / "space.yaml")).params
        except (SpaceError, ConfigError):
            return {}


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
        run_id=run.info.run_id, trial_id=tags.get("dt.trial_id") or run.info.run_name,
        parent_run_id=tags.get("mlflow.parentRunId", ""), experiment=experiment,
        trainer=tags.get("dt.trainer") or str(params.get("trainer", "?")),
        model=tags.get("dt.model") or str(params.get("model", "?")),
        outcome=tags.get("dt.outcome") or status_outcome, params=params, metrics=dict(run.data.metrics),
        start_ms=run.info.start_time or 0, end_ms=run.info.end_time)


def _searched_keys(parent, trials: list) -> list:
    """The keys a search varied: its best.* params; else the keys whose values differ between its trials."""
    keys = sorted(k[len("best."):] for k in parent.data.params if k.startswith("best."))
    if keys or len(trials) < 2:
        return keys
    return sorted(k for k in KEYS if len({repr(t.params.get(k)) for t in trials}) > 1)


def load_searches(client, spaces: list | None = None) -> list:
    """Every search (with its trials) in the selected experiments; raises ConfigError for an unknown space."""
    experiments = {e.experiment_id: e.name for e in _all_pages(client.search_experiments)}
    parents = _all_pages(client.search_runs, experiment_ids=list(experiments), filter_string=SEARCH_FILTER) \
        if experiments else []
    present = sorted({experiments[p.info.experiment_id] for p in parents})
    for name in spaces or []:
        if name not in present:
            raise ConfigError(f"--spaces: no searches in an experiment named '{name}'; "
                              f"present: {', '.join(present) or 'none'}")
    selected = set(spaces or present)
    parents = [p for p in parents if experiments[p.info.experiment_id] in selected]
    ids = sorted({p.info.experiment_id for p in parents})
    children = _all_pages(client.search_runs, experiment_ids=ids, filter_string=TRIAL_FILTER) if ids else []
    trials_by_parent = {}
    for run in children:
        trial = _trial_from_run(client, run, experiments[run.info.experiment_id])
        trials_by_parent.setdefault(trial.parent_run_id, []).append(trial)
    searches = []
    for p in sorted(parents, key=lambda p: (experiments[p.info.experiment_id], p.info.start_time or 0)):
        trials = sorted(trials_by_parent.get(p.info.run_id, []), key=lambda t: t.start_ms)
        dimensions = logged_dimensions(client, p.info.run_id)
        searches.append(Search(run_id=p.info.run_id, name=p.info.run_name,
                               experiment=experiments[p.info.experiment_id],
                               status=p.data.tags.get("dt.status", p.info.status.lower()),
                               searched=list(dimensions) or _searched_keys(p, trials), trials=trials,
                               dimensions=dimensions))
    return searches


# ---- the table ----

def _order(names, known) -> list:
    return sorted(set(names), key=lambda n: (known.index(n) if n in known else len(known), n))


def best_trials(searches: list) -> dict:
    """(model, trainer) -> the trial with the highest final val_acc, over every selected search."""
    best = {}
    for search in searches:
        for t in search.trials:
            if t.final_val_acc is None:
                continue
            key = (t.model, t.trainer)
            if key not in best or t.final_val_acc > best[key].final_val_acc:
                best[key] = t
    return best


def collect(client, spaces: list | None = None) -> tuple:
    """(searches, best trials) with the best trials' per-epoch histories loaded, ready for the table and figures."""
    searches = load_searches(client, spaces)
    best = best_trials(searches)
    for t in best.values():
        t.histories = {k: metric_history(client, t.run_id, k) for k in CURVE_METRICS}
    return searches, best


def wall_seconds(trial: Trial) -> float | None:
    """Training time: the sum of its epochs' epoch_s if logged, else the run's end - start (or now - start)."""
    epoch_s = trial.histories.get("epoch_s")
    if epoch_s:
        return sum(v for _, v in epoch_s)
    if not trial.start_ms:
        return None
    return ((trial.end_ms or time.time() * 1000) - trial.start_ms) / 1000


def _fallback_keys(trainer: str) -> list:
    aux = [] if trainer == "backprop" else sorted(k for k in KEYS if k.startswith("aux_"))
    return list(FALLBACK_KEYS) + aux


def gap_rows(best: dict, searches: list) -> list:
    """One row per model x trainer, in the order of the model and trainer registries (models/)."""
    searched = {s.run_id: s.searched for s in searches}
    rows = []
    for model in _order([m for m, _ in best], list(CFGS)):
        reference = best.get((model, "backprop"))
        for trainer in _order([t for m, t in best if m == model], list(TRAINERS)):
            t = best[(model, trainer)]
            val = t.final_val_acc
            test = t.metrics.get("test_acc")
            keys = searched.get(t.parent_run_id) or _fallback_keys(trainer)
            epochs = max((e for e, _ in t.histories.get("val_acc", [])), default=None)
            row = dict(model=model, trainer=trainer, val_acc=val, test_acc=test, epochs=epochs,
                       planned_epochs=t.params.get("epochs"), wall_s=wall_seconds(t), trial=t,
                       hyperparameters={k: t.params.get(k) for k in keys}, gap_val=None, gap_test=None)
            if reference is not None and trainer != "backprop":
                row["gap_val"] = (val - reference.final_val_acc) * 100
                ref_test = reference.metrics.get("test_acc")
                if test is not None and ref_test is not None:
                    row["gap_test"] = (test - ref_test) * 100
            rows.append(row)
    return rows


def comparison_notes(best: dict) -> list:
    """Plain one-line notes on what cannot be compared."""
    notes = []
    for model in _order([m for m, _ in best], list(CFGS)):
        trainers = _order([t for m, t in best if m == model], list(TRAINERS))
        if len(trainers) == 1:
            what = "nothing to compare it against" if trainers[0] == "backprop" else "no backprop baseline, so no gap"
            notes.append(f"{model}: only {trainers[0]} has results — {what}.")
        elif "backprop" not in trainers:
            notes.append(f"{model}: no backprop results — gaps left blank.")
    return notes


def _fmt_value(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _fmt_wall(seconds) -> str:
    if seconds is None:
        return "—"
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


TABLE_HEADER = ("model", "trainer", "val acc*", "test acc", "gap val", "gap test", "epochs", "wall", "trial",
                "searched hyperparameters")


def table_cells(row: dict) -> tuple:
    pct = lambda v: "—" if v is None else f"{v * 100:.2f}%"   # noqa: E731
    gap = lambda v: "ref" if row["trainer"] == "backprop" else "—" if v is None else f"{v:+.2f}"   # noqa: E731
    t = row["trial"]
    trial = t.trial_id if t.outcome == "completed" else f"{t.trial_id} ({t.outcome})"
    return (row["model"], row["trainer"], pct(row["val_acc"]), pct(row["test_acc"]), gap(row["gap_val"]),
            gap(row["gap_test"]), f"{row['epochs']}/{row['planned_epochs']}", _fmt_wall(row["wall_s"]), trial,
            " ".join(f"{k}={_fmt_value(v)}" for k, v in row["hyperparameters"].items()))


TABLE_LEGEND = ("* val acc: the best trial's final epoch (as the search ranks them); epochs: trained/budget; "
                "gap: trainer - backprop, in points (+ = ahead)")


def text_table(rows: list) -> list:
    cells = [TABLE_HEADER] + [table_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(TABLE_HEADER))]
    return ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells]


def markdown_table(rows: list) -> list:
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    return lines + ["| " + " | ".join(table_cells(r)) + " |" for r in rows]


def search_summary(search: Search) -> str:
    counts = {}
    for t in search.trials:
        counts[t.outcome] = counts.get(t.outcome, 0) + 1
    outcomes = ", ".join(f"{n} {o}" for o, n in sorted(counts.items(), key=lambda kv: -kv[1])) or "none yet"
    num_trials = plural(len(search.trials), "trial")
    return f"{search.experiment} / {search.name} [{search.status}]: {num_trials} ({outcomes})"


# ---- figures ----

def _label(t: Trial) -> str:
    return f"{t.trainer} ({t.trial_id})"


def _block_accuracies(metrics: dict, split: str) -> list:
    """[block1, block2, ...] from block{i}_{split}_acc metrics, stopping at the first missing block."""
    values, i = [], 1
    while f"block{i}_{split}_acc" in metrics:
        values.append(metrics[f"block{i}_{split}_acc"])
        i += 1
    return values


def make_figures(searches: list, best: dict, out_dir: Path) -> tuple:
    """Draw every figure the data allows; returns ([(path, caption)], [one-line notes on figures skipped])."""
    made, skipped = [], []
    for model in _order([m for m, _ in best], list(CFGS)):
        trainers = _order([t for m, t in best if m == model], list(TRAINERS))
        series = {}
        for trainer in trainers:
            t = best[(model, trainer)]
            series[trainer] = dict(label=f"{_label(t)}, final val {t.final_val_acc * 100:.2f}%", **t.histories)
        path = out_dir / f"curves_{model}.png"
        figures.plot_curves(model, series, path)
        made.append((path, f"{model}: loss and accuracy per epoch, best trial of each trainer"))

        blocks = {}
        for trainer in trainers:
            t = best[(model, trainer)]
            val = _block_accuracies(t.metrics, "val")
            if trainer != "backprop" and val:
                blocks[trainer] = dict(label=_label(t), val=val, train=_block_accuracies(t.metrics, "train"))
        if blocks:
            reference = best.get((model, "backprop"))
            path = out_dir / f"blocks_{model}.png"
            figures.plot_blocks(model, blocks, reference.final_val_acc if reference else None,
                                _label(reference) if reference else "backprop", path)
            made.append((path, f"{model}: accuracy of each block's classifier at the final epoch"))

    for experiment in _order([s.experiment for s in searches], []):
        in_experiment = [s for s in searches if s.experiment == experiment]
        trials = sorted((t for s in in_experiment for t in s.trials), key=lambda t: t.start_ms)
        if not any(t.final_val_acc is not None for t in trials):
            skipped.append(f"{experiment}: no trial has a validation accuracy yet — no history or importance figure.")
            continue
        starts = sorted(min(t.start_ms for t in s.trials) for s in in_experiment if s.trials)[1:]
        positions = [1 + sum(t.start_ms < start for t in trials) for start in starts]
        path = out_dir / f"history_{experiment}.png"
        figures.plot_history(experiment, [(t.outcome, t.final_val_acc) for t in trials], path, tuple(positions))
        made.append((path, f"{experiment}: final validation accuracy of each trial, in order of start"))

        completed = [t for t in trials if t.outcome == "completed" and t.final_val_acc is not None]
        keys = sorted({k for s in in_experiment for k in s.searched})
        importances, method = figures.param_importances(
            [t.params for t in completed], [t.final_val_acc for t in completed], keys,
            known={k: d.distribution() for s in in_experiment for k, d in s.dimensions.items()})
        if importances:
            path = out_dir / f"importance_{experiment}.png"
            figures.plot_importance(experiment, importances, method, len(completed), path)
            made.append((path, f"{experiment}: hyperparameter importance ({method})"))
        else:
            skipped.append(f"{experiment}: no importance figure — {method}.")
    return made, skipped


# ---- the report ----

def write_markdown(path: Path, uri: str, searches: list, rows: list, notes: list, made: list, skipped: list) -> None:
    num_trials = plural(sum(len(s.trials) for s in searches), "trial")
    lines = ["# Gap report: local learning vs backprop", "",
             f"Store `{uri}`, {plural(len(searches), 'search')}, {num_trials}; "
             f"generated {time.strftime('%Y-%m-%d %H:%M')}.", ""]
    if rows:
        lines += markdown_table(rows) + ["", TABLE_LEGEND.replace("*", "\\*", 1), ""]
    lines += [f"- {n}" for n in notes] + ([""] if notes else [])
    lines += ["## Searches", ""] + [f"- {search_summary(s)}" for s in searches] + [""]
    if made or skipped:
        lines += ["## Figures", ""]
        for png, caption in made:
            lines += [f"**{caption}**", "", f"![{caption}]({png.name})", ""]
        lines += [f"- {s}" for s in skipped]
    path.write_text("\n".join(lines).rstrip() + "\n")


def run_report(uri: str, spaces: list | None, out_dir, log_artifacts: bool = True) -> int:
    client = connect(uri)
    searches, best = collect(client, spaces)
    if not searches:
        print(f"No searches in {uri} (no MLflow runs tagged dt.role=search): nothing to report.")
        return 0
    rows = gap_rows(best, searches)
    notes = comparison_notes(best)
    if not best:
        num_trials = plural(sum(len(s.trials) for s in searches), "trial")
        notes.append(f"No trial has reported a validation accuracy yet ({num_trials} in "
                     f"{plural(len(searches), 'search')}): nothing to compare.")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    made, skipped = make_figures(searches, best, out_dir)
    report_md = out_dir / "report.md"
    write_markdown(report_md, uri, searches, rows, notes, made, skipped)

    if rows:
        print("\n".join(text_table(rows)))
        print(TABLE_LEGEND)
    for line in notes:
        print(line)
    for s in searches:
        print(search_summary(s))
    for line in skipped:
        print(line)
    print(f"wrote {report_md} and {plural(len(made), 'figure')} to {out_dir}/")

    if log_artifacts:
        paths = [report_md] + [p for p, _ in made]
        try:
            for s in searches:
                for p in paths:
                    client.log_artifact(s.run_id, str(p), artifact_path="report")
        except Exception as e:  # the report itself is written; failing to upload it is a warning, not an error
            print(f"warning: could not log the report to MLflow ({one_line(e)})", file=sys.stderr)
        else:
            print(f"logged them under report/ on {plural(len(searches), 'search parent run')}")
    return 0


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuner.report", description=__doc__.split("\n")[0])
    parser.add_argument("--mlflow-uri", default=DEFAULT_URI, help=f"tracking URI (default {DEFAULT_URI})")
    parser.add_argument("--spaces", nargs="+", metavar="NAME", help="experiments to report (default: all)")
    parser.add_argument("--out", default="report", help="folder for report.md and the figures (default report)")
    parser.add_argument("--no-log-artifacts", action="store_true",
                        help="do not log the report as artifacts on the searches' parent runs")
    args = parser.parse_args(argv)
    # a tracking server that is down would otherwise be retried with backoff for minutes before the error
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    try:
        return run_report(args.mlflow_uri, args.spaces, args.out, log_artifacts=not args.no_log_artifacts)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from mlflow.exceptions import MlflowException

        if not isinstance(e, MlflowException):
            raise
        # the store answered the first request but failed later (server gone mid-way, a corrupt record)
        print(f"error: reading {args.mlflow_uri} failed: {one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
