"""Timing, in one place: every comparison of speeds (the planner's whole-model variants, the benchmark,
the request stream, any script) is timed and judged here.

- interleaved: the variants, each warmed up, then timed in rounds on the same inputs: every round
  holds one turn of every variant, the order rotating from round to round, so a drift of clocks,
  power or load during the measurement reaches every variant alike. A turn is `calls` calls and, on
  a GPU, lasts MIN_TURN_S at least, so the clocks settle after the variant before. On a GPU the
  clocks and power (gpu_clocks) are read after every round.
- ratio_interval: a variant's speed against a baseline as the median of the rounds' ratios (baseline
  time / variant time), with a seeded percentile-bootstrap confidence interval over the rounds. A
  figure whose interval reaches further than TRUSTED_HALF_WIDTH from its median is not `trusted`:
  report it marked, never quote it as a result.
- median_ms: one forward's median time, where there is nothing to compare it with in turns (a kernel
  config replayed in a CUDA graph, engine/tuning.py).

A call's time runs until its result is ready: CUDA events and a synchronize per call on a GPU (so a
turn's length on the host clock is its GPU time too), the host clock on a CPU.
"""
from __future__ import annotations

import statistics
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

# Ten rounds: a bootstrap interval of the median of five is their whole range, of ten it is narrower.
ROUNDS = 10
# A benchmark's rounds on a GPU: there a round is cheap (a turn lasts MIN_TURN_S), and at large batches
# the board's power cap moves the clocks enough to scatter the rounds' ratios by several percent.
GPU_ROUNDS = 30
MIN_ROUNDS = 5  # fewer rounds (a time budget cut them short) make no trusted figure
MIN_TURN_S = 0.1  # on a GPU: clocks and power follow a change of load within this
TRUSTED_HALF_WIDTH = 0.03  # a figure is a result only when its interval stays within ±3% of its median
RESAMPLES = 2000
CONFIDENCE = 0.95
# nvidia-smi's query fields, as gpu_clocks names them.
CLOCK_FIELDS = {"sm_mhz": "clocks.sm", "mem_mhz": "clocks.mem", "power_w": "power.draw",
                "temperature_c": "temperature.gpu"}


def call_ms(forward: Callable[[], object], device: torch.device) -> float:
    """One call's time (ms) until its result is ready."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        forward()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    begin = time.perf_counter()
    forward()
    return (time.perf_counter() - begin) * 1000


def benchmark_rounds(device: torch.device) -> int:
    """How many rounds a benchmark times on `device`: GPU_ROUNDS on a GPU, ROUNDS elsewhere."""
    return GPU_ROUNDS if device.type == "cuda" else ROUNDS


def median_ms(forward: Callable[[], object], warmup: int, repeats: int, device: torch.device,
              budget_s: float | None = None) -> float:
    """Median time of `repeats` calls after `warmup`.

    With `budget_s`, warm-up and timing stop early once that much time is spent after the first call
    (one timed call at least): eager fp16 cuSPARSELt calls plan on the host each time, which is slow;
    the first call is left out of the budget because with the plan cache (engine/plan_cache.py) it
    alone makes the plans, and the calls after it are fast.
    """
    budget_from = None

    def spent() -> bool:
        return budget_s is not None and budget_from is not None and time.perf_counter() - budget_from > budget_s

    for _ in range(warmup):
        forward()
        budget_from = budget_from or time.perf_counter()
        if spent():
            break
    times = []
    while len(times) < repeats and not (times and spent()):
        times.append(call_ms(forward, device))
        budget_from = budget_from or time.perf_counter()
    return statistics.median(times)


@dataclass
class Rounds:
    """interleaved's result. times_ms: per variant, per round, each call's time; order: each round's
    order of turns; clocks: on a GPU, gpu_clocks after each round (empty on a CPU); peak_memory_mb:
    on a GPU, each variant's peak allocated memory during its warm-up (graphs captured, code compiled)."""

    times_ms: dict[str, list[list[float]]]
    order: list[list[str]] = field(default_factory=list)
    clocks: list[dict | None] = field(default_factory=list)
    peak_memory_mb: dict[str, float] = field(default_factory=dict)

    def calls(self, variant: str) -> list[float]:
        return [ms for turn in self.times_ms[variant] for ms in turn]

    def median_ms(self, variant: str) -> float:
        """The median of all the variant's timed calls."""
        return statistics.median(self.calls(variant))

    def round_medians(self, variant: str) -> list[float]:
        return [statistics.median(turn) for turn in self.times_ms[variant]]


def rotated(names: list[str], index: int) -> list[str]:
    """Round `index`'s order of turns: each variant goes first in turn."""
    shift = index % len(names)
    return names[shift:] + names[:shift]


