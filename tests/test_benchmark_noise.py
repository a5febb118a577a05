"""The benchmark's checks: timings whose repeats spread too wide, and figures whose interval is wider
than ±3%, are marked untrustworthy; variants are timed interleaved."""
from __future__ import annotations

import time

import torch

from engine.timing import ROUNDS, RatioInterval
from stages import benchmark
from stages.benchmark import NOISE_LIMIT, batch_tables, measure_batch, noise_check, relative_spread, untrustworthy


def test_relative_spread_of_synthetic_timings():
    assert relative_spread([10.0] * 20) == 0
    assert relative_spread([10.0]) is None
    steady = [10.0, 10.2, 9.9, 10.1, 10.0, 10.3, 9.8, 10.0]
    assert relative_spread(steady) < NOISE_LIMIT
    # most repeats fast, a loaded stretch in the middle: the median alone hides it
    disturbed = [10.0, 11.0, 60.0, 70.0, 65.0, 10.5, 12.0, 80.0]
    assert relative_spread(disturbed) > NOISE_LIMIT
    assert relative_spread([1.0, 156.0]) > NOISE_LIMIT  # two repeats, one of them stalled


def test_untrustworthy_names_each_noisy_timing_with_its_reason():
    spread = {"bs1": {"dense_eager": 0.03, "accelerated_eager": 0.9},
              "bs4": {"dense_eager": 0.01, "accelerated_eager": None},
              "bs16": {"dense_eager": 0.02, "accelerated_eager": 0.05}}
    assert untrustworthy(spread) == {
        "bs1": {"accelerated_eager": "repeats spread 90% (IQR / median) > 20%"},
        "bs4": {"accelerated_eager": "a single timed call: no spread to check"},
    }
    assert untrustworthy({"bs16": spread["bs16"]}) == {}


def test_variants_are_timed_interleaved_in_rounds_after_each_warm_up():
    calls = []

    def forward(variant, pause_s=0.0):
        def call(input_ids):
            calls.append(variant)
            time.sleep(pause_s)
        return call

    models = {"dense": {"eager": forward("dense", 0.02)}, "accelerated": {"eager": forward("accelerated")}}
    params = {"benchmark.warmup": 2, "benchmark.repeats": 2 * ROUNDS}
    timings = measure_batch(models, torch.zeros(1, 4), ["eager"], params, torch.device("cpu"))
    assert calls[:4] == ["dense"] * 2 + ["accelerated"] * 2  # the warm-ups
    # two calls a turn, the order rotating: dense first in every other round
    assert calls[4:] == [variant for index in range(ROUNDS) for variant in
                         (["dense", "accelerated"] if index % 2 == 0 else ["accelerated", "dense"]) for _ in range(2)]
    tables = batch_tables(timings, 1, {})
    assert set(tables["latency_ms"]) == set(tables["spread"]) == {"dense_eager", "accelerated_eager"}
    low, high = tables["speedup_range"]["eager"]
    assert 1 < low <= high  # dense sleeps 20 ms a call, accelerated not at all: slower in every round
    assert low <= tables["speedup"]["eager"] <= high and tables["speedup_interval"]["eager"]["rounds"] == ROUNDS


def test_a_gpu_benchmark_times_more_rounds_with_the_same_calls_in_all(monkeypatch):
    from engine.timing import GPU_ROUNDS, benchmark_rounds

    assert benchmark_rounds(torch.device("cpu")) == ROUNDS and benchmark_rounds(torch.device("cuda")) == GPU_ROUNDS > ROUNDS
    monkeypatch.setattr(benchmark, "benchmark_rounds", lambda device: 4)  # as a GPU's would, on this CPU
    calls = []
    models = {"dense": {"eager": lambda input_ids: calls.append("dense")}}
    params = {"benchmark.warmup": 1, "benchmark.repeats": 10}
    timings = measure_batch(models, torch.zeros(1, 4), ["eager"], params, torch.device("cpu"))
    assert len(timings["eager"].times_ms["dense"]) == 4  # rounds
    assert [len(turn) for turn in timings["eager"].times_ms["dense"]] == [3] * 4  # ceil(10 / 4) calls a turn


def test_benchmark_flags_noisy_timings_in_its_metrics(params, tiny_model, tmp_path, monkeypatch, caplog):
    from stages import accelerate

    (tmp_path / "accelerated").mkdir()
    accelerate.run(params, tiny_model, tmp_path / "accelerated")
    spreads = iter([5.0, 5.0])  # the first batch size's two timings were disturbed, the others steady
    monkeypatch.setattr(benchmark, "relative_spread", lambda times: next(spreads, 0.01))
    metrics, _ = benchmark.run(params, tiny_model, tmp_path / "accelerated")
    assert metrics["trustworthy"] is False
    assert metrics["noise"]["untrustworthy"] == {"bs1": {"dense_eager": "repeats spread 500% (IQR / median) > 20%",
                                                         "accelerated_eager": "repeats spread 500% (IQR / median) > 20%"}}
    assert "benchmark: warning: 2 timings too noisy to trust (bs1 dense_eager, bs1 accelerated_eager)" in caplog.text


def test_steady_benchmark_is_trustworthy(params, tiny_model, tmp_path, monkeypatch):
    from stages import accelerate

    (tmp_path / "accelerated").mkdir()
    accelerate.run(params, tiny_model, tmp_path / "accelerated")
    monkeypatch.setattr(benchmark, "relative_spread", lambda times: 0.01)
    monkeypatch.setattr(benchmark, "ratio_interval", lambda *args: RatioInterval(1.0, 0.99, 1.01, ROUNDS, True))
    metrics, _ = benchmark.run(params, tiny_model, tmp_path / "accelerated")
    assert metrics["trustworthy"] is True and metrics["noise"]["untrustworthy"] == {}
    assert metrics["noise"]["untrusted_figures"] == {}
    assert metrics["noise"]["spread"]["bs2"] == {"dense_eager": 0.01, "accelerated_eager": 0.01}


def test_a_figure_whose_interval_is_too_wide_or_rounds_too_few_is_no_result(caplog):
    steady = {"median": 1.2, "low": 1.19, "high": 1.21, "rounds": ROUNDS, "trusted": True}
    wide = {"median": 1.2, "low": 0.9, "high": 1.5, "rounds": ROUNDS, "trusted": False}
    short = {"median": 1.2, "low": 1.2, "high": 1.2, "rounds": 3, "trusted": False}
    intervals = benchmark.figures({"bs16": {"compiled": steady, "eager": wide}},
                                  {"bs16": {"2:4 at fp16": short, "2:4 at 8-bit": None}})
    assert intervals == {"bs16": {"speedup compiled": steady, "speedup eager": wide, "2:4 at fp16": short,
                                  "2:4 at 8-bit": None}}
    checked = noise_check({"bs16": {"dense_compiled": 0.01}}, intervals)
    assert checked["trustworthy"] is False and checked["noise"]["untrustworthy"] == {}
    assert checked["noise"]["untrusted_figures"] == {"bs16": {
        "speedup eager": "x1.200 [0.900, 1.500] (not a result: its interval reaches past ±3% of its median)",
        "2:4 at fp16": "x1.200 [1.200, 1.200] (not a result: 3 rounds < 5)"}}
    assert ("2 figures are not results, their intervals wider than ±3% or their rounds too few "
            "(bs16 speedup eager, bs16 2:4 at fp16)") in caplog.text
