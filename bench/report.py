"""One figure per measured quantity, with its target beside it, printed as a table or as JSON."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

__all__ = ["Figure", "Skipped", "median_of", "table"]


@dataclass(frozen=True, slots=True)
class Figure:
    """A measured value. `better` says which side of `target` meets it; no target, no verdict."""

    benchmark: str
    name: str
    what: str
    value: float | None
    unit: str
    target: float | None = None
    better: Literal["lower", "higher"] | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.target:
            return None
        return self.value / self.target

    @property
    def met(self) -> bool | None:
        if self.value is None or self.target is None or self.better is None:
            return None
        return self.value <= self.target if self.better == "lower" else self.value >= self.target

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "met": self.met}


class Skipped(Exception):
    """A benchmark that cannot run here (say, no PostgreSQL server): `reason` is printed, and
    the figures it measured before finding out are kept."""

    def __init__(self, reason: str, figures: list[Figure] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.figures = figures or []


def median_of(runs: list[list[Figure]]) -> list[Figure]:
    """One figure per name from the same benchmark run `len(runs)` times (`--repeat`): the
    median value, judged against the target, with every run's value added to its note (the
    rest of the note, details such as each failover's seconds, is the first run's). On a shared
    machine CPU figures move by a third between runs of the same code; a verdict on the median
    of several is one a single unlucky run cannot flip."""
    if len(runs) == 1:
        return runs[0]
    values: dict[str, list[float]] = {}
    for figures in runs:
        for figure in figures:
            if figure.value is not None:
                values.setdefault(figure.name, []).append(figure.value)
    combined = []
    for figure in runs[0]:
        measured = values.get(figure.name, [])
        if not measured:
            combined.append(figure)
            continue
        each = ", ".join(number(v, figure.unit) for v in measured)
        note = f"median of {len(measured)}: {each}"
        combined.append(
            replace(
                figure,
                value=statistics.median(measured),
                note=f"{figure.note}; {note}" if figure.note else note,
            )
        )
    return combined


def number(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "B":
        return f"{value / 2**20:,.0f} MiB"
    if unit == "B/min":
        return f"{value / 2**20:,.2f} MiB/min"
    if unit == "s" and value < 1:
        return f"{value * 1000:,.0f} ms"
    if unit == "s":
        return f"{value:,.1f} s"
    if unit == "µs":
        return f"{value:,.1f} µs"
    if abs(value) >= 100 or float(value).is_integer():
        return f"{value:,.0f} {unit}".rstrip()
    return f"{value:,.2f} {unit}".rstrip()


def table(figures: list[Figure]) -> str:
    """A Markdown table: paste-able into the README as it is printed."""
    rows = [
        "| figure | measured | target | ratio | |",
        "|---|---|---|---|---|",
    ]
    for f in figures:
        sign = {"lower": "≤ ", "higher": "≥ "}.get(f.better or "", "")
        target = f"{sign}{number(f.target, f.unit)}" if f.target is not None else "—"
        ratio = f"{f.ratio:.2f}" if f.ratio is not None else "—"
        verdict = {True: "met", False: "**missed**", None: ""}[f.met]
        what = f"{f.what} ({f.note})" if f.note else f.what
        rows.append(f"| {what} | {number(f.value, f.unit)} | {target} | {ratio} | {verdict} |")
    return "\n".join(rows)
