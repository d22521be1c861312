"""Every error a user is meant to read, and the helpers that make a library's error text one line.

A UserError's message is the whole of what the user sees (the CLIs print it and exit with status 2).
"""

from __future__ import annotations

import re


class UserError(Exception):
    """Something the user must fix (a flag, a file, a service); its message is the one line they see."""


class ConfigError(UserError, ValueError):
    """A bad key or value."""


class SpaceError(ConfigError):
    """A bad search space; the message is one line naming the file and the key."""


class DataError(UserError):
    """The data folder is missing or malformed; the message is the one line a user sees."""


class ClusterError(UserError):
    """Ray could not be started or joined, or the cluster cannot hold this search; one line for the user."""


class SetupError(UserError):
    """Storage, tracking or resume problem found before any trial runs; one line for the user."""


def one_line(error: BaseException, limit: int = 200) -> str:
    """What a library's exception says, as one short line for a UserError (libraries raise multi-line texts)."""
    text = " ".join(str(error).split()) or type(error).__name__
    if "Max retries exceeded" in text or "Connection refused" in text or "Failed to establish" in text:
        return "cannot connect to the server"
    return text[:limit] + ("..." if len(text) > limit else "")


def error_line(text: str, limit: int = 500) -> str:
    """The last line of a traceback that names the exception ("RuntimeError: ..."), shortened to `limit`."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    named = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt|Exit)\b", line)]
    line = (named or lines or ["unknown error"])[-1]
    return line if len(line) <= limit else line[: limit - 1] + "…"
