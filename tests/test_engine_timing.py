"""engine/timing.py on a CPU: interleaved rounds (order, turns, budget), the bootstrap interval on
synthetic rounds, nvidia-smi's clocks read or absent. No timing is asserted, only what was called
and what the arithmetic gives."""
from __future__ import annotations

import subprocess
import time

import pytest
import torch

from engine import timing
from engine.timing import Rounds, clock_ranges, gpu_clocks, interleaved, median_ms, ratio_interval, rotated

CPU = torch.device("cpu")


def recorder(calls: list, pause_s: float = 0.0) -> dict:
    """Three named forwards that record their calls (and sleep `pause_s` each)."""
    def forward(name):
        return lambda: (calls.append(name), time.sleep(pause_s))
    return {name: forward(name) for name in ("a", "b", "c")}


def test_rounds_hold_every_variant_in_rotating_order_after_each_warm_up():
    calls, turns = [], []
    result = interleaved(recorder(calls), CPU, warmup=2, rounds=4, calls=3, before_turn=turns.append)
    assert calls[:6] == ["a", "a", "b", "b", "c", "c"]  # each warmed up in turn
    assert result.order == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    assert calls[6:] == [name for order in result.order for name in order for _ in range(3)]
    assert turns == ["a", "b", "c"] + [name for order in result.order for name in order]  # before each, untimed
    assert all(len(result.times_ms[name]) == 4 and all(len(turn) == 3 for turn in result.times_ms[name])
               for name in "abc")
    assert result.clocks == [] and result.peak_memory_mb == {}  # no GPU: no clocks, no memory figures


def test_rotated_puts_each_variant_first_in_turn():
    assert [rotated(["a", "b"], index) for index in range(3)] == [["a", "b"], ["b", "a"], ["a", "b"]]


def test_a_turn_lasts_its_minimum_time_with_more_calls():
    calls = []
    result = interleaved(recorder(calls, pause_s=0.005), CPU, warmup=0, rounds=2, calls=1, min_turn_s=0.03)
    # one 5 ms call cannot fill 30 ms: every turn needs several
    assert all(len(turn) >= 2 for turns in result.times_ms.values() for turn in turns)


def test_a_time_budget_ends_the_rounds_with_one_call_of_each_variant_per_round():
    calls = []
    result = interleaved(recorder(calls, pause_s=0.02), CPU, warmup=5, rounds=10, calls=5, budget_s=0.05)
    assert calls.count("a") < 5 + 10 * 5 and len(result.order) < 10  # cut short
    assert all(len(result.times_ms[name]) == len(result.order) for name in "abc")  # every round holds each
    assert all(turn for turns in result.times_ms.values() for turn in turns)


def synthetic(baseline_ms: list[float], variant_ms: list[float]) -> Rounds:
    """Rounds of one call per turn."""
    return Rounds({"base": [[ms] for ms in baseline_ms], "fast": [[ms] for ms in variant_ms]})


def test_a_steady_ratio_is_recovered_with_a_narrow_trusted_interval():
    base = [10.0, 10.1, 9.9, 10.0, 10.05, 9.95, 10.0, 10.1, 9.9, 10.0]
    steady = synthetic(base, [ms / 1.25 * factor for ms, factor in
                              zip(base, [1.0, 1.005, 0.995, 1.0, 1.002, 0.998, 1.004, 0.996, 1.0, 1.001])])
    interval = ratio_interval(steady, "fast", "base")
    assert interval.median == pytest.approx(1.25, rel=0.005)
    assert interval.low <= interval.median <= interval.high and interval.high - interval.low < 0.02
    assert interval.trusted and interval.rounds == 10
    assert ratio_interval(steady, "fast", "base") == interval  # seeded: the same interval again
    exact = ratio_interval(synthetic([10.0] * 6, [8.0] * 6), "fast", "base")
    assert (exact.median, exact.low, exact.high, exact.trusted) == (1.25, 1.25, 1.25, True)


def test_a_noisy_or_short_series_is_not_trusted():
    swinging = synthetic([10.0] * 10, [14.0, 5.0, 12.0, 4.8, 9.0, 7.0, 13.0, 5.5, 6.0, 11.0])  # 0.7x .. 2.1x
    interval = ratio_interval(swinging, "fast", "base")
    assert interval.low < interval.median < interval.high and not interval.trusted
    assert interval.report() == {"median": round(interval.median, 3), "low": round(interval.low, 3),
                                 "high": round(interval.high, 3), "rounds": 10, "trusted": False}
    short = ratio_interval(synthetic([10.0] * 3, [8.0] * 3), "fast", "base")  # steady, but 3 rounds
    assert short.median == 1.25 and not short.trusted


def test_median_ms_budget_stops_slow_calls_after_one_timed_call():
    calls = []
    slow = lambda: (calls.append(1), time.sleep(0.2))  # noqa: E731
    assert median_ms(slow, warmup=5, repeats=20, device=CPU, budget_s=0.3) >= 200
    assert len(calls) == 4  # the first call, then 2 warm-ups spend the budget, then the one timed call
    calls.clear()
    median_ms(lambda: calls.append(1), warmup=2, repeats=20, device=CPU, budget_s=5)
    assert len(calls) == 22  # fast calls: the whole count


def test_gpu_clocks_without_nvidia_smi_is_none(monkeypatch):
    def missing(*args, **kwargs):
        raise FileNotFoundError("nvidia-smi")

    monkeypatch.setattr(subprocess, "run", missing)
    assert gpu_clocks() is None
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 9, "", "NVML failed"))
    assert gpu_clocks("GPU-1") is None


def test_gpu_clocks_reads_each_field_and_what_it_cannot_read_is_none(monkeypatch):
    asked = []

    def smi(command, **kwargs):
        asked.append(command)
        return subprocess.CompletedProcess(command, 0, "1980, 2619, [N/A], 54\n", "")

    monkeypatch.setattr(subprocess, "run", smi)
    assert gpu_clocks("GPU-abc") == {"sm_mhz": 1980.0, "mem_mhz": 2619.0, "power_w": None, "temperature_c": 54.0}
    assert asked[0][1:] == ["--query-gpu=clocks.sm,clocks.mem,power.draw,temperature.gpu",
                            "--format=csv,noheader,nounits", "-i", "GPU-abc"]


def test_clock_ranges_span_the_rounds_samples():
    samples = [{"sm_mhz": 1980.0, "mem_mhz": 2619.0, "power_w": 300.0, "temperature_c": 50.0}, None,
               {"sm_mhz": 1755.0, "mem_mhz": 2619.0, "power_w": None, "temperature_c": 61.0}]
    assert clock_ranges(samples) == {"sm_mhz": [1755.0, 1980.0], "mem_mhz": [2619.0, 2619.0],
                                     "power_w": [300.0, 300.0], "temperature_c": [50.0, 61.0]}
    assert clock_ranges([None, None]) is None and clock_ranges([]) is None


def test_the_gpu_is_named_by_uuid_for_nvidia_smi(monkeypatch):
    class Properties:
        uuid = "58ae1a65-0000-1111-2222-333344445555"

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Properties())
    assert timing.nvidia_smi_id(torch.device("cuda", 0)) == "GPU-58ae1a65-0000-1111-2222-333344445555"
