"""summary: the run's scores in one small metrics file, and its charts as SVG images.

The scores file (git-tracked: `dvc metrics diff` reads it from any commit of a clone) holds SQuAD F1
and EM per variant, the headline speedup, and the accelerated model's F1 and EM beside its latency
at every batch size benchmarked, so one artifact reads "F1 -x, latency /y". The headline speedup is
dense / accelerated latency at the largest batch size measured, compiled where it was (else
graphed, else eager), from a speedup that passed the benchmark's checks (both timings' spread,
its interval within ±3%). On a CPU the
accelerated model computes densely (no 2:4 kernels), so a speedup there is two timings of the same
math: it reads NO_KERNELS instead. The rest (every latency, run facts, per-layer details) stays in
reports/<stage>.json. The charts: training loss per step (a panel per run, on its own objective's
scale), latency per batch size (a panel per mode, noisy timings hollow) and F1 per variant.
"""
from __future__ import annotations

from pathlib import Path

from . import charts
from .common import StageError, write_json, write_text

NO_KERNELS = "n/a (no 2:4 kernels on CPU)"
HEADLINE_MODES = ("compiled", "graphed", "eager")  # the first one measured gives the headline


def batch_size(key: str) -> int:
    """The batch size of a benchmark report key ("bs16" -> 16)."""
    return int(key.removeprefix("bs"))


def trusted(benchmark: dict, key: str, mode: str) -> bool:
    """Whether a batch size's speedup in a mode is a result: its two timings passed the noise check
    and its interval stays within the benchmark's limit (noise.untrusted_figures lists it otherwise)."""
    noisy = benchmark["noise"]["untrustworthy"].get(key, {})
    unsure = benchmark["noise"]["untrusted_figures"].get(key, {})
    return not {f"dense_{mode}", f"accelerated_{mode}"} & set(noisy) and f"speedup {mode}" not in unsure


def headline_speedup(benchmark: dict) -> dict | None:
    """Batch size, mode and speedup at the largest batch size with one that passed the benchmark's
    checks (trusted); None if there is none."""
    for key in sorted(benchmark["speedup"], key=batch_size, reverse=True):
        for mode in HEADLINE_MODES:
            if mode in benchmark["speedup"][key] and trusted(benchmark, key, mode):
                return {"batch_size": batch_size(key), "mode": mode, "speedup": benchmark["speedup"][key][mode]}
    return None


def f1_by_variant(evaluation: dict) -> dict[str, float]:
    """F1 per variant of the evaluate report (its other key is the run facts)."""
    return {variant: scores["f1"] for variant, scores in evaluation.items() if variant != "run"}


def on_cpu(benchmark: dict) -> bool:
    return benchmark["device"]["device"] == "cpu"


def noisy_timings(benchmark: dict) -> dict[str, set[str]]:
    """Per batch size key, the timings the benchmark's noise check flagged."""
    return {key: set(timings) for key, timings in benchmark["noise"]["untrustworthy"].items()}


def accelerated_scores(evaluation: dict, benchmark: dict) -> dict:
    """The accelerated model's F1, EM and F1 change vs dense, and per batch size its latency beside
    dense's in the first mode (HEADLINE_MODES order) whose speedup passed the benchmark's checks
    (trusted), else the first measured (`trusted` false)."""
    latency = {}
    for key in sorted(benchmark["latency_ms"], key=batch_size):
        row = benchmark["latency_ms"][key]
        measured = [m for m in HEADLINE_MODES if f"dense_{m}" in row and f"accelerated_{m}" in row]
        passed = [m for m in measured if trusted(benchmark, key, m)]
        if not measured:  # out of memory at this batch size
            continue
        mode = (passed or measured)[0]
        latency[key] = {"ms": row[f"accelerated_{mode}"], "dense_ms": row[f"dense_{mode}"],
                        "speedup": NO_KERNELS if on_cpu(benchmark) else benchmark["speedup"][key][mode],
                        "mode": mode, "trusted": bool(passed)}
    accelerated, dense = evaluation["accelerated"], evaluation["dense"]
    return {"f1": accelerated["f1"], "em": accelerated["exact_match"],
            "f1_change": round(accelerated["f1"] - dense["f1"], 3), "latency": latency}


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


