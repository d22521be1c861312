"""The record of each search on disk, so that an interrupted one can be found and resumed.

Each search is one Ray experiment folder `<storage>/<space>-<YYYYmmdd-HHMMSS>/`; beside Ray's own state we keep
`search.json`: which space, its overrides, the MLflow parent run, and whether the search finished.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

RECORD = "search.json"


@dataclass
class SearchRecord:
    name: str
    space: str                 # the space's name
    space_path: str
    overrides: dict            # the command-line overrides it was started with (reapplied on resume)
    mlflow_uri: str
    experiment: str            # MLflow experiment name
    parent_run_id: str = ""
    status: str = "running"    # running | interrupted | finished
    created: float = field(default_factory=time.time)

    def save(self, folder: Path) -> None:
        """Atomically: a crash mid-write must not leave a half-written record."""
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{RECORD}.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, folder / RECORD)

    @classmethod
    def load(cls, folder: Path) -> "SearchRecord":
        return cls(**json.loads((Path(folder) / RECORD).read_text()))


def absolute_tracking_uri(tracking_uri: str) -> str:
    """`sqlite:///mlflow.db` is relative to the working directory; pin it, so a resumed search finds it again."""
    if tracking_uri.startswith("sqlite:///") and not tracking_uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(tracking_uri[len("sqlite:///"):]).resolve())
    return tracking_uri


def new_name(space: str) -> str:
    return f"{space}-{time.strftime('%Y%m%d-%H%M%S')}"


def unfinished(storage: Path, space: str) -> list[Path]:
    """Folders of this space's searches that did not finish, newest last."""
    if not storage.is_dir():
        return []
    found = []
    for record_file in storage.glob(f"*/{RECORD}"):
        try:
            record = SearchRecord.load(record_file.parent)
        except (ValueError, TypeError, OSError):
            continue
        if record.space == space and record.status != "finished":
            found.append((record.created, record_file.parent))
    return [folder for _, folder in sorted(found)]
