"""The benchmark's noise check: timings whose repeats spread too wide are marked untrustworthy."""
from __future__ import annotations

import time

import torch

from stages import benchmark
from stages.benchmark import NOISE_LIMIT, ROUNDS, CallTimer, measure_batch, relative_spread, untrustworthy


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


def test_call_timer_keeps_every_call():
    timer = CallTimer(lambda: None, torch.device("cpu"))
    for _ in range(5):
        timer()
    assert len(timer.timed_ms()) == 5 and all(ms >= 0 for ms in timer.timed_ms())


def test_variants_are_timed_interleaved_in_rounds_after_each_warm_up():
    calls = []

    def forward(variant, pause_s=0.0):
        def call(input_ids):
            calls.append(variant)
            time.sleep(pause_s)
        return call

    models = {"dense": {"eager": forward("dense", 0.02)}, "accelerated": {"eager": forward("accelerated")}}
    params = {"benchmark.warmup": 2, "benchmark.repeats": 10}
    latency, _, spread, ranges = measure_batch(models, torch.zeros(1, 4), ["eager"], params, torch.device("cpu"))
    per_round = 10 // ROUNDS
    assert calls[:4] == ["dense"] * 2 + ["accelerated"] * 2  # the warm-ups
    assert calls[4:] == (["dense"] * per_round + ["accelerated"] * per_round) * ROUNDS
    assert set(latency) == set(spread) == {"dense_eager", "accelerated_eager"}
    low, high = ranges["eager"]
    assert 1 < low <= high  # dense sleeps 20 ms a call, accelerated not at all: slower in every round


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
    metrics, _ = benchmark.run(params, tiny_model, tmp_path / "accelerated")
    assert metrics["trustworthy"] is True and metrics["noise"]["untrustworthy"] == {}
    assert metrics["noise"]["spread"]["bs2"] == {"dense_eager": 0.01, "accelerated_eager": 0.01}
