"""The benchmark's noise check: timings whose repeats spread too wide are marked untrustworthy."""
from __future__ import annotations

import torch

from stages import benchmark
from stages.benchmark import NOISE_LIMIT, CallTimer, relative_spread, untrustworthy


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


def test_call_timer_keeps_the_calls_after_warmup():
    timer = CallTimer(lambda: None, torch.device("cpu"))
    for _ in range(5):
        timer()
    assert len(timer.timed_ms(warmup=2)) == 3
    assert len(timer.timed_ms(warmup=9)) == 1  # a budget cut the warm-up short: one timed call
    assert all(ms >= 0 for ms in timer.timed_ms(warmup=0))


def test_benchmark_flags_noisy_timings_in_its_metrics(params, tiny_model, tmp_path, monkeypatch, caplog):
    from stages import accelerate

    (tmp_path / "accelerated").mkdir()
    accelerate.run(params, tiny_model, tmp_path / "accelerated")
    real_spread = benchmark.relative_spread
    monkeypatch.setattr(benchmark, "relative_spread", lambda times: 5.0 if len(times) == 2 else real_spread(times))
    metrics, _ = benchmark.run(params, tiny_model, tmp_path / "accelerated")
    assert metrics["trustworthy"] is False
    assert metrics["noise"]["untrustworthy"]["bs1"]["dense_eager"] == "repeats spread 500% (IQR / median) > 20%"
    assert "benchmark: warning: 4 timings too noisy to trust (bs1 dense_eager" in caplog.text


def test_steady_benchmark_is_trustworthy(params, tiny_model, tmp_path, monkeypatch):
    from stages import accelerate

    (tmp_path / "accelerated").mkdir()
    accelerate.run(params, tiny_model, tmp_path / "accelerated")
    monkeypatch.setattr(benchmark, "relative_spread", lambda times: 0.01)
    metrics, _ = benchmark.run(params, tiny_model, tmp_path / "accelerated")
    assert metrics["trustworthy"] is True and metrics["noise"]["untrustworthy"] == {}
    assert metrics["noise"]["spread"]["bs2"] == {"dense_eager": 0.01, "accelerated_eager": 0.01}