def interleaved(forwards: dict[str, Callable[[], object]], device: torch.device, warmup: int,
                rounds: int = ROUNDS, calls: int = 1, min_turn_s: float | None = None,
                budget_s: float | None = None, before_turn: Callable[[str], None] | None = None) -> Rounds:
    """Time named forwards (each a call on the same inputs) interleaved: `warmup` calls of each, then
    `rounds` rounds of one turn each, in rotating order (rotated); a turn is `calls` calls and lasts
    `min_turn_s` at least (None: MIN_TURN_S on a GPU, none on a CPU).

    `before_turn(variant)`, where given, runs before each variant's warm-up and turns, untimed (the
    planner switches one model's kernels there). With `budget_s`, a variant's warm-up stops once that
    long has passed since it began, and the rounds once that long has passed since they began: every
    variant has one warm-up call and one timed call in every round begun, at least.
    """
    on_gpu = device.type == "cuda"
    min_turn_s = (MIN_TURN_S if on_gpu else 0.0) if min_turn_s is None else min_turn_s
    smi_id = nvidia_smi_id(device) if on_gpu else None

    def spent(since: float) -> bool:
        return budget_s is not None and time.perf_counter() - since > budget_s

    result = Rounds({name: [] for name in forwards})
    for name, forward in forwards.items():
        if before_turn is not None:
            before_turn(name)
        if on_gpu:
            torch.cuda.reset_peak_memory_stats(device)
        warm_from = time.perf_counter()
        for _ in range(warmup):
            forward()
            if spent(warm_from):
                break
        if on_gpu:
            torch.cuda.synchronize(device)
            result.peak_memory_mb[name] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    started = time.perf_counter()
    for index in range(rounds):
        order = rotated(list(forwards), index)
        for name in order:
            if before_turn is not None:
                before_turn(name)
            turn, turn_from = [], time.perf_counter()
            while True:
                turn.append(call_ms(forwards[name], device))
                if spent(started) or (len(turn) >= calls and time.perf_counter() - turn_from >= min_turn_s):
                    break
            result.times_ms[name].append(turn)
        result.order.append(order)
        if on_gpu:
            result.clocks.append(gpu_clocks(smi_id))
        if spent(started):
            break
    return result


@dataclass(frozen=True)
class RatioInterval:
    """A variant's speed against a baseline (baseline time / variant time: above 1 is faster): the
    median of the rounds' ratios and its bootstrap confidence interval; trusted when there were
    MIN_ROUNDS rounds at least and the interval stays within TRUSTED_HALF_WIDTH of the median."""

    median: float
    low: float
    high: float
    rounds: int
    trusted: bool

    def report(self) -> dict:
        return {"median": round(self.median, 3), "low": round(self.low, 3), "high": round(self.high, 3),
                "rounds": self.rounds, "trusted": self.trusted}


def round_ratios(timings: Rounds, variant: str, baseline: str) -> list[float]:
    """Per round, the baseline's median call time / the variant's."""
    return [base / other for base, other in zip(timings.round_medians(baseline), timings.round_medians(variant))]


def ratio_interval(timings: Rounds, variant: str, baseline: str, resamples: int = RESAMPLES, seed: int = 0,
                   confidence: float = CONFIDENCE, half_width: float = TRUSTED_HALF_WIDTH) -> RatioInterval:
    """The median of round_ratios, with a percentile bootstrap interval (`resamples` resamples of the
    rounds with replacement, seeded) at `confidence`."""
    ratios = np.array(round_ratios(timings, variant, baseline))
    median = float(np.median(ratios))
    draws = np.random.default_rng(seed).integers(0, len(ratios), size=(resamples, len(ratios)))
    tail = (1 - confidence) / 2 * 100
    low, high = (float(bound) for bound in np.percentile(np.median(ratios[draws], axis=1), [tail, 100 - tail]))
    trusted = len(ratios) >= MIN_ROUNDS and median * (1 - half_width) <= low and high <= median * (1 + half_width)
    return RatioInterval(median, low, high, len(ratios), trusted)


def nvidia_smi_id(device: torch.device) -> str | None:
    """The GPU as nvidia-smi's -i names it, by UUID (CUDA may number the GPUs otherwise); None if unknown."""
    try:
        uuid = str(torch.cuda.get_device_properties(device).uuid)
    except (AttributeError, RuntimeError):
        return None
    return uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "[N/A]", "[Not Supported]"
        return None


def gpu_clocks(gpu: str | None = None) -> dict[str, float | None] | None:
    """The GPU's SM and memory clocks (MHz), power draw (W) and temperature (C) now, as nvidia-smi
    reports them (a field it cannot read: None); `gpu` an id for nvidia-smi -i (None: the first GPU).
    None where nvidia-smi is missing or fails: never an error."""
    command = ["nvidia-smi", f"--query-gpu={','.join(CLOCK_FIELDS.values())}", "--format=csv,noheader,nounits"]
    try:
        result = subprocess.run(command + (["-i", gpu] if gpu else []), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = result.stdout.strip().splitlines()
    values = lines[0].split(",") if result.returncode == 0 and lines else []
    if len(values) != len(CLOCK_FIELDS):
        return None
    return {name: _number(value.strip()) for name, value in zip(CLOCK_FIELDS, values)}


def clock_ranges(samples: list[dict | None]) -> dict[str, list[float]] | None:
    """Per gpu_clocks field, [lowest, highest] over the samples that have it; None without any."""
    ranges = {}
    for name in CLOCK_FIELDS:
        values = [sample[name] for sample in samples if sample is not None and sample[name] is not None]
        if values:
            ranges[name] = [min(values), max(values)]
    return ranges or None
