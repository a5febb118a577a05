"""engine/tuning.py on a CPU: the timers, the kernel-timing child process's failure handling, and which configs are timed where."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from engine import tuning
from engine.tuning import EVENT, _events, median_ms, rotation_count, tune_linears


def test_rotation_count_spills_l2():
    assert rotation_count(bytes_per_call=100 * 2**20, l2_bytes=50 * 2**20) == 1
    assert rotation_count(bytes_per_call=10 * 2**20, l2_bytes=50 * 2**20) == 8  # capped
    assert rotation_count(bytes_per_call=30 * 2**20, l2_bytes=50 * 2**20) == 4


def test_kernel_timing_child_that_stalls_is_killed():
    script = f"import time; print({EVENT!r} + '{{\"kind\": \"try\"}}', flush=True); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    events = _events(child, stall_timeout_s=2.0)
    assert next(events) == {"kind": "try"}
    with pytest.raises(TimeoutError, match="no progress for 2 s"):
        next(events)
    assert child.wait(timeout=10) != 0  # killed, not left running


def test_kernel_timing_without_gpu_fails_with_the_childs_error():
    if torch.cuda.is_available():
        pytest.skip("this checks the message on a machine without CUDA")
    with pytest.raises(RuntimeError, match="kernel timing process failed outside a kernel config: .*Error"):
        tune_linears([(32, 32, 64)], torch.float16)


def test_measure_shapes_times_every_config_at_the_largest_bucket_and_the_best_few_elsewhere(monkeypatch):
    calls = []

    def fake_tune(problems, dtype, try_search=True, max_alg_id=15, precision="fp16", alg_ids=None, **_):
        calls.append({"problems": problems, "try_search": try_search, "precision": precision, "alg_ids": alg_ids})
        results = {}
        for p in problems:
            ids = range(max_alg_id + 1) if alg_ids is None else alg_ids[p]
            # alg_id 4 fastest, then 2, then 7; the rest slower
            order = {4: 0.5, 2: 0.6, 7: 0.7}
            results[p] = {"dense_ms": 1.0, "sparse_ms": {a: order.get(a, 0.9 + a / 100) for a in ids},
                          "search": "failed; alg_ids timed by hand"}
        return results, []

    monkeypatch.setattr(tuning, "tune_linears", fake_tune)
    layers = {"a": torch.nn.Linear(8, 16), "b": torch.nn.Linear(16, 8), "c": torch.nn.Linear(8, 16)}
    timings, _ = tuning.measure_shapes(layers, [4, 1, 16], 64, torch.float16, max_alg_id=9, precision="int8")
    assert calls[0]["problems"] == [(8, 16, 1024), (16, 8, 1024)] and calls[0]["alg_ids"] is None
    assert calls[1]["problems"] == [(8, 16, 64), (8, 16, 256), (16, 8, 64), (16, 8, 256)]
    assert calls[1]["alg_ids"] == {p: [4, 2, 7] for p in calls[1]["problems"]}
    assert not calls[1]["try_search"] and calls[1]["precision"] == "int8"  # the search failed once: not tried again
    assert set(timings) == {"16x8", "8x16"} and set(timings["16x8"]) == {1, 4, 16}  # by batch size
    assert set(timings["16x8"][1]["sparse_ms"]) == {4, 2, 7}
    assert len(timings["16x8"][16]["sparse_ms"]) == 10


def test_timing_budget_stops_slow_calls_after_one_timed_call():
    calls = []
    slow = lambda: (calls.append(1), time.sleep(0.2))  # noqa: E731
    assert median_ms(slow, warmup=5, repeats=20, device=torch.device("cpu"), budget_s=0.3) >= 200
    assert len(calls) == 3  # 2 warm-ups spend the budget, then the one timed call
    calls.clear()
    median_ms(lambda: calls.append(1), warmup=2, repeats=20, device=torch.device("cpu"), budget_s=5)
    assert len(calls) == 22  # fast calls: the whole count
