"""The gap table: the best trial of each model x trainer (tuner/ranking.py's rule), and how far each method is
from backprop on the same model."""

from __future__ import annotations

import time

from models.catalog import CFGS, TRAINERS
from tuner.config.schema import KEYS
from tuner.ranking import best_trial, ran_every_epoch
from tuner.tracking.reader import Trial, load_searches, metric_history

# tables and figures list models and trainers in the catalog's order (models/catalog.py)
MODELS = tuple(CFGS)
CURVE_METRICS = ("train_loss", "val_loss", "train_acc", "val_acc", "epoch_s")
# shown for a trial whose search did not record which keys it searched (no best.* params, nothing varies)
FALLBACK_KEYS = ("lr", "weight_decay")


def in_order(names, known) -> list:
    """The distinct `names`, those in `known` first in its order, then the rest alphabetically."""
    return sorted(set(names), key=lambda n: (known.index(n) if n in known else len(known), n))


def best_trials(searches: list) -> dict:
    """(model, trainer) -> the best trial by final val_acc, over every selected search."""
    groups: dict[tuple[str, str], list[Trial]] = {}
    for search in searches:
        for t in search.trials:
            groups.setdefault((t.model, t.trainer), []).append(t)
    best = {
        key: best_trial(trials, lambda t: t.final_val_acc, lambda t: t.trial_id, completed=ran_every_epoch)
        for key, trials in groups.items()
    }
    return {key: t for key, t in best.items() if t is not None}


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
    for model in in_order([m for m, _ in best], MODELS):
        reference = best.get((model, "backprop"))
        for trainer in in_order([t for m, t in best if m == model], TRAINERS):
            t = best[(model, trainer)]
            val = t.final_val_acc
            test = t.metrics.get("test_acc")
            keys = searched.get(t.parent_run_id) or _fallback_keys(trainer)
            epochs = max((e for e, _ in t.histories.get("val_acc", [])), default=None)
            row = dict(
                model=model,
                trainer=trainer,
                val_acc=val,
                test_acc=test,
                epochs=epochs,
                planned_epochs=t.params.get("epochs"),
                wall_s=wall_seconds(t),
                trial=t,
                hyperparameters={k: t.params.get(k) for k in keys},
                gap_val=None,
                gap_test=None,
            )
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
    for model in in_order([m for m, _ in best], MODELS):
        trainers = in_order([t for m, t in best if m == model], TRAINERS)
        if len(trainers) == 1:
            what = "nothing to compare it against" if trainers[0] == "backprop" else "no backprop baseline, so no gap"
            notes.append(f"{model}: only {trainers[0]} has results — {what}.")
        elif "backprop" not in trainers:
            notes.append(f"{model}: no backprop results — gaps left blank.")
    return notes
