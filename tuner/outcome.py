"""How a trial ended, decided in one place (the searcher tells Optuna, the tracker tags MLflow).

The trainable marks its own ends in its per-epoch result: `finished=True` on the last epoch of its budget,
`diverged=True` (once, then it stops) when the loss went NaN/inf. Anything else that ended without an error
was stopped early by the scheduler (ASHA).
"""

from __future__ import annotations

import math

OUTCOMES = ("completed", "stopped", "diverged", "failed")


def finite_number(value) -> bool:
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
