"""The console during a search: one line when where the search stands changes (a trial starts, reports an epoch or
ends), otherwise one every HEARTBEAT_S seconds with the clock moved on; never the same line twice. It stands in for
Ray's full status table (which `--verbose` brings back):

    [03:12] 1 done, 2 running, 1 stopped of 6 | best val_acc 0.4120 (#2) | #4 epoch 2/3, #5 epoch 1/3 | ETA <= 04:30

The ETA is an upper bound: the epochs the trials not yet ended could still run, at the rate epochs have been
finished so far; early stopping can only make it shorter.
"""

from __future__ import annotations

import time
from typing import Any

from ray.tune import ProgressReporter

from tuner.outcome import finite_number, trial_outcome
from tuner.tracking.views import trial_number

HEARTBEAT_S = 30
ENDED = ("TERMINATED", "ERROR")


def clock(seconds: float) -> str:
    """`mm:ss`, or `h:mm:ss` from an hour on."""
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


def _epoch(trial) -> int:
    return int((trial.last_result or {}).get("epoch") or 0)


def progress_state(trials: list, num_samples: int, max_epochs: int, metric: str, mode: str) -> list[str]:
    """The parts of the line that say where the search stands (how trials ended, the best, who runs which epoch):
    the line is printed again only when these change, or when the heartbeat is due."""
    outcomes = {"completed": 0, "stopped": 0, "diverged": 0, "failed": 0}
    running: list = []
    best: tuple[float, Any] | None = None  # (value, trial)
    ids = [t.trial_id for t in trials]
    for trial in trials:
        result = trial.last_result or {}
        if trial.status in ENDED:
            outcomes[trial_outcome(result, trial.status == "ERROR")] += 1
        elif trial.status == "RUNNING":
            running.append(trial)
        value = result.get(metric)
        if (
            finite_number(value)
            and not result.get("diverged")
            and (best is None or (value > best[0] if mode == "max" else value < best[0]))
        ):
            best = (value, trial)
    pending = sum(t.status == "PENDING" for t in trials)
    counts = [f"{outcomes['completed']} done", f"{len(running)} running", f"{outcomes['stopped']} stopped"]
    counts += [f"{pending} starting"] if pending else []
    counts += [f"{n} {name}" for name, n in outcomes.items() if name in ("diverged", "failed") and n]
    parts = [f"{', '.join(counts)} of {num_samples}"]
    if best is not None:
        parts.append(f"best {metric} {best[0]:.4f} (#{trial_number(best[1].trial_id, ids)})")
    if running:
        parts.append(", ".join(f"#{trial_number(t.trial_id, ids)} epoch {_epoch(t)}/{max_epochs}" for t in running))
    return parts


def progress_line(
    trials: list, elapsed_s: float, num_samples: int, max_epochs: int, metric: str, mode: str, epochs_before: int = 0
) -> str:
    """The line for the trials as Ray holds them (status, last_result, trial_id); epochs_before: epochs already run
    when this driver started (a resumed search), left out of the rate."""
    parts = progress_state(trials, num_samples, max_epochs, metric, mode)
    parts[0] = f"[{clock(elapsed_s)}] {parts[0]}"
    eta = eta_seconds(trials, elapsed_s, num_samples, max_epochs, epochs_before)
    if eta is not None:
        parts.append(f"ETA <= {clock(eta)}")
    return " | ".join(parts)


def eta_seconds(
    trials: list, elapsed_s: float, num_samples: int, max_epochs: int, epochs_before: int = 0
) -> float | None:
    """Seconds left at most: epochs still possible / epochs finished per second so far. None before the first."""
    finished = sum(_epoch(t) for t in trials) - epochs_before
    if finished == 0 or elapsed_s <= 0:
        return None
    open_trials = [t for t in trials if t.status not in ENDED]
    left = sum(max_epochs - _epoch(t) for t in open_trials) + max(num_samples - len(trials), 0) * max_epochs
    return left * elapsed_s / finished


class ProgressLine(ProgressReporter):
    """A Ray Tune progress reporter that prints `progress_line` on each change and every `heartbeat_s` seconds."""

    def __init__(
        self,
        num_samples: int,
        max_epochs: int,
        metric: str,
        mode: str,
        heartbeat_s: float = HEARTBEAT_S,
        print_fn=None,
    ):
        self.num_samples, self.max_epochs, self.metric, self.mode = num_samples, max_epochs, metric, mode
        self.heartbeat_s, self.print_fn = heartbeat_s, print_fn
        self._start = time.time()
        self._last_state: list[str] | None = None
        self._last_print = 0.0
        self._epochs_before: int | None = None

    def setup(
        self,
        start_time: float | None = None,
        total_samples: int | None = None,
        metric: str | None = None,  # the space's, given to __init__
        mode: str | None = None,
        **kwargs,
    ) -> None:
        self._start = start_time or self._start

    def should_report(self, trials: list, done: bool = False) -> bool:
        if self._epochs_before is None:  # the first look: a resumed search starts with epochs already run
            self._epochs_before = sum(_epoch(t) for t in trials)
        state = progress_state(trials, self.num_samples, self.max_epochs, self.metric, self.mode)
        # Ray asks on every step of its loop; a line the same as the last but for the clock and the ETA says nothing
        return state != self._last_state or time.time() - self._last_print >= self.heartbeat_s

    def report(self, trials: list, done: bool, *sys_info: str) -> None:
        self._last_print = time.time()
        self._last_state = progress_state(trials, self.num_samples, self.max_epochs, self.metric, self.mode)
        # looked up when used: Ray on a cluster swaps builtins.print, and Tune pickles this reporter
        (self.print_fn or print)(
            progress_line(
                trials,
                self._last_print - self._start,
                self.num_samples,
                self.max_epochs,
                self.metric,
                self.mode,
                self._epochs_before or 0,
            ),
            flush=True,
        )
