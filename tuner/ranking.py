"""Which trial is best: one rule, used by the search's own summary, the study and the report, so they never disagree.

A trial is ranked by its final epoch's value of the search metric: that is the epoch whose checkpoint the search
keeps and evaluates on the test set, so the val and test numbers shown for it belong to the same weights. Trials
that ran the whole budget rank before every trial that did not: one that ASHA stopped at an early rung was scored
after fewer epochs, and a score after 2 epochs is not comparable with one after 8. A trial that diverged is never
ranked (its last weights are NaN, whatever its last finite value said), nor one without a finite value. Ties go to
the lower trial id, so the same trials ranked twice (a search summarised, killed during the summary, resumed) give
the same best.
"""

from __future__ import annotations

import math


def final_score(value, outcome: str) -> float | None:
    """The value a trial is ranked by, or None when it cannot be ranked."""
    if value is None or outcome == "diverged" or not math.isfinite(value):
        return None
    return value


def rank(trials, score, trial_id, mode: str = "max", completed=lambda trial: True) -> list:
    """The `trials` that have a score (`score(trial)` not None), best first, those for which `completed(trial)` (it
    ran every epoch of its budget) before all others; `trial_id(trial)` breaks ties."""
    if mode not in ("max", "min"):
        raise ValueError(f"rank: mode must be 'max' or 'min', got {mode!r}")
    scored = sorted((t for t in trials if score(t) is not None), key=lambda t: str(trial_id(t)))
    scored.sort(key=score, reverse=mode == "max")  # stable: equal scores keep the trial-id order
    scored.sort(key=lambda t: not completed(t))  # stable: completed trials first, each group in score order
    return scored


def best_trial(trials, score, trial_id, mode: str = "max", completed=lambda trial: True):
    """The first of `rank(...)`, or None when no trial has a score."""
    ranked = rank(trials, score, trial_id, mode, completed)
    return ranked[0] if ranked else None


def ran_every_epoch(trial) -> bool:
    """For the report's and the study's trials (tuner/report/store.Trial): the trainable marked its last epoch."""
    return trial.outcome == "completed"
