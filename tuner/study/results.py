"""What a study's searches chose and what the confirm stage measured, read back from MLflow.

Candidates: in each repetition of each arm's search, its best trial among those that ran every epoch of the budget
(tuner/ranking.py), and where the arm has write-up values, its best such trial with those values. A candidate
without such a trial is kept, as "never completed", not dropped. Each candidate is re-trained with its repetition's
confirm seeds; a seed counts only if its run finished every epoch (one that failed or diverged is listed, not
counted). The tables and intervals are in tuner/study/tables.py.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from tuner.config.study_file import normalized
from tuner.ranking import best_trial, ran_every_epoch
from tuner.tracking.reader import metric_history, read_artifact
from tuner.tracking.store import CONFIRM_FILTER, OUTCOME, child_runs

CANDIDATES = "candidates.json"  # the confirm stage parent run's artifact: what was re-trained, and why


@dataclass
class Candidate:
    name: str  # "dgl", "dgl @ num_blocks=13", ...: the same name in every repetition
    arm: str
    trial_id: str  # the search trial whose config it is; "" when no trial of it ran every epoch
    val_acc: float | None  # that trial's final validation accuracy in the search
    config: dict  # the trial's resolved config (its config.json), search seed included
    repetition: int = 0
    seeds: list = field(default_factory=list)  # the confirm seeds it is re-trained with
    note: str = ""  # why it has no trial
    curves: dict = field(default_factory=dict)  # confirm seed -> [(epoch, test_acc)], seeds that ran every epoch
    unfinished: list = field(default_factory=list)  # confirm seeds whose run did not finish every epoch

    def finals(self) -> list:
        return [curve[-1][1] for _, curve in sorted(self.curves.items()) if curve]

    def peaks(self) -> list:
        """The highest test accuracy over epochs, per seed: an epoch selected on the test split itself."""
        return [max(v for _, v in curve) for _, curve in sorted(self.curves.items()) if curve]


def same_config(a: dict, b: dict) -> bool:
    """Whether two resolved configs are the same config but for the seed (a confirm run belongs to its candidate)."""
    return {k: v for k, v in a.items() if k != "seed"} == {k: v for k, v in b.items() if k != "seed"}


def pick_candidates(trials_by_search: dict, write_up: dict, model: str, seeds_of=lambda repetition: ()) -> list:
    """`trials_by_search`: (arm, repetition) -> that search's trials. Per search, the best trial that ran every epoch
    and, where the arm has write-up values, the best such trial with those values unless it is the best already."""
    candidates = []

    def add(name: str, arm: str, repetition: int, trials: list, what: str) -> None:
        completed = [t for t in trials if ran_every_epoch(t)]
        best = best_trial(completed, score=lambda t: t.final_val_acc, trial_id=lambda t: t.trial_id)
        seeds = list(seeds_of(repetition))
        if best is None:
            ran = ", ".join(f"{sum(t.outcome == o for t in trials)} {o}" for o in sorted({t.outcome for t in trials}))
            note = f"no trial{what} ran every epoch ({ran or 'none ran'})"
            candidates.append(Candidate(name, arm, "", None, {}, repetition, seeds, note))
        elif not any(c.trial_id == best.trial_id for c in candidates):
            config = dict(best.params)
            candidates.append(Candidate(name, arm, best.trial_id, best.final_val_acc, config, repetition, seeds))

    for (arm, repetition), trials in trials_by_search.items():
        add(arm, arm, repetition, trials, "")
        values = write_up.get(arm)
        if values:
            label = " ".join(f"{k}={v}" for k, v in values.items())
            matching = [t for t in trials if all(normalized(k, t.params.get(k), model) == v for k, v in values.items())]
            add(f"{arm} @ {label}", arm, repetition, matching, f" with {label}")
    return candidates


def confirm_configs(candidates: list) -> list:
    """Every (config, seed) the candidates need, once: two candidates of one repetition with the same config (two
    arms whose searches chose it) share their runs."""
    configs = []
    for c in candidates:
        for seed in c.seeds if c.trial_id else ():
            config = {**c.config, "seed": seed}
            if config not in configs:
                configs.append(config)
    return configs


def save_candidates(candidates: list) -> str:
    return json.dumps(
        [{k: v for k, v in asdict(c).items() if k not in ("curves", "unfinished")} for c in candidates], indent=1
    )


def load_confirmed(client, confirm_run_id: str) -> list:
    """The candidates of a confirm stage with each confirm seed's test-accuracy curve (seeds that ran every epoch),
    and the seeds that did not."""
    text = read_artifact(client, confirm_run_id, CANDIDATES)
    candidates = [Candidate(**item) for item in json.loads(text)] if text else []
    for run in child_runs(client, confirm_run_id, CONFIRM_FILTER):
        config = json.loads(read_artifact(client, run.info.run_id, "config.json") or "{}")
        if not config:
            continue
        curve = metric_history(client, run.info.run_id, "test_acc")
        finished = run.data.tags.get(OUTCOME) == "completed" and len(curve) >= config.get("epochs", 0)
        for candidate in candidates:
            seed = config["seed"]
            if same_config(config, candidate.config) and (seed in candidate.seeds or not candidate.seeds):
                if finished:
                    candidate.curves[seed] = curve
                else:
                    candidate.unfinished.append(seed)
    return candidates


def blocks_rows(trials_by_arm: dict, model: str) -> list:
    """Per DGL arm, per block count K: trials that had it (over the arm's repetitions), how many ran every epoch, the
    best final val_acc among those."""
    rows = []
    for arm, trials in trials_by_arm.items():
        by_k: dict[int, list] = {}
        for t in trials:
            by_k.setdefault(normalized("num_blocks", t.params.get("num_blocks"), model), []).append(t)
        for k, group in sorted(by_k.items()):
            completed = [t for t in group if ran_every_epoch(t)]
            best = best_trial(completed, score=lambda t: t.final_val_acc, trial_id=lambda t: t.trial_id)
            best_cells = [f"{best.final_val_acc * 100:.2f}", best.trial_id] if best else ["—", "—"]
            rows.append([arm, str(k), str(len(group)), str(len(completed)), *best_cells])
    return rows


BLOCKS_HEADER = ("arm", "K (num_blocks)", "trials", "ran every epoch", "best final val %", "trial")
