"""A study's tables: per candidate, final and peak test accuracy over repetitions x confirm seeds, the gap to the
reference arm with an interval that includes the search's own variance, and the share of the write-up baseline's gap
that each other candidate closes. One rule, shared by the study's own summary and the report.

The unit of replication is a repetition: a whole search (its searcher seed and trial seeds) and the re-training of
its winner with new seeds. With two or more repetitions per side, the gap's interval is Welch's t over the
repetitions' means (each the mean over its seeds), so it covers search-to-search and seed-to-seed variance, but not
another validation split or training subset (split_seed is fixed). With one repetition it is over seeds alone, and
the header says so.
"""

from __future__ import annotations

import math
import statistics

from tuner.study.results import BLOCKS_HEADER
from tuner.text import markdown_table, plural, text_table

LEVEL = 0.95


def mean_std(values: list) -> tuple:
    """Mean and sample standard deviation (ddof 1; NaN for fewer than two values)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def welch_interval(a: list, b: list, level: float = LEVEL) -> tuple:
    """mean(a) - mean(b) and its Welch t confidence interval: (difference, low, high); NaN bounds for < 2 each."""
    from scipy import stats

    difference = statistics.fmean(a) - statistics.fmean(b) if a and b else math.nan
    if len(a) < 2 or len(b) < 2:
        return difference, math.nan, math.nan
    interval = stats.ttest_ind(a, b, equal_var=False).confidence_interval(level)
    return difference, float(interval.low), float(interval.high)


def pct(value: float) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value * 100:.2f}"


def by_name(candidates: list) -> dict:
    """name -> its candidates, one per repetition, in the order names first appear."""
    groups: dict[str, list] = {}
    for c in candidates:
        groups.setdefault(c.name, []).append(c)
    return groups


def units(group: list, kind: str) -> tuple:
    """(every counted seed's value, one mean per repetition that has any): `kind` is 'finals' or 'peaks'."""
    per_repetition = [getattr(c, kind)() for c in group]
    values = [v for rep in per_repetition for v in rep]
    return values, [statistics.fmean(rep) for rep in per_repetition if rep]


def gap(group: list, reference: list, kind: str) -> tuple:
    """(difference, low, high, what the interval is over) of a candidate's mean against the reference's."""
    values, means = units(group, kind)
    ref_values, ref_means = units(reference, kind)
    if len(means) >= 2 and len(ref_means) >= 2:
        return (*welch_interval(means, ref_means), "repetitions")
    return (*welch_interval(values, ref_values), "seeds")


def interval_label(groups: dict) -> str:
    repetitions = max((sum(bool(c.curves) for c in g) for g in groups.values()), default=0)
    if repetitions >= 2:
        return f"{LEVEL:.0%}, Welch t over repetition means"
    return f"{LEVEL:.0%}, Welch t over seeds only"


def closed_share(group: list, reference: list, baseline: list) -> str:
    """The share of the baseline's final-accuracy gap to the reference that this candidate closes (1 = all of it)."""
    mean, base, ref = (statistics.fmean(units(g, "finals")[0] or [math.nan]) for g in (group, baseline, reference))
    if not all(map(math.isfinite, (mean, base, ref))):
        return "—"
    if ref - base <= 0:
        return "no gap to close"
    return f"{(mean - base) / (ref - base):+.2f}"


def accuracy_rows(candidates: list, reference: str, baseline: str = "") -> list:
    groups = by_name(candidates)
    ref = groups.get(reference, [])
    rows = []
    for name, group in groups.items():
        ran = [c for c in group if c.trial_id]
        counted = sum(len(c.curves) for c in group)
        unfinished = sum(len(c.unfinished) for c in group)
        trials = ", ".join(c.trial_id or "never completed" for c in group)
        vals = [c.val_acc for c in ran if c.val_acc is not None]
        cells = [name, trials, pct(statistics.fmean(vals)) if vals else "—"]
        cells.append(f"{len(ran)}/{len(group)}")
        cells.append(str(counted) + (f" (+{unfinished} unfinished, not counted)" if unfinished else ""))
        for kind in ("finals", "peaks"):
            mean, std = mean_std(units(group, kind)[0])
            cells.append(f"{pct(mean)} ± {pct(std)}")
            if name == reference:
                cells.append("ref")
            else:
                difference, low, high, _ = gap(group, ref, kind)
                cells.append(f"{pct(difference)} [{pct(low)}, {pct(high)}]")
        if baseline:
            share = "ref" if name == reference else "baseline" if name == baseline else None
            cells.append(share or closed_share(group, ref, groups.get(baseline, [])))
        rows.append(cells)
    return rows


def accuracy_header(interval: str, baseline: str = "") -> tuple:
    header = (
        "candidate",
        "search trials (per repetition)",
        "search val % (mean)",
        "repetitions with a trial",
        "seeds counted",
        "final test %",
        f"gap final (pts, {interval})",
        "peak test % (epoch selected on test)",
        f"gap peak (pts, {interval})",
    )
    return (*header, f"share of {baseline}'s gap closed") if baseline else header


def never_completed(candidates: list) -> list:
    return [f"{c.name}, repetition {c.repetition}: {c.note}" for c in candidates if not c.trial_id]


def summary_tables(candidates: list, reference: str, blocks: list, markdown: bool, baseline: str = "") -> list:
    """The confirm table with its legend, then the DGL search per block count: console text or markdown lines."""
    table = markdown_table if markdown else text_table
    groups = by_name(candidates)
    interval = interval_label(groups)
    lines = table(accuracy_header(interval, baseline), accuracy_rows(candidates, reference, baseline))
    repetitions = max((len(g) for g in groups.values()), default=0)
    lines += [
        "",
        f"Test accuracy on the whole test split, mean ± sample std over every counted seed of "
        f"{plural(repetitions, 'repetition')} of the search (a seed counts when its run finished every epoch); final "
        "= last epoch; peak = the best epoch, chosen on the test split itself (optimistic). Gap: candidate - "
        f"{reference}, in points, with its interval ({interval}"
        + (
            ": each repetition has its own searcher and trial seeds and re-trains its winner with new seeds; it does "
            "not cover another validation split or training subset)."
            if "repetition" in interval
            else ")."
        ),
    ]
    if baseline:
        lines.append(
            f"Share closed: (candidate - {baseline}) / ({reference} - {baseline}) of the final means; 1 closes "
            "the whole gap, above 1 passes the reference; a ratio of noisy means, read it with the intervals."
        )
    missing = never_completed(candidates)
    if missing:
        lines += ["", "Not confirmed (no trial ran every epoch of the budget):", *(f"- {m}" for m in missing)]
    if blocks:
        lines += ["", "DGL searches by block count K (only trials that ran every epoch are ranked):", ""]
        lines += table(BLOCKS_HEADER, blocks)
    return lines
