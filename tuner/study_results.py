"""What a study concludes, read back from MLflow: the confirm runs' test accuracy over seeds, per candidate (an arm's
best config, and for DGL also its best at the write-up's block count), the gap of each to the reference arm with a
Welch t 95% interval over seeds, and the DGL search's best validation accuracy per block count.

Final = the last epoch's test accuracy; peak = the highest over epochs (the write-up reports the peak). One rule,
shared by the study's own summary and the report.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field

from tuner.ranking import best_trial
from tuner.report.store import metric_history, read_artifact
from tuner.study_file import normalized
from tuner.text import markdown_table, plural, text_table

CANDIDATES = "candidates.json"  # the confirm stage parent run's artifact: what was re-trained, and why
CONFIRM_FILTER = "tags.`dt.role` = 'confirm'"
INTERVAL = "Welch t, 95%"


@dataclass
class Candidate:
    name: str  # "dgl", "dgl @ num_blocks=13", ...
    arm: str
    trial_id: str  # the search trial whose config it is
    val_acc: float  # that trial's final validation accuracy in the search
    config: dict  # the trial's resolved config (its config.json), search seed included
    curves: dict = field(default_factory=dict)  # confirm seed -> [(epoch, test_acc)]

    def finals(self) -> list:
        return [curve[-1][1] for _, curve in sorted(self.curves.items()) if curve]

    def peaks(self) -> list:
        return [max(v for _, v in curve) for _, curve in sorted(self.curves.items()) if curve]


def same_config(a: dict, b: dict) -> bool:
    """Whether two resolved configs are the same config but for the seed (a confirm run belongs to its candidate)."""
    return {k: v for k, v in a.items() if k != "seed"} == {k: v for k, v in b.items() if k != "seed"}


def pick_candidates(trials_by_arm: dict, write_up: dict, model: str) -> list:
    """Each arm's best trial (tuner/ranking.py, by final val_acc), and where the arm has write-up values, its best
    trial with those values unless that is the arm's best already."""
    candidates = []

    def add(name: str, arm: str, trials: list) -> None:
        best = best_trial(trials, score=lambda t: t.final_val_acc, trial_id=lambda t: t.trial_id)
        if best is not None and not any(c.trial_id == best.trial_id for c in candidates):
            candidates.append(Candidate(name, arm, best.trial_id, best.final_val_acc, dict(best.params)))

    for arm, trials in trials_by_arm.items():
        add(arm, arm, trials)
        values = write_up.get(arm)
        if values:
            label = " ".join(f"{k}={v}" for k, v in values.items())
            matching = [t for t in trials if all(normalized(k, t.params.get(k), model) == v for k, v in values.items())]
            add(f"{arm} @ {label}", arm, matching)
    return candidates


def save_candidates(candidates: list) -> str:
    return json.dumps([{k: v for k, v in c.__dict__.items() if k != "curves"} for c in candidates], indent=1)


def load_confirmed(client, confirm_run_id: str) -> list:
    """The candidates of a confirm stage with each seed's test-accuracy curve."""
    text = read_artifact(client, confirm_run_id, CANDIDATES)
    candidates = [Candidate(**item) for item in json.loads(text)] if text else []
    experiment_id = client.get_run(confirm_run_id).info.experiment_id
    runs = client.search_runs(
        [experiment_id], f"tags.mlflow.parentRunId = '{confirm_run_id}' and {CONFIRM_FILTER}", max_results=10_000
    )
    for run in runs:
        config = json.loads(read_artifact(client, run.info.run_id, "config.json") or "{}")
        for candidate in candidates:
            if config and same_config(config, candidate.config):
                candidate.curves[config["seed"]] = metric_history(client, run.info.run_id, "test_acc")
    return candidates


def mean_std(values: list) -> tuple:
    """Mean and sample standard deviation (ddof 1; NaN for fewer than two values)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def welch_interval(a: list, b: list, level: float = 0.95) -> tuple:
    """mean(a) - mean(b) and its Welch t confidence interval: (difference, low, high); NaN bounds for < 2 each."""
    from scipy import stats

    difference = statistics.fmean(a) - statistics.fmean(b) if a and b else math.nan
    if len(a) < 2 or len(b) < 2:
        return difference, math.nan, math.nan
    interval = stats.ttest_ind(a, b, equal_var=False).confidence_interval(level)
    return difference, float(interval.low), float(interval.high)


def pct(value: float) -> str:
    return "—" if not math.isfinite(value) else f"{value * 100:.2f}"


def accuracy_rows(candidates: list, reference: str) -> list:
    """Per candidate: seeds, final and peak test accuracy (mean ± std, %), and the gap to the reference arm's best
    in points with its interval."""
    ref = next((c for c in candidates if c.name == reference), None)
    rows = []
    for c in candidates:
        cells = [c.name, c.trial_id, pct(c.val_acc), str(len(c.finals()))]
        for values, ref_values in ((c.finals(), ref.finals() if ref else []), (c.peaks(), ref.peaks() if ref else [])):
            mean, std = mean_std(values)
            cells.append(f"{pct(mean)} ± {pct(std)}")
            if c is ref:
                cells.append("ref")
            else:
                gap, low, high = welch_interval(values, ref_values)
                cells.append(f"{pct(gap)} [{pct(low)}, {pct(high)}]")
        rows.append(cells)
    return rows


def accuracy_header(num_seeds: int) -> tuple:
    return (
        "candidate",
        "search trial",
        "search val %",
        "seeds",
        "final test %",
        f"gap final (pts, {INTERVAL}, n={num_seeds})",
        "peak test %",
        f"gap peak (pts, {INTERVAL}, n={num_seeds})",
    )


def blocks_rows(trials: list, model: str) -> list:
    """The DGL search per block count K: trials that had it, how many completed, the best final val_acc."""
    by_k = {}
    for t in trials:
        by_k.setdefault(normalized("num_blocks", t.params.get("num_blocks"), model), []).append(t)
    rows = []
    for k, group in sorted(by_k.items()):
        best = best_trial(group, score=lambda t: t.final_val_acc, trial_id=lambda t: t.trial_id)
        completed = sum(t.outcome == "completed" for t in group)
        best_cells = [pct(best.final_val_acc), best.trial_id] if best else ["—", "—"]
        rows.append([str(k), str(len(group)), str(completed), *best_cells])
    return rows


BLOCKS_HEADER = ("K (num_blocks)", "trials", "completed", "best final val %", "trial")


def summary_tables(candidates: list, reference: str, blocks: list, markdown: bool) -> list:
    """The confirm table with its legend, then the DGL search per block count: console text or markdown lines."""
    table = markdown_table if markdown else text_table
    seeds = max((len(c.finals()) for c in candidates), default=0)
    lines = table(accuracy_header(seeds), accuracy_rows(candidates, reference))
    lines += [
        "",
        f"Test accuracy on the whole test split over {plural(seeds, 'confirm seed')}: mean ± sample std (ddof 1); "
        f"final = last epoch, peak = best epoch. Gap: candidate - {reference}, in points, with its {INTERVAL} interval "
        "over seeds.",
    ]
    if blocks:
        lines += ["", "DGL search by block count K (a trial ASHA stopped has the val accuracy of fewer epochs):", ""]
        lines += table(BLOCKS_HEADER, blocks)
    return lines