def noisy_points(benchmark: dict) -> frozenset[tuple[str, str, float]]:
    """(mode, variant, batch size) of every timing the benchmark flagged as noisy: drawn hollow."""
    return frozenset((timing.rsplit("_", 1)[1], timing.rsplit("_", 1)[0].replace("_", " "), batch_size(key))
                     for key, timings in noisy_timings(benchmark).items() for timing in timings)


def loss_chart(losses: dict[str, dict]) -> str:
    """A panel per run, each on its own y scale: the runs minimise different objectives (the
    baseline cross-entropy, the sparse fine-tuning a distillation loss), whose values do not compare."""
    panels = {run: {f"{run}: {loss['objective']}": [(row["step"], row["loss"]) for row in loss["history"]]}
              for run, loss in losses.items()}
    steps = [row["step"] for loss in losses.values() for row in loss["history"]]
    y = {run: charts.linear_axis("training loss (each run's own objective)",
                                 [row["loss"] for row in loss["history"]], zero=True) for run, loss in losses.items()}
    return charts.line_chart("Training loss per step", panels, charts.linear_axis("optimizer step", steps, zero=True), y)


def latency_chart(benchmark: dict) -> str:
    panels = latency_panels(benchmark)
    points = [point for series in panels.values() for history in series.values() for point in history]
    if not points:
        raise StageError("benchmark report: no latency at any batch size (all out of memory?): nothing to draw")
    device = benchmark["device"].get("gpu") or benchmark["device"]["device"]
    hollow = noisy_points(benchmark)
    notes = [f"hollow: {len(hollow)} timing(s) the benchmark flagged as noisy (spread over its limit)"] if hollow else []
    if on_cpu(benchmark):
        notes.append("CPU: the accelerated model computes densely (no 2:4 kernels)")
    return charts.line_chart(
        f"Forward latency per batch, dense vs accelerated ({device}, {benchmark['dtype']}, "
        f"{benchmark['seq_length']} tokens)", panels,
        charts.measured_log_axis("batch size (sequences, log scale)", [x for x, _ in points]),
        charts.log_axis("latency per forward (ms, log scale)", [y for _, y in points]),
        hollow=hollow, note="; ".join(notes) or None)


def f1_chart(f1: dict[str, float], data: str) -> str:
    return charts.bar_chart(f"F1 per variant, {data}", f1, charts.Axis("F1 (%)", 0, 100, tuple(range(0, 101, 20))),
                            "variant")


def summarize(evaluation: dict, benchmark: dict, losses: dict[str, dict], data: str, plots_dir: Path,
              scores_path: Path) -> dict:
    """Write the scores file and plots_dir/{loss,latency,f1}.svg; return what the report keeps.
    `losses`: per run, its `objective` (what its loss is) and `history` (step, loss rows); `data`:
    the validation data's name, for the F1 chart's title."""
    empty = [name for name, loss in losses.items() if not loss["history"]]
    if empty:
        raise StageError(f"no loss logged for {', '.join(empty)}: nothing to draw")
    f1 = f1_by_variant(evaluation)
    headline = None if on_cpu(benchmark) else headline_speedup(benchmark)
    scores = {"f1": f1, "em": {variant: evaluation[variant]["exact_match"] for variant in f1},
              "speedup": NO_KERNELS if on_cpu(benchmark) else headline["speedup"] if headline else None,
              "accelerated": accelerated_scores(evaluation, benchmark)}
    for name, svg in (("loss", loss_chart(losses)), ("latency", latency_chart(benchmark)), ("f1", f1_chart(f1, data))):
        write_text(plots_dir / f"{name}.svg", svg)
    write_json(scores_path, scores)
    return {"scores": scores, "headline_speedup": headline}


def data_name(params, questions: int) -> str:
    """The validation data, as the F1 chart's title names it."""
    if params["data.source"] == "squad":
        return f"SQuAD v1.1 validation (hub), {questions} questions"
    directory = params["data.dir"].rstrip("/")
    if params["data.validation_files"]:
        files = ", ".join(f"{directory}/{name}" for name in params["data.validation_files"])
    else:
        files = (", ".join(f"{directory}/{name}" for name in params["data.train_files"])
                 + f" ({params['data.validation_fraction']:.0%} held out by article)")
    return f"{files}, {questions} questions"
