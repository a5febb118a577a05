"""Charts as static SVG, written in plain Python.

`dvc plots show` puts SVG images into its page as <img>, which draws offline (its Vega templates
load Vega from a CDN and draw nothing without network), and no plotting library is needed. A line
chart is one or more panels side by side sharing their axes; a bar chart is horizontal bars. Each
series is one <polyline> (each bar one <rect>) carrying its name in `data-series`, in a colour of
its own that stays the same in every panel. A point may be drawn hollow (a timing the benchmark
flagged as noisy), and a note under the title says what hollow means.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

# Okabe-Ito: colours told apart with the common colour-vision deficiencies too (yellow left out:
# too faint on white).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000")
PANEL_WIDTH, PANEL_HEIGHT = 360, 260  # the plotting area of one panel, px
LEFT, RIGHT, TOP, BOTTOM, GAP = 70, 20, 50, 50, 40  # margins around the panels and between them
LEGEND_LINE = 20
GRID = "#dddddd"
TITLE_CHAR = 8.5  # the width of a character of the 15 px bold title, px, generously

Point = tuple[float, float]


@dataclass(frozen=True)
class Axis:
    """A labelled axis from `low` to `high` (on a log scale if `log`) with labelled `ticks`."""

    label: str
    low: float
    high: float
    ticks: tuple[float, ...]
    log: bool = False

    def fraction(self, value: float) -> float:
        """Where `value` lies along the axis: 0 at `low`, 1 at `high`."""
        if self.log:
            return math.log(value / self.low) / math.log(self.high / self.low)
        return (value - self.low) / (self.high - self.low)


def nice_step(span: float, count: int = 5) -> float:
    """The 1, 2 or 5 times a power of ten that cuts `span` into about `count` steps."""
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)


def linear_axis(label: str, values: list[float], zero: bool = False) -> Axis:
    """Evenly spaced round ticks covering `values` (and 0 if `zero`)."""
    low, high = min(values + [0.0] * zero), max(values)
    if low == high:  # one value: a unit around it
        low, high = low - 1, high + 1
    step = nice_step(high - low)
    first, last = math.floor(low / step), math.ceil(high / step)
    ticks = tuple(round(i * step, 12) for i in range(first, last + 1))
    return Axis(label, ticks[0], ticks[-1], ticks)


def log_axis(label: str, values: list[float]) -> Axis:
    """A log scale ticked at 1, 2 and 5 times powers of ten (at powers of ten alone where those
    would be too many), from the tick at or below the smallest of `values` to the one at or above
    the largest."""
    low, high = min(values), max(values)
    exponents = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    for multiples in ((1, 2, 5), (1,)):
        # parsed from decimal text: 0.2 exactly, not 2 * 0.1 = 0.20000000000000004
        steps = [float(f"{m}e{e}") for e in exponents for m in multiples]
        first, last = max(s for s in steps if s <= low), min(s for s in steps if s >= high)
        ticks = tuple(s for s in steps if first <= s <= last)
        if len(ticks) <= 8:
            break
    return Axis(label, first, last, ticks, log=True)


def measured_log_axis(label: str, values: list[float]) -> Axis:
    """A log scale ticked at exactly the values measured (batch sizes), with room of half a
    doubling beyond the first and the last."""
    ticks = tuple(sorted(set(values)))
    return Axis(label, ticks[0] / 2 ** 0.5, ticks[-1] * 2 ** 0.5, ticks, log=True)


def number(value: float) -> str:
    return f"{value:g}"


def text(x: float, y: float, content: str, anchor: str = "middle", **attributes) -> str:
    extra = "".join(f" {name.replace('_', '-')}={quoteattr(str(v))}" for name, v in attributes.items())
    return f'<text x="{x:.2f}" y="{y:.2f}" text-anchor="{anchor}"{extra}>{escape(content)}</text>'


def line(x1: float, y1: float, x2: float, y2: float, colour: str = "#000000", width: float = 1) -> str:
    return f'<line x1="{x1:.2f}" y1="{y1:.2f}" x2="{x2:.2f}" y2="{y2:.2f}" stroke="{colour}" stroke-width="{width}"/>'


def colours(names: list[str]) -> dict[str, str]:
    """A colour per series name, in order of first appearance."""
    unique = list(dict.fromkeys(names))
    if len(unique) > len(PALETTE):
        raise ValueError(f"{len(unique)} series, more than the {len(PALETTE)} colours told apart")
    return dict(zip(unique, PALETTE))


def document(title: str, width: float, height: float, body: list[str], note: str | None = None) -> str:
    """The SVG: title on top, `body`, and `note` (what the reader must know to read it) at the foot;
    wide enough for the title (a long data name) at about TITLE_CHAR px a character."""
    height += LEGEND_LINE if note else 0
    width = max(width, len(title) * TITLE_CHAR + 2 * RIGHT)
    return "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="sans-serif" font-size="12">',
        f"<title>{escape(title)}</title>",
        f'<rect width="{width:.0f}" height="{height:.0f}" fill="#ffffff"/>',
        text(width / 2, 22, title, font_size=15, font_weight="bold"),
        *body,
        *([text(LEFT, height - 8, note, "start", font_style="italic")] if note else []),
        "</svg>",
    ]) + "\n"


def frame(left: float, x: Axis | None, y: Axis | None) -> list[str]:
    """Axis lines, grid, ticks and tick labels of one plotting area starting at `left`; an axis of
    None (a bar chart's names) gets no ticks."""
    bottom = TOP + PANEL_HEIGHT
    parts = []
    for tick in y.ticks if y else ():
        at = bottom - y.fraction(tick) * PANEL_HEIGHT
        parts += [line(left, at, left + PANEL_WIDTH, at, GRID), text(left - 6, at + 4, number(tick), "end")]
    for tick in x.ticks if x else ():
        at = left + x.fraction(tick) * PANEL_WIDTH
        parts += [line(at, TOP, at, bottom, GRID), text(at, bottom + 16, number(tick))]
    return parts + [line(left, TOP, left, bottom), line(left, bottom, left + PANEL_WIDTH, bottom)]


def axis_labels(left: float, width: float, x_label: str, y_label: str) -> list[str]:
    """The x label centred under `width` px from `left`; the y label upright along the left edge."""
    middle = TOP + PANEL_HEIGHT / 2
    return [text(left + width / 2, TOP + PANEL_HEIGHT + 38, x_label),
            text(18, middle, y_label, transform=f"rotate(-90 18 {middle:.2f})")]


def legend(top: float, colour_of: dict[str, str]) -> list[str]:
    parts = []
    for index, (name, colour) in enumerate(colour_of.items()):
        y = top + index * LEGEND_LINE
        parts += [line(LEFT, y, LEFT + 24, y, colour, 3), text(LEFT + 32, y + 4, name, "start")]
    return parts


def line_chart(title: str, panels: dict[str, dict[str, list[Point]]], x: Axis, y: Axis | dict[str, Axis],
               hollow: frozenset[tuple[str, str, float]] = frozenset(), note: str | None = None) -> str:
    """Panels (title -> series name -> points) side by side with one legend, sharing the x axis and
    `y` (or each with its own y axis, `y` by panel title: quantities that must not be read on one
    scale). A point whose (panel, series, x) is in `hollow` is drawn as a ring."""
    colour_of = colours([name for series in panels.values() for name in series])
    body = []
    for index, (panel_title, series) in enumerate(panels.items()):
        left = LEFT + index * (PANEL_WIDTH + GAP)
        panel_y = y[panel_title] if isinstance(y, dict) else y
        body += frame(left, x, panel_y)
        if panel_title:
            body.append(text(left + PANEL_WIDTH / 2, TOP - 8, panel_title, font_weight="bold"))
        for name, points in series.items():
            xy = [(px, left + x.fraction(px) * PANEL_WIDTH, TOP + PANEL_HEIGHT - panel_y.fraction(py) * PANEL_HEIGHT)
                  for px, py in sorted(points)]
            body.append(f'<polyline data-series={quoteattr(name)} fill="none" stroke="{colour_of[name]}" '
                        f'stroke-width="2" points="{" ".join(f"{a:.2f},{b:.2f}" for _, a, b in xy)}"/>')
            for px, a, b in xy:
                fill = "#ffffff" if (panel_title, name, px) in hollow else colour_of[name]
                body.append(f'<circle cx="{a:.2f}" cy="{b:.2f}" r="3.5" fill="{fill}" stroke="{colour_of[name]}" '
                            f'stroke-width="1.5"/>')
    width = LEFT + len(panels) * PANEL_WIDTH + (len(panels) - 1) * GAP + RIGHT
    y_label = next(iter(y.values())).label if isinstance(y, dict) else y.label
    body += axis_labels(LEFT, width - LEFT - RIGHT, x.label, y_label)
    legend_top = TOP + PANEL_HEIGHT + BOTTOM + 10
    body += legend(legend_top, colour_of)
    return document(title, width, legend_top + len(colour_of) * LEGEND_LINE, body, note)


def bar_chart(title: str, bars: dict[str, float], x: Axis, y_label: str) -> str:
    """Horizontal bars, one per name in a colour of its own, each labelled with its value."""
    colour_of = colours(list(bars))
    left = LEFT + 40  # room for the names
    band = PANEL_HEIGHT / len(bars)
    body = frame(left, x, None)
    for index, (name, value) in enumerate(bars.items()):
        top, length = TOP + index * band + band * 0.2, x.fraction(value) * PANEL_WIDTH
        middle = top + band * 0.3 + 4
        body += [f'<rect data-series={quoteattr(name)} x="{left:.2f}" y="{top:.2f}" width="{length:.2f}" '
                 f'height="{band * 0.6:.2f}" fill="{colour_of[name]}"/>',
                 text(left - 6, middle, name, "end"), text(left + length + 4, middle, number(value), "start")]
    body += axis_labels(left, PANEL_WIDTH, x.label, y_label)
    return document(title, left + PANEL_WIDTH + 60, TOP + PANEL_HEIGHT + BOTTOM + 10, body)
