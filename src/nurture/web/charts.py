"""Bar-chart geometry for the dashboard's server-side SVG: no script, so the pages' policy stays closed.

A chart is rows of labelled bars; bars are sized in percent of the chart's width, so one SVG fits any
screen from a 390 px phone up without a viewBox that would shrink its text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

BAR_SPAN: Final = 70.0  # percent of the width a full bar takes; the value is written after it
ROW: Final = 16  # px per bar
LABEL: Final = 18  # px for a group's label line
GAP: Final = 8  # px between groups


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    colour: str


@dataclass(frozen=True, slots=True)
class Bar:
    y: int
    width: float  # percent
    value_x: float  # percent
    text: str
    colour: str
    title: str


@dataclass(frozen=True, slots=True)
class Group:
    label: str
    label_y: int
    href: str | None
    bars: tuple[Bar, ...]


@dataclass(frozen=True, slots=True)
class Chart:
    title: str
    height: int
    groups: tuple[Group, ...]
    legend: tuple[Series, ...]


def bar_chart(
    title: str,
    rows: Sequence[tuple[str, Sequence[float]]],
    series: Sequence[Series],
    *,
    texts: Sequence[Sequence[str]] | None = None,
    hrefs: Sequence[str | None] | None = None,
    scale: float | None = None,
) -> Chart:
    """A chart with one group per row (`label`, one value per series), bars scaled to `scale` or the
    largest value; `texts` replaces the numbers written after the bars."""
    top = scale if scale is not None else max((v for _, values in rows for v in values), default=0.0)
    groups: list[Group] = []
    y = 0
    for i, (label, values) in enumerate(rows):
        label_y = y + 13
        y += LABEL
        bars = []
        for j, (value, kind) in enumerate(zip(values, series, strict=True)):
            width = BAR_SPAN * value / top if top > 0 else 0.0
            text = texts[i][j] if texts is not None else f"{value:,.0f}"
            bars.append(
                Bar(y + 2, round(width, 2), round(width + 1.5, 2), text, kind.colour, f"{kind.name}: {text}")
            )
            y += ROW
        groups.append(Group(label, label_y, hrefs[i] if hrefs is not None else None, tuple(bars)))
        y += GAP
    return Chart(title, max(y, 1), tuple(groups), tuple(series))
