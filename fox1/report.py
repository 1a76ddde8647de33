"""bench.py's table: rows of fox1 next to a reference, each ratio formed within a timed round and shown as its
median and range over the rounds, notes above the table, and every number as one JSON line below it."""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field


def spread(values: list[float], unit: str = "x", digits: int = 2) -> str:
    """'1.23x (1.10-1.31)': the median and the range over the undisturbed rounds."""
    values = undisturbed(values)
    return f"{statistics.median(values):,.{digits}f}{unit} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"


@dataclass
class Report:
    """The table (rows added with `add`), lines printed above it (`note`) and every number (`numbers`)."""

    rows: list[tuple[str, str, str, str, str]] = field(default_factory=list)  # what, fox1, reference, ratio, note
    notes: list[str] = field(default_factory=list)
    numbers: dict[str, object] = field(default_factory=dict)

    def add(self, what: str, ours: str, reference: str = "", ratio: str = "", note: str = "") -> None:
        self.rows.append((what, ours, reference, ratio, note))

    def note(self, line: str) -> None:
        self.notes.append(line)

    def print(self, title: str) -> None:
        header = ("row", "fox1", "reference", "fox1/ref: median (range)", "note")
        widths = [max(len(r[i]) for r in [header, *self.rows]) for i in range(5)]
        print("\n".join([title, *self.notes]))
        for row in [header, *self.rows]:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        print(json.dumps(self.numbers))


def ratio(ours: float, reference: float) -> str:
    return f"{ours / reference:.2f}x"


def versus(ours: float | list[float], reference: float | list[float] | None, unit: str,
           name: str = "HF") -> tuple[str, str, str]:
    """The fox1, reference and ratio cells of a row: medians, and the ratio's median and range over the
    rounds (a ratio per round). A single number is one round; the reference may be missing."""
    ours, reference = ([x] if isinstance(x, float) else x for x in (ours, reference or []))
    cell = f"{median(ours):,.1f} {unit}"
    if not reference:
        return cell, f"{name}: not run", ""  # not installed, failed, or --skip-reference
    ratios = [a / b for a, b in zip(ours, reference)]
    shown = ratio(ratios[0], 1.0) if len(ratios) == 1 else spread(ratios)
    return cell, f"{name}: {median(reference):,.1f} {unit}", shown


def undisturbed(values: list[float]) -> list[float]:
    """The rounds that were not disturbed (a disturbed decode round is nan), or [nan] if none was."""
    return [v for v in values if not math.isnan(v)] or [math.nan]


def median(values: list[float]) -> float:
    return statistics.median(undisturbed(values))
