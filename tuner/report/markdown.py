"""The gap table as text: on the console and in report.md, with the searches and the figures."""

from __future__ import annotations

import time
from pathlib import Path

from tuner.text import fmt_value, markdown_table, plural, text_table

TABLE_HEADER = (
    "model",
    "trainer",
    "val acc*",
    "test acc",
    "gap val",
    "gap test",
    "epochs",
    "wall",
    "trial",
    "searched hyperparameters",
)
TABLE_LEGEND = (
    "* val acc: the best trial's final epoch (as the search ranks them); epochs: trained/budget; "
    "gap: trainer - backprop, in points (+ = ahead)"
)


def fmt_wall(seconds) -> str:
    if seconds is None:
        return "—"
    s = round(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def table_cells(row: dict) -> tuple:
    def pct(v):
        return "—" if v is None else f"{v * 100:.2f}%"

    def gap(v):
        return "ref" if row["trainer"] == "backprop" else "—" if v is None else f"{v:+.2f}"

    t = row["trial"]
    trial = t.trial_id if t.outcome == "completed" else f"{t.trial_id} ({t.outcome})"
    return (
        row["model"],
        row["trainer"],
        pct(row["val_acc"]),
        pct(row["test_acc"]),
        gap(row["gap_val"]),
        gap(row["gap_test"]),
        f"{row['epochs']}/{row['planned_epochs']}",
        fmt_wall(row["wall_s"]),
        trial,
        " ".join(f"{k}={fmt_value(v, digits=3)}" for k, v in row["hyperparameters"].items()),
    )


def console_table(rows: list) -> list:
    return text_table(TABLE_HEADER, [table_cells(r) for r in rows])


def search_summary(search) -> str:
    counts: dict[str, int] = {}
    for t in search.trials:
        counts[t.outcome] = counts.get(t.outcome, 0) + 1
    outcomes = ", ".join(f"{n} {o}" for o, n in sorted(counts.items(), key=lambda kv: -kv[1])) or "none yet"
    num_trials = plural(len(search.trials), "trial")
    return f"{search.experiment} / {search.name} [{search.status}]: {num_trials} ({outcomes})"


def write_markdown(path: Path, uri: str, searches: list, rows: list, notes: list, made: list, skipped: list) -> None:
    num_trials = plural(sum(len(s.trials) for s in searches), "trial")
    lines = [
        "# Gap report: local learning vs backprop",
        "",
        f"Store `{uri}`, {plural(len(searches), 'search')}, {num_trials}; generated {time.strftime('%Y-%m-%d %H:%M')}.",
        "",
    ]
    if rows:
        lines += markdown_table(TABLE_HEADER, [table_cells(r) for r in rows])
        lines += ["", TABLE_LEGEND.replace("*", "\\*", 1), ""]
    lines += [f"- {n}" for n in notes] + ([""] if notes else [])
    lines += ["## Searches", ""] + [f"- {search_summary(s)}" for s in searches] + [""]
    if made or skipped:
        lines += ["## Figures", ""]
        for png, caption in made:
            lines += [f"**{caption}**", "", f"![{caption}]({png.name})", ""]
        lines += [f"- {s}" for s in skipped]
    path.write_text("\n".join(lines).rstrip() + "\n")
