"""Files written whole: a reader, or a resumed search, sees the old file or the new one, never a torn one."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, data: bytes) -> None:
    """Write, flush to disk, then rename over `path`: a reader (or a resumed search) sees the old or the new file,
    never a torn one, whatever moment the writer is killed at."""
    atomic_save(path, lambda tmp: tmp.write_bytes(data))


def atomic_save(path: Path, write: Callable[[Path], object]) -> None:
    """atomic_write for a writer that takes a path (e.g. a library's own `save(path)`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
