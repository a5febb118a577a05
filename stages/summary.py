"""summary: the run's scores in one small metrics file, and its charts as SVG images.

The scores file holds what `dvc metrics show` and `dvc metrics diff` are for: SQuAD F1 per variant
and the headline speedup, dense / accelerated latency at the largest batch size measured, compiled
where it was (else graphed, else eager), from timings that passed the benchmark's noise check. The
rest of what the stages measured (EM, every latency, run facts, per-layer details) stays in their
reports/<stage>.json. The charts: training loss per step, latency per batch size (a panel per
mode) and F1 per variant.
"""
from __future__ import annotations

from pathlib import Path

from . import charts
from .common import StageError, write_json, write_text

HEADLINE_MODES = ("compiled", "graphed", "eager")  # the first one measured gives the headline


def batch_size(key: str) -> int:
    """The batch size of a benchmark report key ("bs16" -> 16)."""
    return int(key.removeprefix("bs"))


def headline_speedup(benchmark: dict) -> dict | None:
    """Batch size, mode and speedup at the largest batch size with one whose two timings passed the
    noise check; None if there is none."""
    noisy = benchmark["noise"]["untrustworthy"]
    for key in sorted(benchmark["speedup"], key=batch_size, reverse=True):
        for mode in HEADLINE_MODES:
            trusted = not {f"dense_{mode}", f"accelerated_{mode}"} & set(noisy.get(key, {}))
            if mode in benchmark["speedup"][key] and trusted:
                return {"batch_size": batch_size(key), "mode": mode, "speedup": benchmark["speedup"][key][mode]}
    return None


def f1_by_variant(evaluation: dict) -> dict[str, float]:
    """F1 per variant of the evaluate report (its other key is the run facts)."""
    return {variant: scores["f1"] for variant, scores in evaluation.items() if variant != "run"}


def latency_panels(benchmark: dict) -> dict[str, dict[str, list[charts.Point]]]:
    """Per mode, per variant, (batch size, latency ms) for every batch size that ran."""
    panels: dict[str, dict[str, list[charts.Point]]] = {mode: {} for mode in benchmark["modes"]}
    for key, row in benchmark["latency_ms"].items():
        for timing, ms in row.items():
            if timing == "error":  # out of memory at this batch size
                continue
            variant, mode = timing.rsplit("_", 1)
            panels[mode].setdefault(variant.replace("_", " "), []).append((batch_size(key), ms))
    return {mode: series for mode, series in panels.items() if series}


def loss_chart(losses: dict[str, list[dict]]) -> str:
    series = {name: [(row["step"], row["loss"]) for row in history] for name, history in losses.items()}
    points = [point for history in series.values() for point in history]
    return charts.line_chart("Training loss per step", {"": series},
                             charts.linear_axis("optimizer step", [x for x, _ in points], zero=True),
                             charts.linear_axis("training loss (unitless)", [y for _, y in points], zero=True))


def latency_chart(benchmark: dict) -> str:
    panels = latency_panels(benchmark)
    points = [point for series in panels.values() for history in series.values() for point in history]
    if not points:
        raise StageError("benchmark report: no latency at any batch size (all out of memory?): nothing to draw")
    device = benchmark["device"].get("gpu") or benchmark["device"]["device"]
    return charts.line_chart(
        f"Forward latency per batch, dense vs accelerated ({device}, {benchmark['dtype']}, "
        f"{benchmark['seq_length']} tokens)", panels,
        charts.measured_log_axis("batch size (sequences, log scale)", [x for x, _ in points]),
        charts.log_axis("latency per forward (ms, log scale)", [y for _, y in points]))


def f1_chart(f1: dict[str, float]) -> str:
    return charts.bar_chart("SQuAD v1.1 F1 per variant", f1, charts.Axis("F1 (%)", 0, 100, tuple(range(0, 101, 20))),
                            "variant")


def summarize(evaluation: dict, benchmark: dict, losses: dict[str, list[dict]], plots_dir: Path,
              scores_path: Path) -> dict:
    """Write the scores file and plots_dir/{loss,latency,f1}.svg; return what the report keeps."""
    empty = [name for name, history in losses.items() if not history]
    if empty:
        raise StageError(f"no loss logged for {', '.join(empty)}: nothing to draw")
    f1 = f1_by_variant(evaluation)
    headline = headline_speedup(benchmark)
    scores = {"f1": f1, "speedup": headline["speedup"] if headline else None}
    for name, svg in (("loss", loss_chart(losses)), ("latency", latency_chart(benchmark)), ("f1", f1_chart(f1))):
        write_text(plots_dir / f"{name}.svg", svg)
    write_json(scores_path, scores)
    return {"scores": scores, "headline_speedup": headline}
