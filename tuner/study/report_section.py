"""The report's study section (`python -m tuner.study` runs): per study, the confirm table with intervals, the confirm
seeds' test accuracy per epoch (mean and band) per candidate, the DGL search per block count, and the search-efficiency
figure when the study's run holds it (bench/search_efficiency.py --log-to-run makes it)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from tuner.report.figures import plt
from tuner.study.results import blocks_rows, load_confirmed
from tuner.study.tables import by_name, summary_tables
from tuner.tracking.block_figure import save_figure, trainer_color
from tuner.tracking.reader import load_searches, read_artifact
from tuner.tracking.store import (
    ARM_EXPERIMENTS,
    BASELINE,
    CONFIRM_STAGE_FILTER,
    REFERENCE,
    STATUS,
    STUDY_FILTER,
    all_experiments,
    all_runs,
    child_runs,
)

EFFICIENCY = "search_efficiency"


def find_studies(client, experiments: dict) -> list:
    """The study runs of the selected experiments (id -> name), oldest first."""
    return sorted(all_runs(client, list(experiments), STUDY_FILTER), key=lambda run: run.info.start_time or 0)


def plot_confirm_curves(title: str, candidates: list, path) -> None:
    """Test accuracy per epoch of each candidate: the mean over its confirm seeds (of every repetition), and a band
    from the lowest to the highest seed."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = ("-", "--", ":", "-.")
    for i, (name, group) in enumerate(by_name(candidates).items()):
        by_epoch: dict[int, list[float]] = {}
        curves = [curve for c in group for curve in c.curves.values()]
        for curve in curves:
            for epoch, value in curve:
                by_epoch.setdefault(epoch, []).append(value * 100)
        epochs = sorted(by_epoch)
        if not epochs:
            continue
        color = trainer_color(next((c.config.get("trainer", "") for c in group if c.config), ""))
        mean = [statistics.fmean(by_epoch[e]) for e in epochs]
        ax.plot(epochs, mean, styles[i % len(styles)], color=color, label=f"{name} (n={len(curves)})")
        ax.fill_between(
            epochs, [min(by_epoch[e]) for e in epochs], [max(by_epoch[e]) for e in epochs], color=color, alpha=0.15
        )
    ax.set(xlabel="epoch", ylabel="test accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def efficiency_lines(client, run_id: str, out_dir: Path, stem: str) -> tuple:
    """(markdown lines, figures made) for the study run's search-efficiency artifacts, or how to make them."""
    text = read_artifact(client, run_id, f"{EFFICIENCY}.json")
    if text is None:
        return [f"No search-efficiency figure yet: `python -m bench.search_efficiency --log-to-run {run_id}`"], []
    lines = ["Search efficiency: epochs each method needed to reach random search's best (per repetition):", ""]
    for name, method in json.loads(text).get("methods", {}).items():
        reached = method.get("epochs_to_reach_random_best") or []
        cells = ", ".join("never" if v is None else f"{v:g}" for v in reached)
        lines.append(f"- {name}: {cells or '—'}")
    made = []
    with_png = out_dir / f"{stem}_{EFFICIENCY}.png"
    try:
        Path(client.download_artifacts(run_id, f"{EFFICIENCY}.png", str(out_dir))).replace(with_png)
        made.append((with_png, "Search efficiency: ASHA + TPE against random search, same epoch budget"))
    except Exception:  # MLflow raises different errors per store for a missing artifact
        lines.append(f"(the run has {EFFICIENCY}.json but no {EFFICIENCY}.png)")
    return lines, made


def study_section(client, experiments: dict, out_dir: Path) -> tuple:
    """(markdown lines, console lines, figures made) for every study in the selected experiments."""
    markdown, console, made = [], [], []
    for run in find_studies(client, experiments):
        study_id, name = run.info.run_id, run.info.run_name
        reference = run.data.tags.get(REFERENCE, "backprop")
        stage = child_runs(client, study_id, CONFIRM_STAGE_FILTER)
        candidates = load_confirmed(client, stage[0].info.run_id) if stage else []
        arms = arm_searches(client, run)
        dgl: dict[str, list] = {}
        for search in arms:
            dgl.setdefault(search.experiment, []).extend(t for t in search.trials if t.trainer == "dgl")
        model = next((t.model for s in arms for t in s.trials), "vgg16")
        blocks = blocks_rows({arm: trials for arm, trials in dgl.items() if trials}, model)
        baseline = run.data.tags.get(BASELINE, "")
        tables = {md: summary_tables(candidates, reference, blocks, md, baseline) for md in (True, False)}
        status = run.data.tags.get(STATUS, run.info.status.lower())
        markdown += [f"## Study {name} [{status}]", "", *tables[True], ""]
        console += [f"Study {name} [{status}]", *tables[False]]
        if any(c.curves for c in candidates):
            path = out_dir / f"confirm_{name}.png"
            plot_confirm_curves(f"{name}: test accuracy of the confirm seeds (band: min-max)", candidates, path)
            made.append((path, f"{name}: test accuracy per epoch, mean over confirm seeds, band from min to max"))
            markdown += [f"![confirm curves]({path.name})", ""]
        lines, figures = efficiency_lines(client, study_id, out_dir, name)
        markdown += lines + [""] + [f"![search efficiency]({p.name})" for p, _ in figures]
        console += lines
        made += figures
    return markdown, console, made


def arm_experiment_names(client, names: list) -> tuple:
    """(the searches' experiments, the studies' experiments) that `names` mean: a study's experiment holds its run and
    confirm stage, its arms' searches are in experiments of their own, which its run names."""
    searched, studies = [], []
    for experiment in all_experiments(client):
        if experiment.name not in names:
            continue
        study_runs = all_runs(client, [experiment.experiment_id], STUDY_FILTER)
        arms = [n for run in study_runs for n in run.data.tags.get(ARM_EXPERIMENTS, "").split(",") if n]
        if study_runs:
            studies.append(experiment.name)
        searched += arms or [experiment.name]
    missing = [n for n in names if n not in searched and n not in studies]
    return list(dict.fromkeys(searched + missing)), studies


def arm_searches(client, study_run) -> list:
    """The study's arms' searches, every repetition: in the experiments its run names (one per arm), or, for a study
    run before arms had experiments of their own, in the study's."""
    names = [n for n in study_run.data.tags.get(ARM_EXPERIMENTS, "").split(",") if n]
    experiment = client.get_experiment(study_run.info.experiment_id).name
    searches = load_searches(client, names or [experiment])
    return [s for s in searches if s.study_run_id == study_run.info.run_id]
