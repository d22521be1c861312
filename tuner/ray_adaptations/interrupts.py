"""Ctrl-C: the driver alone decides how a search stops, and it stops in seconds.

- A terminal sends Ctrl-C's SIGINT to its whole process group, Ray's workers included, where it raises
  KeyboardInterrupt wherever the trial happens to be (a traceback on the console, a trial that looks crashed).
  Each worker ignores SIGINT (environment.WORKER_SETUP); Tune's handler in the driver stops the search.
- On a stopped search Tune asks each trial's actor to stop, and that request waits behind the epoch in progress;
  Tune kills the actor only 10 s later (TuneController._actor_force_cleanup_timeout, hard-coded). A trial keeps
  nothing of an unfinished epoch (it checkpoints after each one, and Tune drops the results of a trial it is
  stopping), so the search's final clean-up kills the actors at once (stop_trials_at_once).
- When Ray ends a worker at shutdown it raises SystemExit wherever the worker is, also inside a weakref callback,
  where Python prints it as an ignored exception with its traceback: the worker's last line on the console, on
  a search that went well. Workers drop that one report (quiet_exit_at_shutdown) and print every other.
- `ray.init` replaces the driver's SIGTERM handler; sigterm_as_ctrl_c makes a reboot or `kill` stop the search as
  gracefully as Ctrl-C.
"""

from __future__ import annotations

import importlib
import signal
import sys
from typing import Any

from ray.tune.execution.tune_controller import TuneController


def setup_worker() -> None:
    """environment.WORKER_SETUP runs this in each worker process as it starts, in its main thread."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    quiet_exit_at_shutdown()


def quiet_exit_at_shutdown() -> None:
    def unraisable(report) -> None:
        if not isinstance(report.exc_value, SystemExit):
            sys.__unraisablehook__(report)

    sys.unraisablehook = unraisable


class StopTrialsAtOnce(TuneController):
    """Tune's controller, but its final clean-up kills the trials' actors instead of waiting for them."""

    def _cleanup_trials(self):
        self._cleaning_up = True
        super()._cleanup_trials()

    def _remove_actor(self, tracked_actor):
        if getattr(self, "_cleaning_up", False):
            self._actor_manager.remove_actor(tracked_actor, kill=True)  # what Tune does 10 s later
        else:
            super()._remove_actor(tracked_actor)


def stop_trials_at_once() -> None:
    """Make Tune (in this driver) build StopTrialsAtOnce for the searches it runs."""
    tune_module: Any = importlib.import_module("ray.tune.tune")  # Any: the class is replaced, not assigned to
    tune_module.TuneController = StopTrialsAtOnce  # the name tune.run builds


def _sigterm_as_ctrl_c(signum, frame) -> None:
    signal.raise_signal(signal.SIGINT)


def sigterm_as_ctrl_c() -> None:
    signal.signal(signal.SIGTERM, _sigterm_as_ctrl_c)
