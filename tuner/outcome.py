"""How a trial ended, decided in one place (the searcher tells Optuna, the tracker tags MLflow).

The trainable marks its own ends in its per-epoch result: `finished=True` on the last epoch of its budget,
`diverged=True` (once, then it stops) when the loss went NaN/inf. Anything else that ended without an error
was stopped early by the scheduler (ASHA).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TypeGuard

OUTCOMES = ("completed", "stopped", "diverged", "failed")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def finite_number(value: object) -> TypeGuard[float]:
    """A real, finite number (not a bool, not NaN/inf): what may be told to Optuna or logged to MLflow."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def trial_outcome(last_result: dict | None, error: bool) -> str:
    """'completed' | 'stopped' | 'diverged' | 'failed' from the trial's last result and whether it raised."""
    last = last_result or {}
    if last.get("diverged"):
        return "diverged"  # checked first: a run that diverged and then crashed is still best described as diverged
    if error:
        return "failed"
    if last.get("finished"):
        return "completed"
    return "stopped"


def trial_error_text(trial) -> str:
    """Ray's error file of a trial: its latest failure with the stack where it was raised; '' if it has none. Ray writes
    it before it tells the callbacks that the trial failed or is being retried."""
    path = trial.error_file
    if not path or not Path(path).is_file():
        return ""
    return ANSI_ESCAPE.sub("", Path(path).read_text(errors="replace"))  # Ray colours the worker's name


def ended_for_good(result) -> bool:
    """Whether a trial ended for good: it ran its epochs (`finished`), diverged, used up its retries (an error), or
    the scheduler stopped it (Ray marks that result `done`). A trial stopped by Ctrl-C has none of these. (`done` alone
    is not enough: Ray's saved state can miss it on a trial that returned, so a restored one would look unended.)"""
    metrics = result.metrics or {}
    return result.error is not None or bool(metrics.get("finished") or metrics.get("diverged") or metrics.get("done"))
