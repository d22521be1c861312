"""How values and tables are written for people: one rule each, shared by the search summary, the report and the
error messages."""

from __future__ import annotations

import json


def fmt_value(value, digits: int = 4) -> str:
    """A config value in a table or a summary line: None as '-', a float to `digits` significant digits."""
    if value is None:
        return "-"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def yaml_value(value) -> str:
    """A value as YAML would show it (null, true, "text", 1e-05), a container by its kind: for error messages that
    quote what a file said."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:g}" if isinstance(value, float) else str(value)
    if isinstance(value, (list, dict)):
        return ("a list" if value else "an empty list") if isinstance(value, list) else "a mapping"
    return json.dumps(value) if value is None or isinstance(value, (str, bool)) else type(value).__name__


def plural(n: int, noun: str) -> str:
    suffix = "" if n == 1 else "es" if noun.endswith(("s", "ch", "sh", "x")) else "s"
    return f"{n} {noun}{suffix}"


def text_table(header, rows, indent: str = "") -> list[str]:
    """Left-aligned columns two spaces apart, for a console: the header line, then one line per row."""
    lines = [list(header)] + [list(row) for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return [(indent + "  ".join(cell.ljust(width) for cell, width in zip(line, widths))).rstrip() for line in lines]


def markdown_table(header, rows) -> list[str]:
    """A GitHub-flavoured markdown table (a '|' inside a cell is escaped)."""

    def line(cells) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    return [line(header), "|" + "---|" * len(header)] + [line(row) for row in rows]
