"""stages/charts.py: SVG that parses, labelled axes, a colour per series, values where they belong."""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest

from stages import charts

SVG = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def texts(root: ET.Element) -> list[str]:
    return [element.text for element in root.iter(f"{SVG}text")]


def polylines(root: ET.Element) -> dict[str, tuple[str, list[tuple[float, float]]]]:
    """Per series name: its colour and its points in pixels."""
    return {line.get("data-series"): (line.get("stroke"),
                                      [tuple(map(float, point.split(","))) for point in line.get("points").split()])
            for line in root.iter(f"{SVG}polyline")}


def test_linear_axis_ticks_are_round_and_cover_the_values():
    axis = charts.linear_axis("loss", [0.63, 4.99], zero=True)
    assert axis.ticks == (0, 1, 2, 3, 4, 5) and (axis.low, axis.high) == (0, 5)
    assert charts.linear_axis("step", [3, 3]).ticks == (2, 2.5, 3, 3.5, 4)  # one value: a unit around it


def test_log_axis_ticks_at_1_2_5_and_powers_of_ten_over_a_wide_range():
    axis = charts.log_axis("ms", [29.6, 110.3])
    assert axis.ticks == (20, 50, 100, 200) and axis.log
    assert axis.fraction(20) == 0 and axis.fraction(200) == 1
    assert axis.fraction(math.sqrt(20 * 200)) == pytest.approx(0.5)
    assert charts.log_axis("ms", [0.02, 300]).ticks == (0.01, 0.1, 1, 10, 100, 1000)


def test_measured_log_axis_ticks_at_the_batch_sizes():
    axis = charts.measured_log_axis("batch size", [64, 4, 16, 4])
    assert axis.ticks == (4, 16, 64)
    assert axis.fraction(16) == pytest.approx(0.5)  # the middle of 4..64 on a log scale


def test_line_chart_draws_each_series_once_in_its_own_colour_at_its_values():
    x, y = charts.Axis("step", 0, 10, (0, 5, 10)), charts.Axis("loss (unitless)", 0, 4, (0, 2, 4))
    series = {"dense": [(0, 4.0), (10, 2.0)], "sparse": [(0, 1.0), (5, 1.0), (10, 0.0)]}
    root = parse(charts.line_chart("Training loss", {"": series}, x, y))
    assert {"Training loss", "step", "loss (unitless)", "dense", "sparse"} <= set(texts(root))
    lines = polylines(root)
    assert set(lines) == {"dense", "sparse"} and lines["dense"][0] != lines["sparse"][0]
    left, top = charts.LEFT, charts.TOP
    assert lines["dense"][1] == [(left, top), (left + charts.PANEL_WIDTH, top + charts.PANEL_HEIGHT / 2)]
    assert lines["sparse"][1][1] == (left + charts.PANEL_WIDTH / 2, top + charts.PANEL_HEIGHT * 3 / 4)


def test_panels_share_axes_and_a_series_keeps_its_colour_in_every_panel():
    x, y = charts.Axis("batch size", 1, 4, (1, 4), log=True), charts.Axis("latency (ms)", 0, 10, (0, 10))
    panels = {"eager": {"dense": [(1, 5.0)], "accelerated": [(1, 4.0)]},
              "compiled": {"dense": [(4, 10.0)], "dense fp8": [(4, 8.0)]}}
    root = parse(charts.line_chart("Latency", panels, x, y))
    lines = list(root.iter(f"{SVG}polyline"))
    assert [line.get("data-series") for line in lines] == ["dense", "accelerated", "dense", "dense fp8"]
    assert lines[0].get("stroke") == lines[2].get("stroke")
    assert len({lines[i].get("stroke") for i in (0, 1, 3)}) == 3
    second_panel = charts.LEFT + charts.PANEL_WIDTH + charts.GAP
    assert lines[2].get("points") == f"{second_panel + charts.PANEL_WIDTH:.2f},{charts.TOP:.2f}"
    assert {"eager", "compiled"} <= set(texts(root))
    assert texts(root).count("dense") == 1  # one legend entry per series


def test_bar_chart_bar_lengths_follow_the_values():
    root = parse(charts.bar_chart("F1", {"dense": 60.0, "pruned": 30.0}, charts.Axis("F1 (%)", 0, 100, (0, 50, 100)),
                                  "variant"))
    bars = {rect.get("data-series"): rect for rect in root.iter(f"{SVG}rect") if rect.get("data-series")}
    assert float(bars["dense"].get("width")) == pytest.approx(0.6 * charts.PANEL_WIDTH)
    assert float(bars["pruned"].get("width")) == pytest.approx(0.3 * charts.PANEL_WIDTH)
    assert bars["dense"].get("fill") != bars["pruned"].get("fill")
    assert {"F1 (%)", "variant", "60", "30"} <= set(texts(root))


def test_names_are_escaped_and_too_many_series_refused():
    root = parse(charts.bar_chart("a <b> & c", {"x<y": 1.0}, charts.Axis("v", 0, 1, (0, 1)), "n"))
    assert "a <b> & c" in texts(root) and "x<y" in texts(root)
    with pytest.raises(ValueError, match="8 series"):
        charts.colours([str(i) for i in range(8)])
