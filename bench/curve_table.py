"""A recorded table of learning curves (bench/record_curves.py's file) and the config a search's proposal maps to.

A searcher proposes any point of the space's distributions; the table holds a few hundred trained ones. A proposal
is served the recorded config nearest to it, in the unit cube Optuna's samplers themselves work in: each number
scaled to its range (log-scaled where the space says log), each choice 0 if equal and 1 if not, a conditional key
absent on one side and present on the other 1. So every method searches the space exactly as the space file
defines it, and every method's proposals are answered by the same rule.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from tuner.config.dimension import Branch, Dimension, same


@dataclass(frozen=True)
class Curve:
    """One recorded config: what it was, and per epoch its val_acc and the CPU seconds the epoch took."""

    index: int
    config: dict  # the searched keys only, as the space's sampler drew them
    val_acc: tuple
    cpu_s: tuple
    diverged: bool  # its last epoch's loss was no longer finite (the curve ends there)

    @property
    def final(self) -> float | None:
        """What a search ranks this config by if it runs to the end (tuner/ranking.py: never a diverged one)."""
        return None if self.diverged or not self.val_acc else self.val_acc[-1]


@dataclass(frozen=True)
class CurveTable:
    header: dict  # how it was recorded (record_curves.header)
    curves: tuple[Curve, ...]

    @property
    def best_final(self) -> float:
        """The best a search of this table can end with: the highest final val_acc of any recorded config."""
        return max(curve.final for curve in self.curves if curve.final is not None)

    def nearest(self, config: dict, params: dict[str, Dimension]) -> Curve:
        """The recorded config closest to `config` over the space's searched `params` (ties: the lower index)."""
        return min(self.curves, key=lambda curve: (distance(config, curve.config, params), curve.index))


def coordinate(value, hull: Branch) -> float:
    """A number's position in its range (a searched key's hull), 0..1, on the scale the space samples it on."""
    if hull.log:
        return math.log(value / hull.low) / math.log(hull.high / hull.low)
    return (value - hull.low) / (hull.high - hull.low)


def distance(a: dict, b: dict, params: dict[str, Dimension]) -> float:
    total = 0.0
    for name, param in params.items():
        if name not in a or name not in b:
            total += float((name in a) != (name in b))  # sampled on one side only: a different branch
        elif param.hull.type == "choice":
            total += 0.0 if same(a[name], b[name]) else 1.0
        else:
            total += (coordinate(a[name], param.hull) - coordinate(b[name], param.hull)) ** 2
    return total


def load_table(path: Path) -> CurveTable:
    """Read a curves file: its header line, then one line per config (a cut-short line is skipped, as when
    recording resumes)."""
    from bench.record_curves import read_table

    head, rows = read_table(path)
    if head is None or not rows:
        raise ValueError(f"{path}: not a curves file written by bench/record_curves.py")
    curves = tuple(
        Curve(row["index"], row["config"], tuple(row["val_acc"]), tuple(row["cpu_s"]), row["diverged"])
        for _, row in sorted(rows.items())
    )
    return CurveTable(head, curves)


def describe(table: CurveTable) -> str:
    finals = sorted(curve.final for curve in table.curves if curve.final is not None)
    diverged = sum(curve.diverged for curve in table.curves)
    epochs_s = [sum(curve.cpu_s) for curve in table.curves]
    return (
        f"{table.header['space']}: {len(table.curves)} configs ({diverged} diverged), final val_acc "
        f"{finals[0]:.3f} / median {finals[len(finals) // 2]:.3f} / best {finals[-1]:.3f}; "
        f"{sum(epochs_s) / len(epochs_s):.1f} CPU s per full config"
    )


def header_json(table: CurveTable) -> str:
    return json.dumps({k: v for k, v in table.header.items() if k != "space_yaml"}, indent=1)
