"""Searches saved before tuner/ was split into packages resume: Ray pickled some of this project's classes under
their old module paths (the Tuner's state, the searcher's), and unpickles them on `--resume`. `install()` makes
those paths name the classes' new homes; the driver calls it before Ray restores anything."""

from __future__ import annotations

import importlib
import sys

MOVED_MODULES = {  # old module -> where it lives now; these names are free, so the old path is the new module
    "tuner.schema": "tuner.config.schema",
    "tuner.space": "tuner.config.space",
    "tuner.progress": "tuner.search.progress",
}
MOVED_CLASSES = {  # old modules that are packages now: the pickled class is set on the package
    ("tuner.tracking", "MLflowTracker"): "tuner.tracking.trial_runs",
}


def install() -> None:
    for old, new in MOVED_MODULES.items():
        sys.modules.setdefault(old, importlib.import_module(new))
    for (package, name), home in MOVED_CLASSES.items():
        setattr(importlib.import_module(package), name, getattr(importlib.import_module(home), name))
